"""The cost of reliable fetch on Redis: a real consumer drains trivial tasks,
with ``reliable=False`` and ``reliable=True``.

Each round enqueues ``--tasks`` calls of a task that does nothing but count,
on a fresh queue, then times a consumer (``--workers`` thread workers, Huey's
blocking pop) from ``start()`` until every call ran. The two modes alternate,
the first one swapping every round, for ``--repeat`` rounds; the best round of
each mode is reported (the median beside it), with the ratio of the best
rates, and per task the Redis commands and the time Redis spent on them (the
``INFO commandstats`` delta over the drain, commands run inside a Lua script
included: run it on a Redis of its own for clean counts) and this process's
CPU time, which other load on the machine disturbs less than the rate.

    python benchmarks/reliable.py [--url URL] [--tasks N] [--workers W] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

import redis

from versioned_tasks import VersionedRedisHuey

CONSUMER_OPTIONS: dict[str, Any] = {
    "worker_type": "thread",
    "periodic": False,
    "check_worker_health": False,
}


class Counter:
    """Calls counted across worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def __call__(self) -> None:
        with self._lock:
            self.value += 1


def command_stats(conn: redis.Redis) -> tuple[int, int]:
    """Commands the server has run so far, and the microseconds it spent (all clients)."""
    stats = conn.info("commandstats").values()
    return sum(int(e["calls"]) for e in stats), sum(int(e["usec"]) for e in stats)


def drain(url: str, tasks: int, workers: int, reliable: bool) -> tuple[float, ...]:
    """Seconds for a consumer to run ``tasks`` trivial tasks; per task: Redis
    commands, Redis microseconds and this process's CPU microseconds."""
    queue = f"vt_bench_{uuid.uuid4().hex[:10]}"
    app = VersionedRedisHuey(queue, url=url, reliable=reliable)
    counted = Counter()

    @app.versioned_task(version=1, name="bench.noop")
    def noop(n: int) -> None:
        counted()

    for n in range(tasks):
        noop(n)
    conn = redis.Redis.from_url(url)
    consumer = app.create_consumer(workers=workers, **CONSUMER_OPTIONS)
    calls, usec = command_stats(conn)
    start, cpu = time.perf_counter(), time.process_time()
    consumer.start()
    try:
        while counted.value < tasks:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        after = command_stats(conn)
        calls, usec = after[0] - calls, after[1] - usec
    finally:
        consumer.stop(graceful=True)
        for key in conn.scan_iter(match=f"*{queue}*"):
            conn.delete(key)
        conn.close()
    return elapsed, calls / tasks, usec / tasks, cpu / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rates: dict[bool, list[float]] = {False: [], True: []}
    commands: dict[bool, list[float]] = {False: [], True: []}
    server: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.repeat):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for reliable in order:
            seconds, calls, usec, cpu_us = drain(args.url, args.tasks, args.workers, reliable)
            rates[reliable].append(args.tasks / seconds)
            commands[reliable].append(calls)
            server[reliable].append(usec)
            cpu[reliable].append(cpu_us)

    print(f"{args.tasks} trivial tasks, {args.workers} thread workers, best of {args.repeat}")
    for reliable, label in ((False, "plain"), (True, "reliable")):
        print(
            f"  {label:9} {max(rates[reliable]):8.0f} msgs/s "
            f"(median {statistics.median(rates[reliable]):.0f}), "
            f"per task: {min(commands[reliable]):.2f} Redis commands taking "
            f"{min(server[reliable]):.1f} us in Redis, {min(cpu[reliable]):.0f} us of CPU here"
        )
    ratio = max(rates[True]) / max(rates[False])
    print(f"  reliable / plain: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost)")


if __name__ == "__main__":
    main()
