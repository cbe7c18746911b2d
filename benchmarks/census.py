"""Census of a large Redis queue: time and memory, against reading it all at once.

Fills a Redis queue with a unique name with ``--messages`` envelopes (default
one million) written with pipelined ``LPUSH``/``ZADD``: a realistic mix of
several tasks and versions (some under an old name that a rename maps, some
with a pipeline callback, some signed, some plain Huey tasks), a share on the
schedule with etas up to a month ahead, a little junk and legacy pickle, and a
few dead letters. Then, each in a fresh Python process so that its peak memory
is its own, it measures:

- ``census``: ``take_census(huey)``, the streaming census (headers only, in
  chunks);
- ``load-all``: the naive way: ``LRANGE 0 -1`` and ``ZRANGE 0 -1`` into lists,
  then the same header parse per message;
- ``pending`` (with ``--pending``): Huey's listings, ``huey.pending()`` and
  ``huey.scheduled()``, which run the whole read pipeline on every message
  (and leave out the ones that cannot run).

For each: seconds, messages per second, and the growth of the process's peak
resident memory (``ru_maxrss`` after, minus the resident size before). The keys
are deleted at the end, whatever happens.

    python benchmarks/census.py [--messages N] [--scheduled-share F] [--pending] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from importlib.metadata import version as dist_version
from typing import Any

import redis

from versioned_tasks import VersionedRedisHuey
from versioned_tasks.ops.census import read_identity, take_census
from versioned_tasks.wire.envelope import Keyring

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = b"benchmark-census-secret-0123456789abcdef"
BATCH = 10_000

#: (share of the messages, template name) of the mix written to the queue.
MIX: list[tuple[float, str]] = [
    (0.55, "invoice-v3"),
    (0.15, "invoice-v2"),
    (0.07, "bill-v1"),  # the old name of send_invoice, mapped by a rename
    (0.10, "ship-v1-callback"),  # a pipeline: shop.ship then billing.send_invoice
    (0.05, "invoice-v3-signed"),  # an HMAC-signed envelope (VTS1)
    (0.06, "plain"),  # a plain @huey.task()
    (0.01, "junk"),
    (0.01, "legacy-pickle"),
]
DEAD_LETTERS = 1_000


def reader_app(name: str) -> VersionedRedisHuey:
    """The app a census runs with: today's code (send_invoice at v3)."""
    huey = VersionedRedisHuey(name, url=REDIS_URL, blocking=False, fleet=False)

    @huey.versioned_task(version=3, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str = "EUR", lines: list[int] | None = None):
        return invoice_id

    @huey.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int, address: str) -> int:
        return order_id

    @huey.upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    @huey.upcaster("billing.send_invoice", from_version=2)
    def add_lines(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "lines": None}

    huey.rename("billing.send_bill", "billing.send_invoice")

    @huey.task(name="plain_report")
    def report(quarter: str) -> str:
        return quarter

    return huey


def templates(name: str) -> dict[str, bytes]:
    """One envelope per kind of message, written by the producers of each version."""
    out: dict[str, bytes] = {}
    old = VersionedRedisHuey(name, url=REDIS_URL, fleet=False)

    @old.versioned_task(version=1, name="billing.send_bill")
    def send_bill(invoice_id: int) -> None: ...

    out["bill-v1"] = old.serialize_task(send_bill.s(1042))
    middle = VersionedRedisHuey(name, url=REDIS_URL, fleet=False)

    @middle.versioned_task(version=2, name="billing.send_invoice")
    def send_v2(invoice_id: int, currency: str = "EUR") -> None: ...

    out["invoice-v2"] = middle.serialize_task(send_v2.s(1042, "USD"))
    new = VersionedRedisHuey(name, url=REDIS_URL, fleet=False)

    @new.versioned_task(version=3, name="billing.send_invoice")
    def send_v3(invoice_id: int, currency: str = "EUR", lines: list[int] | None = None) -> None:
        return None

    @new.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int, address: str) -> None: ...

    @new.task(name="plain_report")
    def report(quarter: str) -> None: ...

    out["invoice-v3"] = new.serialize_task(send_v3.s(1042, "EUR", [101, 102, 103]))
    out["invoice-v3-signed"] = out["invoice-v3"]  # signed per message, in _message()
    out["ship-v1-callback"] = new.serialize_task(
        ship.s(7, "1 Main Street").then(send_v3, "EUR", [7])
    )
    out["plain"] = new.serialize_task(report.s("2024-Q2"))
    return out


def _template_id(template: bytes) -> bytes:
    start = template.find(b'"id":"') + 6
    return template[start : template.find(b'"', start)]


def _message(kind: str, template: bytes, serial: int, keyring: Keyring) -> bytes:
    """Message number ``serial``: unique bytes, so that the schedule (a sorted
    set, which keeps each member once) loses none."""
    if kind == "junk":
        return b"\x00\x01 not an envelope %d \xff" % serial
    if kind == "legacy-pickle":
        return pickle.dumps(("a legacy", "pickled", "message", serial))
    raw = template.replace(_template_id(template), uuid.uuid4().hex.encode(), 1)
    return keyring.sign(raw) if kind == "invoice-v3-signed" else raw


def fill(name: str, count: int, scheduled_share: float, seed: int) -> dict[str, int]:
    """Write the messages; return how many of each kind went to each place."""
    rng = random.Random(seed)
    kinds = [kind for _, kind in MIX]
    weights = [share for share, _ in MIX]
    made = templates(name)
    keyring = Keyring({"k1": SECRET}, None)
    conn = redis.Redis.from_url(REDIS_URL)
    queue_key, schedule_key = f"huey.redis.{name}", f"huey.schedule.{name}"
    written: Counter[str] = Counter()
    now = time.time()
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        queued: list[bytes] = []
        scheduled: dict[bytes, float] = {}
        for serial, kind in enumerate(rng.choices(kinds, weights, k=size), start):
            raw = _message(kind, made.get(kind, b""), serial, keyring)
            if rng.random() < scheduled_share:
                scheduled[raw] = now + rng.uniform(60, 30 * 24 * 3600)
                written[f"schedule {kind}"] += 1
            else:
                queued.append(raw)
                written[f"queue {kind}"] += 1
        pipe = conn.pipeline(transaction=False)
        if queued:
            pipe.lpush(queue_key, *queued)
        if scheduled:
            pipe.zadd(schedule_key, scheduled)
        pipe.execute()
    app = reader_app(name)
    for i in range(DEAD_LETTERS):
        app.dead_letters.add(
            reason="unknown_task",
            raw=made["invoice-v2"],
            error="benchmark",
            task="x.y",
            version=i % 3 + 1,
        )
    written["dead_letters"] = DEAD_LETTERS
    conn.close()
    return dict(sorted(written.items()))


# -- the measured runs, each in its own process ------------------------------------------


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if sys.platform != "darwin" else peak


def child(mode: str, name: str) -> dict[str, Any]:
    app = reader_app(name)
    app.storage.conn.ping()
    before = _rss_now()
    started = time.perf_counter()
    if mode == "census":
        census = take_census(app)
        counted = census.total("queue") + census.total("schedule")
        groups = len(census.rows)
    elif mode == "load-all":
        conn = app.storage.conn
        everything = conn.lrange(app.storage.queue_key, 0, -1)
        everything += conn.zrange(app.storage.schedule_key, 0, -1)
        tally = Counter(read_identity(raw) for raw in everything)
        counted, groups = len(everything), len(tally)
    else:
        # Every message is read; those that cannot run are left out of the lists.
        counted = app.storage.queue_size() + app.storage.schedule_size()
        groups = len(app.pending()) + len(app.scheduled())
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "seconds": seconds,
        "messages": counted,
        "groups": groups,
        "rss_growth": max(0, _peak_rss() - before),
    }


def run_child(mode: str, name: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--queue", name],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def cleanup(name: str) -> None:
    conn = redis.Redis.from_url(REDIS_URL)
    keys = list(conn.scan_iter(match=f"*{name}*"))
    if keys:
        conn.delete(*keys)
    conn.close()


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages to write")
    parser.add_argument(
        "--scheduled-share", type=float, default=0.1, help="share put on the schedule"
    )
    parser.add_argument("--pending", action="store_true", help="also time huey.pending()")
    parser.add_argument("--seed", type=int, default=5, help="seed of the message mix")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--child", choices=["census", "load-all", "pending"], help=argparse.SUPPRESS
    )
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1 or not 0 <= args.scheduled_share <= 1:
        parser.error("--messages must be positive and --scheduled-share between 0 and 1")
    return args


def print_results(
    env: dict[str, Any], written: dict[str, Any], runs: list[dict[str, Any]]
) -> None:
    print(
        f"Census benchmark: {env['messages']:,} messages on Redis {env['redis']} "
        f"(Python {env['python']}, redis-py {env['redis_py']}, {env['machine']})"
    )
    print(f"Filled in {env['fill_seconds']:.1f} s (pipelined LPUSH/ZADD); written:")
    for key, count in written.items():
        print(f"  {key:<28} {count:>9,}")
    census = next(run for run in runs if run["mode"] == "census")
    header = ("method", "seconds", "messages/s", "peak RSS growth", "vs census")
    print("\n{:<10} {:>9} {:>12} {:>16} {:>11}".format(*header))
    for run in runs:
        rate = run["messages"] / run["seconds"] if run["seconds"] else float("inf")
        ratio = run["seconds"] / census["seconds"]
        print(
            f"{run['mode']:<10} {run['seconds']:>9.2f} {rate:>12,.0f} "
            f"{run['rss_growth'] / 2**20:>13.1f} MB {ratio:>10.2f}x"
        )
    load = next((run for run in runs if run["mode"] == "load-all"), None)
    if load is not None and census["rss_growth"]:
        print(
            f"\nload-all needs {load['rss_growth'] / max(census['rss_growth'], 1):.0f}x the "
            f"memory of the census and {load['seconds'] / census['seconds']:.2f}x its time."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.queue)))
        return 0
    name = f"vt_bench_census_{uuid.uuid4().hex[:10]}"
    try:
        started = time.perf_counter()
        written = fill(name, args.messages, args.scheduled_share, args.seed)
        fill_seconds = time.perf_counter() - started
        modes = ["census", "load-all", *(["pending"] if args.pending else [])]
        runs = [run_child(mode, name) for mode in modes]
    finally:
        cleanup(name)
    conn = redis.Redis.from_url(REDIS_URL)
    env = {
        "messages": args.messages,
        "redis": conn.info("server")["redis_version"],
        "python": platform.python_version(),
        "redis_py": dist_version("redis"),
        "versioned_tasks": dist_version("versioned-tasks"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "fill_seconds": fill_seconds,
    }
    conn.close()
    expected = sum(n for key, n in written.items() if key.startswith(("queue ", "schedule ")))
    wrong = [
        run["mode"] for run in runs if run["mode"] != "pending" and run["messages"] != expected
    ]
    if args.json:
        print(json.dumps({"environment": env, "written": written, "results": runs}, indent=2))
    else:
        print_results(env, written, runs)
        verdict = f"MISMATCH in {', '.join(wrong)}" if wrong else "every method agrees"
        print(f"Messages counted: {expected:,} expected; {verdict}.")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
