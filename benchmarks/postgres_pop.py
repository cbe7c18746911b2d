"""Per-message cost of the worker's pop on PostgreSQL: Huey's pop against the atomic one.

Two ways to pop, timed in the same run against the same server:

- ``huey-pop``: Huey's own ``PostgresStorage.dequeue()`` (one
  ``delete ... returning`` that commits on its own), then, for a message that
  cannot run, the dead-letter insert as a second statement: a worker dying
  between the two loses the message;
- ``atomic``: what ``VersionedPostgresHuey.dequeue()`` does: read the head,
  run the read pipeline, then delete it by id (a runnable task) or delete it
  and write its dead letter in one transaction (a message that cannot run).

For each, ``good`` times ``dequeue()`` + ``execute()`` of a trivial task per
message, and ``bad`` times ``dequeue()`` dead-lettering undecodable messages;
``sched-good`` and ``sched-bad`` time one ``read_schedule()`` of that many due
messages (the scheduler's pop), per message.
Each timing is the mean over ``--messages`` messages enqueued beforehand (not
timed); ``--repeat`` rounds interleave the cases and the best and the median
are reported. The queue's rows are removed at the end.

    python benchmarks/postgres_pop.py [--dsn DSN] [--messages N] [--repeat R]

It reaches into one private property (``_atomic``) to get Huey's pop, and may
need updating when that changes.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from versioned_tasks import VersionedPostgresHuey

JUNK = b"junk-not-an-envelope-%d"


class HueyPop(VersionedPostgresHuey):
    """The generic path: Huey's pop, then the dead-letter write on its own."""

    @property
    def _atomic(self) -> Any:
        return None


class Bench:
    """One app on its own queue, with a trivial task."""

    def __init__(self, kind: type[VersionedPostgresHuey], dsn: str) -> None:
        self.app = kind(f"bench_{uuid.uuid4().hex[:8]}", dsn=dsn, blocking=False, results=False)

        @self.app.versioned_task(version=1, name="bench.noop")
        def noop(n: int) -> None: ...

        self.noop = noop
        self.app.dead_letters.list()  # creates the table outside the timings


def time_good(bench: Bench, n: int) -> float:
    app = bench.app
    for i in range(n):
        bench.noop(i)
    start = time.perf_counter()
    for _ in range(n):
        task = app.dequeue()
        assert task is not None
        app.execute(task)
    elapsed = time.perf_counter() - start
    assert app.dequeue() is None
    return elapsed / n


def time_bad(bench: Bench, n: int) -> float:
    app = bench.app
    before = len(app.dead_letters)
    for i in range(n):
        app.storage.enqueue(JUNK % i)
    start = time.perf_counter()
    assert app.dequeue() is None  # dead-letters them all on the way
    elapsed = time.perf_counter() - start
    assert len(app.dead_letters) == before + n
    return elapsed / n


def time_schedule_good(bench: Bench, n: int) -> float:
    due = datetime.datetime(2000, 1, 1)
    for i in range(n):
        bench.app.add_schedule(bench.noop.s(i, eta=due))
    start = time.perf_counter()
    tasks = bench.app.read_schedule(datetime.datetime(2100, 1, 1))
    elapsed = time.perf_counter() - start
    assert len(tasks) == n
    return elapsed / n


def time_schedule_bad(bench: Bench, n: int) -> float:
    app = bench.app
    before = len(app.dead_letters)
    due = datetime.datetime(2000, 1, 1)
    for i in range(n):
        app.storage.add_to_schedule(JUNK % i, due)
    start = time.perf_counter()
    assert app.read_schedule(datetime.datetime(2100, 1, 1)) == []
    elapsed = time.perf_counter() - start
    assert len(app.dead_letters) == before + n
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("versioned_tasks").setLevel(logging.ERROR)  # one warning per dead letter

    benches = {
        "huey-pop": Bench(HueyPop, args.dsn),
        "atomic": Bench(VersionedPostgresHuey, args.dsn),
    }
    cases: dict[str, Callable[[Bench, int], float]] = {
        "good": time_good,
        "bad": time_bad,
        "sched-good": time_schedule_good,
        "sched-bad": time_schedule_bad,
    }
    timings: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.repeat):
            for case, run in cases.items():
                for mode, bench in benches.items():
                    timings.setdefault((case, mode), []).append(run(bench, args.messages))
    finally:
        for bench in benches.values():
            app = bench.app
            app.storage.flush_queue()
            app.dead_letters.purge()
            app.storage.close()

    print(f"{args.messages} messages x {args.repeat} rounds, microseconds per message")
    print(f"{'case':<10} {'mode':<9} {'best':>8} {'median':>8}")
    for (case, mode), values in timings.items():
        best, median = min(values) * 1e6, statistics.median(values) * 1e6
        print(f"{case:<10} {mode:<9} {best:>8.1f} {median:>8.1f}")


if __name__ == "__main__":
    main()
