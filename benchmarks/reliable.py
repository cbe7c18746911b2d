"""The cost of reliable fetch on Redis: a real consumer drains trivial tasks,
with ``reliable=False`` and ``reliable=True``.

Each round enqueues ``--tasks`` calls of a task that does nothing but count,
on a fresh queue, then times a consumer (``--workers`` thread workers, Huey's
blocking pop) from ``start()`` until every call ran. The two modes alternate,
the first one swapping every round, for ``--repeat`` rounds; the best round of
each mode is reported (the median beside it), with the ratio of the best
rates and the Redis commands per task (the ``INFO commandstats`` delta over
the drain: run it on a Redis of its own for clean counts) and this process's
CPU time per task, which other load on the machine disturbs less than the rate.

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


def command_calls(conn: redis.Redis) -> int:
    """Commands the server has run so far (all clients)."""
    stats = conn.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def drain(url: str, tasks: int, workers: int, reliable: bool) -> tuple[float, float, float]:
    """Seconds for a consumer to run ``tasks`` trivial tasks; commands and this
    process's CPU microseconds per task."""
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
    before = command_calls(conn)
    start, cpu = time.perf_counter(), time.process_time()
    consumer.start()
    try:
        while counted.value < tasks:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        commands = command_calls(conn) - before
    finally:
        consumer.stop(graceful=True)
        for key in conn.scan_iter(match=f"*{queue}*"):
            conn.delete(key)
        conn.close()
    return elapsed, commands / tasks, cpu / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rates: dict[bool, list[float]] = {False: [], True: []}
    commands: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.repeat):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for reliable in order:
            seconds, per_task, cpu_us = drain(args.url, args.tasks, args.workers, reliable)
            rates[reliable].append(args.tasks / seconds)
            commands[reliable].append(per_task)
            cpu[reliable].append(cpu_us)

    print(f"{args.tasks} trivial tasks, {args.workers} thread workers, best of {args.repeat}")
    for reliable, label in ((False, "plain"), (True, "reliable")):
        print(
            f"  {label:9} {max(rates[reliable]):8.0f} msgs/s "
            f"(median {statistics.median(rates[reliable]):.0f}), "
            f"{min(commands[reliable]):.2f} Redis commands and "
            f"{min(cpu[reliable]):.0f} us of CPU per task"
        )
    ratio = max(rates[True]) / max(rates[False])
    print(f"  reliable / plain: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost)")


if __name__ == "__main__":
    main()
