"""End to end through a real Huey consumer: plain Huey with pickle against versioned apps.

One task, ``send(user_id: int, email: str, subject: str = "hi", items:
list[int] | None = None)``, is declared twice: as ``@huey.task()`` on a plain
``RedisHuey`` / ``SqliteHuey`` / ``PostgresHuey`` (Huey's default pickle
serializer), and as ``@huey.versioned_task(version=1)`` on the matching
``VersionedRedisHuey`` / ``VersionedSqliteHuey`` / ``VersionedPostgresHuey``.
Three messages in four are small (``send(7, "user7@example.com")``), one in four
carries about 2 KB (a 512-character subject and 250 item ids); the header
line gives the exact sizes on the wire.

Each run uses a queue of its own (a fresh name; on SQLite a fresh file) and:

1. **enqueue**: calls ``send(...)`` ``--n`` times from one thread, as a web
   process would; each call validates (versioned), serializes and writes one
   message;
2. **consume**: starts ``huey.create_consumer(workers=4, worker_type=...)``
   (``--workers``; Huey's defaults otherwise, with periodic tasks off) in this
   process, with thread workers or forked process workers, and times from
   ``consumer.start()`` to the moment the last task finished. Completions are
   counted by a ``SIGNAL_COMPLETE`` receiver that increments a
   ``multiprocessing.Value`` (shared with forked workers); the receiver is the
   same for both apps, so both do the same measured work;
3. checks that every task ran once, none failed, the queue is empty and
   (versioned) the dead-letter store is empty; then stops the consumer and
   deletes the run's Redis keys, SQL rows or SQLite file.

Both apps keep their defaults otherwise (results on, Redis and PostgreSQL
blocking reads; the versioned Redis app publishes its fleet heartbeat), as an
application would run them.

Before a backend's timed runs, each variant makes one short untimed run (200
tasks) so that connections, imports and caches are warm. The variants of one
backend and worker type are then alternated (plain, versioned,
plain, versioned, ... for ``--rounds`` rounds) so that a busy machine slows
them alike; the best round of each is reported, the median beside it.
Variants beside ``plain`` and ``versioned``:

- ``reliable`` (Redis only, where reliable fetch runs): the versioned app with
  ``reliable=True`` (the ``versioned`` row then passes ``reliable=False``);
- ``signed`` (on by default, ``--no-signed`` leaves it out): the versioned app
  with HMAC-SHA256 signed envelopes (one key, on the producer and the workers);
  a line per group then gives what signing costs against the unsigned app.

Reading the output: ``msg/s`` is messages per second (higher is better);
``vs plain`` is the variant's best throughput over plain Huey's best in the
same group, so ``1.00x`` is "as fast as plain Huey" and ``0.80x`` means 20 %
fewer messages per second. ``e2e`` is ``n / (enqueue seconds + consume
seconds)`` of the best round. ``cons paired`` is the median, over the rounds,
of the variant's consume msg/s over plain's in the same round: less swayed by
a machine whose load drifts. Medians far from the best mean a busy machine.
A second table gives CPU microseconds per message spent in this process and
its forked workers (``os.times()``, children counted once joined; the Redis or
PostgreSQL server's own time is not included), lowest of the rounds: less
swayed by other processes than msg/s, but coarse (10 ms ticks) for small
``--n``.

    python benchmarks/end_to_end.py [--n N] [--rounds R] [--workers W]
        [--backends redis,sqlite,postgres] [--worker-types thread,process]
        [--no-signed] [--json]

Redis is read from ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``),
PostgreSQL from ``PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
a backend that is not reachable is skipped with a line saying why. Keys are
deleted by the run's unique name, never with FLUSHALL/FLUSHDB.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from huey import MemoryHuey, PostgresHuey, RedisHuey, SqliteHuey
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR

from versioned_tasks import (
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedPostgresHuey,
    VersionedRedisHuey,
    VersionedSerializer,
    VersionedSqliteHuey,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TASK_NAME = "bench.send"
SECRET = b"benchmark-end-to-end-secret-0123456789abcdef"
#: One message in LARGE_EVERY carries the ~2 KB payload.
LARGE_EVERY = 4
#: Tasks of the untimed run of each variant before a backend's timed rounds.
WARM_UP_TASKS = 200
#: A run fails when no task completed for this long.
STALL_SECONDS = 60.0
#: Huey's SQL tables (default prefix) and the dead-letter table, keyed by queue name.
PG_TABLES = ("huey_task", "huey_schedule", "huey_kv", "huey_counter", "huey_vt_dead_letters")
_SIGNALS = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]

Call = tuple[tuple[Any, ...], dict[str, Any]]


def calls(n: int) -> list[Call]:
    """The ``n`` calls of a run, built before the clock starts."""
    subject = "Your monthly statement is ready " * 16
    out: list[Call] = []
    for i in range(n):
        email = f"user{i}@example.com"
        if i % LARGE_EVERY == LARGE_EVERY - 1:
            items = list(range(100_000 + i, 100_250 + i))
            out.append(((i, email), {"subject": subject, "items": items}))
        else:
            out.append(((i, email), {}))
    return out


def send(user_id: int, email: str, subject: str = "hi", items: list[int] | None = None) -> None:
    """The task body: nothing, so that the queue path is what is measured."""


# -- backends ---------------------------------------------------------------------------


@dataclass
class Backend:
    """A storage: the plain and versioned app classes, their options, and cleanup."""

    key: str
    plain: type[Any]
    versioned: type[VersionedHuey]
    options: Callable[[str], dict[str, Any]]
    cleanup: Callable[[str, dict[str, Any]], None]


def redis_options(name: str) -> dict[str, Any]:
    return {"url": REDIS_URL}


def redis_cleanup(name: str, options: dict[str, Any]) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as conn:
        keys = list(conn.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            conn.delete(*keys)


def sqlite_options_in(directory: str) -> Callable[[str], dict[str, Any]]:
    def options(name: str) -> dict[str, Any]:
        return {"filename": str(Path(directory) / f"{name}.db")}

    return options


def sqlite_cleanup(name: str, options: dict[str, Any]) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(options["filename"] + suffix).unlink(missing_ok=True)


def postgres_options(name: str) -> dict[str, Any]:
    return {"dsn": PG_DSN}


def postgres_cleanup(name: str, options: dict[str, Any]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in PG_TABLES:
            if conn.execute("select to_regclass(%s)", (table,)).fetchone() != (None,):
                query = sql.SQL("delete from {} where queue = %s").format(sql.Identifier(table))
                conn.execute(query, (name,))


def unreachable(key: str) -> str | None:
    """Why a backend cannot be used here, or None when it can."""
    try:
        if key == "redis":
            import redis

            with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as conn:
                conn.ping()
        elif key == "postgres":
            import psycopg

            with psycopg.connect(PG_DSN, connect_timeout=2) as conn:
                conn.execute("select 1")
    except Exception as exc:
        where = REDIS_URL if key == "redis" else PG_DSN
        detail = " ".join(str(exc).split())
        return f"not reachable at {where} ({type(exc).__name__}: {detail})"
    return None


def backends(keys: list[str], sqlite_dir: str) -> Iterator[Backend | str]:
    """The backends asked for, or for each unusable one a line saying why."""
    table = {
        "redis": (RedisHuey, VersionedRedisHuey, redis_options, redis_cleanup),
        "sqlite": (SqliteHuey, VersionedSqliteHuey, sqlite_options_in(sqlite_dir), sqlite_cleanup),
        "postgres": (PostgresHuey, VersionedPostgresHuey, postgres_options, postgres_cleanup),
    }
    for key in keys:
        reason = unreachable(key)
        if reason is not None:
            yield f"{key}: skipped, {reason}"
            continue
        yield Backend(key, *table[key])


# -- variants ---------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of building the app that both enqueues and consumes."""

    key: str
    label: str
    build: Callable[[Backend, str, dict[str, Any]], tuple[Any, Any]]


def accepts_reliable(cls: type[Any]) -> bool:
    """Whether the app class names a ``reliable`` parameter (not merely **kwargs)."""
    parameter = inspect.signature(cls).parameters.get("reliable")
    return parameter is not None and parameter.kind is not inspect.Parameter.VAR_KEYWORD


def build_plain(backend: Backend, name: str, options: dict[str, Any]) -> tuple[Any, Any]:
    huey = backend.plain(name, **options)
    return huey, huey.task(name="send")(send)


def versioned_builder(**extra: Any) -> Callable[[Backend, str, dict[str, Any]], tuple[Any, Any]]:
    def build(backend: Backend, name: str, options: dict[str, Any]) -> tuple[Any, Any]:
        extra_options = dict(extra)
        if "signed" in extra_options:
            del extra_options["signed"]
            extra_options["serializer"] = VersionedSerializer(secret_keys={"k1": SECRET})
        huey = backend.versioned(name, **options, **extra_options)
        return huey, huey.versioned_task(version=1, name=TASK_NAME)(send)

    return build


def variants(backend: Backend, signed: bool) -> tuple[list[Variant], list[str]]:
    """The variants for this backend, and notes on those left out."""
    notes: list[str] = []
    # Reliable fetch is a Redis feature: SQLite and PostgreSQL refuse reliable=True
    # (their pops already settle a bad message in one transaction).
    reliable = backend.key == "redis" and accepts_reliable(backend.versioned)
    off = {"reliable": False} if reliable else {}
    out = [
        Variant("plain", f"plain {backend.plain.__name__} (pickle)", build_plain),
        Variant(
            "versioned",
            f"{backend.versioned.__name__}" + (" reliable=False" if reliable else ""),
            versioned_builder(**off),
        ),
    ]
    if reliable:
        out.append(
            Variant(
                "reliable",
                f"{backend.versioned.__name__} reliable=True",
                versioned_builder(reliable=True),
            )
        )
    elif backend.key == "redis":
        notes.append(
            f"{backend.key}: reliable variant unavailable: "
            f"{backend.versioned.__name__}() takes no 'reliable' parameter"
        )
    if signed:
        out.append(
            Variant(
                "signed",
                f"{backend.versioned.__name__}, signed (HMAC-SHA256)",
                versioned_builder(signed=True, **off),
            )
        )
    return out, notes


# -- one run ----------------------------------------------------------------------------


class Tally:
    """Completions and errors, counted across threads and forked worker processes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.completed = multiprocessing.Value("q", 0)
        self.errors = multiprocessing.Value("q", 0)
        self.done_at = multiprocessing.Value("d", 0.0)

    def attach(self, huey: Any) -> None:
        completed, errors, done_at, n = self.completed, self.errors, self.done_at, self.n

        def on_complete(signal_name: str, task: Any, *args: Any, **kwargs: Any) -> None:
            with completed.get_lock():
                completed.value += 1
                if completed.value == n:
                    done_at.value = time.time()

        def on_error(signal_name: str, task: Any, *args: Any, **kwargs: Any) -> None:
            with errors.get_lock():
                errors.value += 1

        huey.signal(SIGNAL_COMPLETE)(on_complete)
        huey.signal(SIGNAL_ERROR)(on_error)

    def wait(self) -> float:
        """Block until every task ran; return the time.time() of the last completion."""
        last, last_change = -1, time.monotonic()
        while self.done_at.value == 0.0:
            if self.errors.value:
                raise RuntimeError(f"{self.errors.value} task(s) failed")
            count = self.completed.value
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise RuntimeError(
                    f"stalled: {count} of {self.n} tasks ran, none for {STALL_SECONDS:.0f} s"
                )
            time.sleep(0.005)
        return float(self.done_at.value)


@contextmanager
def consumer_running(huey: Any, workers: int, worker_type: str) -> Iterator[float]:
    """Start a consumer; yield the time.time() just before it started; stop it after."""
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    consumer = huey.create_consumer(
        workers=workers, worker_type=worker_type, periodic=False, check_worker_health=False
    )
    started = time.time()
    consumer.start()
    # The consumer's handlers serve only its run() loop, which is not used here:
    # give Ctrl-C back to this script.
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    try:
        yield started
    finally:
        consumer.stop(graceful=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def close(huey: Any) -> None:
    """Release the app's connections before its data is deleted."""
    storage = huey.storage
    pool = getattr(getattr(storage, "conn", None), "connection_pool", None)
    if pool is not None:  # Redis: no close() on Huey's storage
        pool.disconnect()
    elif hasattr(storage, "close"):
        storage.close()


def one_run(
    backend: Backend, variant: Variant, worker_type: str, workers: int, work: list[Call]
) -> dict[str, float]:
    """Enqueue ``work``, drain it with a real consumer, check, clean up; seconds of each."""
    name = f"vt_bench_e2e_{uuid.uuid4().hex[:10]}"
    options = backend.options(name)
    huey: Any = None
    try:
        huey, task = variant.build(backend, name, options)
        tally = Tally(len(work))
        tally.attach(huey)
        cpu, started = cpu_seconds(), time.perf_counter()
        for args, kwargs in work:
            task(*args, **kwargs)
        enqueue = time.perf_counter() - started
        enqueue_cpu = cpu_seconds() - cpu
        if huey.pending_count() != len(work):
            raise RuntimeError(f"{huey.pending_count()} messages queued, {len(work)} expected")
        cpu = cpu_seconds()
        with consumer_running(huey, workers, worker_type) as consume_started:
            consume = tally.wait() - consume_started
        # Stopped and joined: forked workers' time is in the children's share.
        consume_cpu = cpu_seconds() - cpu
        check_drained(huey, tally)
        return {
            "enqueue": enqueue,
            "consume": consume,
            "enqueue_cpu": enqueue_cpu,
            "consume_cpu": consume_cpu,
        }
    finally:
        if huey is not None:
            close(huey)
        backend.cleanup(name, options)


def check_drained(huey: Any, tally: Tally) -> None:
    time.sleep(0.05)  # a task run twice would be counted by now
    problems = []
    if tally.completed.value != tally.n:
        problems.append(f"{tally.completed.value} completions for {tally.n} tasks")
    if tally.errors.value:
        problems.append(f"{tally.errors.value} errors")
    if huey.pending_count():
        problems.append(f"{huey.pending_count()} messages left in the queue")
    if isinstance(huey, VersionedHuey) and len(huey.dead_letters):
        problems.append(f"{len(huey.dead_letters)} dead letters")
    if problems:
        raise RuntimeError("; ".join(problems))


# -- the whole benchmark ----------------------------------------------------------------


@dataclass
class Group:
    """The runs of one backend and worker type, every variant alternated."""

    backend: str
    worker_type: str
    variants: list[Variant]
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def warm_up(backend: Backend, chosen: list[Variant], args: argparse.Namespace) -> None:
    """One short untimed run of each variant: connections, imports and caches warm."""
    work = calls(min(args.n, WARM_UP_TASKS))
    for variant in chosen:
        one_run(backend, variant, args.worker_types[0], args.workers, work)


def run_group(backend: Backend, group: Group, args: argparse.Namespace, work: list[Call]) -> None:
    group.samples = {variant.key: [] for variant in group.variants}
    for round_number in range(1, args.rounds + 1):
        for variant in group.variants:
            sample = one_run(backend, variant, group.worker_type, args.workers, work)
            group.samples[variant.key].append(sample)
            if not args.json:
                print(
                    f"  {group.backend}/{group.worker_type} round {round_number} "
                    f"{variant.key:<9} enqueue {args.n / sample['enqueue']:>8,.0f} msg/s  "
                    f"consume {args.n / sample['consume']:>8,.0f} msg/s  "
                    f"cpu {sample['enqueue_cpu'] / args.n * 1e6:>4.0f} + "
                    f"{sample['consume_cpu'] / args.n * 1e6:>4.0f} µs/msg",
                    file=sys.stderr,
                    flush=True,
                )


def summary(group: Group, n: int) -> list[dict[str, Any]]:
    """One row per variant: best and median throughputs, ratios to plain's best."""
    rows: list[dict[str, Any]] = []
    for variant in group.variants:
        samples = group.samples[variant.key]
        enqueue = [n / s["enqueue"] for s in samples]
        consume = [n / s["consume"] for s in samples]
        e2e = [n / (s["enqueue"] + s["consume"]) for s in samples]
        enqueue_cpu = [s["enqueue_cpu"] / n * 1e6 for s in samples]
        consume_cpu = [s["consume_cpu"] / n * 1e6 for s in samples]
        rows.append(
            {
                "backend": group.backend,
                "worker_type": group.worker_type,
                "variant": variant.key,
                "label": variant.label,
                "enqueue_best": max(enqueue),
                "enqueue_median": statistics.median(enqueue),
                "consume_best": max(consume),
                "consume_median": statistics.median(consume),
                "e2e_best": max(e2e),
                "enqueue_cpu_us_best": min(enqueue_cpu),
                "enqueue_cpu_us_median": statistics.median(enqueue_cpu),
                "consume_cpu_us_best": min(consume_cpu),
                "consume_cpu_us_median": statistics.median(consume_cpu),
            }
        )
    plain = rows[0]
    plain_samples = group.samples[group.variants[0].key]
    for row, variant in zip(rows, group.variants, strict=True):
        for kind in ("enqueue", "consume", "e2e"):
            row[f"{kind}_vs_plain"] = row[f"{kind}_best"] / plain[f"{kind}_best"]
        # Each round against plain's run of the same round: robust to drift.
        for kind in ("enqueue", "consume"):
            pairs = zip(group.samples[variant.key], plain_samples, strict=True)
            row[f"{kind}_paired"] = statistics.median(p[kind] / v[kind] for v, p in pairs)
        for kind in ("enqueue_cpu_us", "consume_cpu_us"):
            row[f"{kind}_vs_plain"] = row[f"{kind}_best"] / plain[f"{kind}_best"]
    return rows


def message_sizes() -> dict[str, list[int]]:
    """Bytes on the wire of a small and of a large message, pickle and envelope."""
    small, large = calls(LARGE_EVERY)[0], calls(LARGE_EVERY)[-1]
    plain = MemoryHuey("bench-sizes")
    plain_send = plain.task(name="send")(send)
    versioned = VersionedMemoryHuey("bench-sizes")
    versioned_send = versioned.versioned_task(version=1, name=TASK_NAME)(send)
    return {
        "plain": [len(plain.serialize_task(plain_send.s(*a, **k))) for a, k in (small, large)],
        "versioned": [
            len(versioned.serialize_task(versioned_send.s(*a, **k))) for a, k in (small, large)
        ],
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    packages = ("huey", "redis", "psycopg", "pydantic", "orjson", "versioned-tasks")
    versions = {}
    for name in packages:
        try:
            versions[name] = dist_version(name)
        except Exception:
            versions[name] = "absent"
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "n": args.n,
        "rounds": args.rounds,
        "workers": args.workers,
        "large_share": 1 / LARGE_EVERY,
        "message_bytes": message_sizes(),
    }


def print_table(rows: list[dict[str, Any]], env: dict[str, Any], notes: list[str]) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    print(
        f"Python {env['python']} ({env['machine']}, load {env['load_average']}); {versions}\n"
        f"{env['n']:,} tasks per run, {env['workers']} workers, "
        f"best of {env['rounds']} alternated rounds (median in brackets)"
    )
    sizes = env["message_bytes"]
    print(
        f"Messages: 3 in {LARGE_EVERY} small, 1 in {LARGE_EVERY} large; bytes small/large: "
        f"pickle {sizes['plain'][0]}/{sizes['plain'][1]}, "
        f"envelope {sizes['versioned'][0]}/{sizes['versioned'][1]}"
    )
    if rows:
        print_throughput(rows)
        print_cpu(rows)
    else:
        print("\nNothing was measured: no backend could be used.")
    for line in signing_costs(rows):
        print(line)
    for note in notes:
        print(f"note: {note}")


def signing_costs(rows: list[dict[str, Any]]) -> list[str]:
    """What signing costs: the signed variant against the unsigned versioned one."""
    by_group: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault((row["backend"], row["worker_type"]), {})[row["variant"]] = row
    out = []
    for (backend, worker_type), group in by_group.items():
        signed, unsigned = group.get("signed"), group.get("versioned")
        if signed is None or unsigned is None:
            continue
        out.append(
            f"signing cost, {backend}/{worker_type}: enqueue "
            f"{signed['enqueue_best'] / unsigned['enqueue_best']:.2f}x, consume "
            f"{signed['consume_best'] / unsigned['consume_best']:.2f}x of unsigned msg/s; CPU "
            f"+{signed['enqueue_cpu_us_best'] - unsigned['enqueue_cpu_us_best']:.0f} µs/msg "
            f"enqueue, +{signed['consume_cpu_us_best'] - unsigned['consume_cpu_us_best']:.0f} "
            f"µs/msg consume"
        )
    return out


def _print_rows(header: str, rows: list[dict[str, Any]], line: Callable[[Any], str]) -> None:
    print("\n" + header)
    print("-" * len(header))
    previous = None
    for row in rows:
        where = f"{row['backend']}/{row['worker_type']}"
        if previous is not None and where != previous:
            print()
        previous = where
        print(f"{where:<16} {row['label']:<44} {line(row)}")


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print(
        "\nThroughput, msg/s (higher is better); vs plain = best msg/s / plain's best msg/s; "
        "cons paired = median over rounds of msg/s / plain's msg/s in the same round"
    )
    header = (
        f"{'backend/workers':<16} {'variant':<44} {'enqueue msg/s':>18} {'consume msg/s':>18} "
        f"{'e2e msg/s':>10} {'enq vs plain':>12} {'cons vs plain':>13} {'e2e vs plain':>12} "
        f"{'cons paired':>11}"
    )

    def line(row: Any) -> str:
        enqueue = f"{row['enqueue_best']:,.0f} ({row['enqueue_median']:,.0f})"
        consume = f"{row['consume_best']:,.0f} ({row['consume_median']:,.0f})"
        return (
            f"{enqueue:>18} {consume:>18} {row['e2e_best']:>10,.0f} "
            f"{row['enqueue_vs_plain']:>11.2f}x {row['consume_vs_plain']:>12.2f}x "
            f"{row['e2e_vs_plain']:>11.2f}x {row['consume_paired']:>10.2f}x"
        )

    _print_rows(header, rows, line)


def print_cpu(rows: list[dict[str, Any]]) -> None:
    print(
        "\nCPU µs per message in this process and its worker processes (lower is better; "
        "Redis/PostgreSQL server time not included; steadier than msg/s on a busy machine)"
    )
    header = (
        f"{'backend/workers':<16} {'variant':<44} {'enqueue µs':>16} {'consume µs':>16} "
        f"{'enq vs plain':>12} {'cons vs plain':>13}"
    )

    def line(row: Any) -> str:
        enqueue = f"{row['enqueue_cpu_us_best']:.0f} ({row['enqueue_cpu_us_median']:.0f})"
        consume = f"{row['consume_cpu_us_best']:.0f} ({row['consume_cpu_us_median']:.0f})"
        return (
            f"{enqueue:>16} {consume:>16} {row['enqueue_cpu_us_vs_plain']:>11.2f}x "
            f"{row['consume_cpu_us_vs_plain']:>12.2f}x"
        )

    _print_rows(header, rows, line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds; best is kept")
    parser.add_argument("--workers", type=int, default=4, help="consumer workers")
    parser.add_argument(
        "--backends", default="redis,sqlite,postgres", help="comma-separated list of backends"
    )
    parser.add_argument(
        "--worker-types", default="thread,process", help="comma-separated: thread,process"
    )
    parser.add_argument(
        "--signed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the signed-envelope variant and print what signing costs (default: on)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.worker_types = [w.strip() for w in args.worker_types.split(",") if w.strip()]
    if args.n < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--n, --rounds and --workers must be at least 1")
    if unknown := set(args.backends) - {"redis", "sqlite", "postgres"}:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if unknown := set(args.worker_types) - {"thread", "process"}:
        parser.error(f"unknown worker type(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = calls(args.n)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vt_bench_e2e_") as sqlite_dir:
        for backend in backends(args.backends, sqlite_dir):
            if isinstance(backend, str):
                notes.append(backend)
                continue
            chosen, left_out = variants(backend, args.signed)
            notes.extend(left_out)
            warm_up(backend, chosen, args)
            for worker_type in args.worker_types:
                group = Group(backend.key, worker_type, chosen)
                run_group(backend, group, args, work)
                rows.extend(summary(group, args.n))
    env = environment(args)
    if args.json:
        print(json.dumps({"environment": env, "results": rows, "notes": notes}, indent=2))
    else:
        print_table(rows, env, notes)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
