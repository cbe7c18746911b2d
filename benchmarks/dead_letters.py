"""What a bad message costs the worker, against a trivial good task.

For each storage (the local Redis, a SQLite file, and PostgreSQL when it is
reachable), in one run: fills the queue with ``--messages`` trivial good tasks
(a versioned task that returns None at once) and drains them as Huey's worker
loop does (``huey.dequeue()``, then ``huey.execute(task)``); then fills it with
as many bad messages (half undecodable bytes, half envelopes of a task the app
does not declare) and drains those, each dead-lettered inside ``dequeue()``.
Filling is not timed. Prints the microseconds per message of each drain and
the ratio bad/good (the goal: a bad message costs at most 0.5x a good task).

Logging is set up as ``huey_consumer`` does by default (level INFO, its
format), writing to ``os.devnull``: a good task logs "Executing" and
"executed", a bad message one "Dead-lettered" warning, and both pay for it.

With ``--profile``, the bad drain of each storage also runs under cProfile and
the functions with the most own time are printed.

    python benchmarks/dead_letters.py [--messages N] [--storage NAME ...] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import version as dist_version
from typing import Any

from versioned_tasks import (
    VersionedHuey,
    VersionedPostgresHuey,
    VersionedRedisHuey,
    VersionedSqliteHuey,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STORAGES = ("redis", "sqlite", "postgres")
GOAL = 0.5

MakeApp = Callable[[], VersionedHuey]


# -- the storages ---------------------------------------------------------------------------
#
# Each yields a factory of apps on one queue, and a Tally of what the apps asked
# of the storage: round trips to Redis; statements and write transactions on SQL
# (a writing autocommit statement is a transaction of its own; reads are not counted).


class Tally:
    """Round trips (Redis) or statements (SQL), and write transactions (SQL)."""

    def __init__(self) -> None:
        self.trips = 0
        self.transactions = 0
        self.open = False

    def statement(self, query: str) -> None:
        self.trips += 1
        word = query.lstrip().split(None, 1)[0].lower() if query.strip() else ""
        if word == "begin":
            self.open = True
            self.transactions += 1
        elif word in ("commit", "rollback"):
            self.open = False
        elif not self.open and word not in ("select", "pragma"):
            self.transactions += 1

    def snapshot(self) -> tuple[int, int]:
        return self.trips, self.transactions


Apps = tuple[Callable[[], VersionedHuey], Tally]


@contextlib.contextmanager
def redis_apps(name: str) -> Iterator[Apps]:
    import redis

    tally = Tally()

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            tally.trips += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=Counting)

    def make() -> VersionedHuey:
        return VersionedRedisHuey(name, connection_pool=pool, blocking=False, fleet=False)

    try:
        yield make, tally
    finally:
        conn = redis.Redis.from_url(REDIS_URL)
        keys = list(conn.scan_iter(match=f"*{name}*"))
        if keys:
            conn.delete(*keys)
        conn.close()
        pool.disconnect()


@contextlib.contextmanager
def sqlite_apps(name: str) -> Iterator[Apps]:
    tally = Tally()

    def make() -> VersionedHuey:
        app = VersionedSqliteHuey(name, filename=filename, fleet=False)
        app.storage.conn.set_trace_callback(tally.statement)
        return app

    with tempfile.TemporaryDirectory(prefix="vt_bench_") as directory:
        filename = os.path.join(directory, "queue.db")
        yield make, tally


@contextlib.contextmanager
def postgres_apps(name: str) -> Iterator[Apps]:
    # Tables of its own (table_prefix), dropped at the end.
    import psycopg

    tally = Tally()

    class Counting(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            tally.statement(str(query))
            return super().execute(query, *args, **kwargs)

    class Connection(psycopg.Connection[Any]):
        def commit(self) -> None:
            tally.statement("commit")
            super().commit()

        def rollback(self) -> None:
            tally.statement("rollback")
            super().rollback()

    made: list[VersionedHuey] = []

    def connect() -> Any:
        return Connection.connect(PG_DSN, cursor_factory=Counting)

    def make() -> VersionedHuey:
        app = VersionedPostgresHuey(
            name, connection=connect, blocking=False, table_prefix=name, fleet=False
        )
        made.append(app)
        return app

    try:
        yield make, tally
    finally:
        for app in made:
            app.storage.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for table in ("task", "schedule", "kv", "counter", "vt_dead_letters"):
                conn.execute(f"drop table if exists {name}_{table}")


APPS = {"redis": redis_apps, "sqlite": sqlite_apps, "postgres": postgres_apps}


def reachable(storage: str) -> str | None:
    """Why ``storage`` cannot be used here, or None."""
    try:
        if storage == "redis":
            import redis

            with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as conn:
                conn.ping()
        elif storage == "postgres":
            import psycopg

            with psycopg.connect(PG_DSN, connect_timeout=2) as conn:
                conn.execute("select 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# -- the messages ---------------------------------------------------------------------------


def today(make: MakeApp) -> tuple[VersionedHuey, Any]:
    """The worker's app and its one trivial versioned task."""
    app = make()

    @app.versioned_task(version=1, name="bench.noop")
    def noop(n: int) -> None:
        return None

    return app, noop


def good_messages(make: MakeApp, count: int) -> list[bytes]:
    app, noop = today(make)
    return [app.serialize_task(noop.s(i)) for i in range(count)]


def bad_messages(make: MakeApp, count: int) -> list[bytes]:
    """Half undecodable bytes, half envelopes of a task that today's app lacks."""
    old = make()

    @old.versioned_task(version=1, name="bench.dropped")
    def dropped(n: int) -> None: ...

    junk = [b"\x00junk " + uuid.uuid4().bytes for _ in range(count - count // 2)]
    unknown = [old.serialize_task(dropped.s(i)) for i in range(count // 2)]
    return [message for pair in zip(junk, unknown, strict=False) for message in pair] + junk[
        len(unknown) :
    ]


def fill(app: VersionedHuey, messages: list[bytes]) -> None:
    for raw in messages:
        app.storage.enqueue(raw)


# -- the drains ----------------------------------------------------------------------------


def drain(app: VersionedHuey) -> int:
    """Huey's worker loop: dequeue, execute, until the queue is empty; how many ran.

    Bad messages never come out of dequeue(): it dead-letters them on its way.
    """
    ran = 0
    while (task := app.dequeue()) is not None:
        app.execute(task)
        ran += 1
    return ran


def timed(func: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def profile_of(func: Callable[[], int], top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    func()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def per_message(tally: Tally, before: tuple[int, int], count: int) -> tuple[float, float]:
    trips, transactions = tally.snapshot()
    return (trips - before[0]) / count, (transactions - before[1]) / count


def measure(storage: str, count: int, *, profile: bool, top: int) -> dict[str, Any]:
    name = f"vt_bench_dl_{uuid.uuid4().hex[:10]}"
    with APPS[storage](name) as (make, tally):
        app, _ = today(make)
        app.check_schemas()
        len(app.dead_letters)  # opens the store (and creates its table) before timing
        fill(app, good_messages(make, count))
        before = tally.snapshot()
        good_seconds, ran = timed(lambda: drain(app))
        good_trips = per_message(tally, before, count)
        fill(app, bad_messages(make, count))
        before = tally.snapshot()
        bad_seconds, ran_bad = timed(lambda: drain(app))
        bad_trips = per_message(tally, before, count)
        dead = len(app.dead_letters)
        report = None
        if profile:
            app.dead_letters.purge()
            fill(app, bad_messages(make, count))
            report = profile_of(lambda: drain(app), top)
    if ran != count or ran_bad or dead != count:
        raise SystemExit(
            f"{storage}: ran {ran} of {count} good tasks, {ran_bad} bad ones ran, "
            f"{dead} of {count} dead-lettered"
        )
    return {
        "storage": storage,
        "messages": count,
        "good_us": good_seconds / count * 1e6,
        "bad_us": bad_seconds / count * 1e6,
        "ratio": bad_seconds / good_seconds,
        "good_trips": good_trips[0],
        "bad_trips": bad_trips[0],
        "good_transactions": good_trips[1] if storage != "redis" else None,
        "bad_transactions": bad_trips[1] if storage != "redis" else None,
        "profile": report,
    }


# -- command line ---------------------------------------------------------------------------


def quiet_consumer_logging() -> None:
    """Huey's consumer logging (INFO, its format), into os.devnull."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - for the run
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(levelname)s:%(name)s:%(threadName)s:%(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2_000, help="good and bad messages each")
    parser.add_argument(
        "--storage", action="append", choices=STORAGES, help="only these (repeatable)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile each bad drain")
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.messages < 2:
        parser.error("--messages must be at least 2")
    return args


def print_results(
    env: dict[str, Any], runs: list[dict[str, Any]], skipped: dict[str, str]
) -> None:
    print(
        f"Dead-letter benchmark: {env['messages']:,} good and {env['messages']:,} bad messages "
        f"per storage (Python {env['python']}, huey {env['huey']}, {env['machine']})"
    )
    header = (
        "storage",
        "good us/msg",
        "bad us/msg",
        "bad/good",
        "trips good/bad",
        "txns good/bad",
    )
    print("\n{:<10} {:>12} {:>12} {:>9} {:>15} {:>14}".format(*header))
    for run in runs:
        verdict = "" if run["ratio"] <= GOAL else f"  above the {GOAL}x goal"
        trips = f"{run['good_trips']:.2f}/{run['bad_trips']:.2f}"
        txns = (
            "-"
            if run["good_transactions"] is None
            else f"{run['good_transactions']:.2f}/{run['bad_transactions']:.2f}"
        )
        print(
            f"{run['storage']:<10} {run['good_us']:>12.1f} {run['bad_us']:>12.1f} "
            f"{run['ratio']:>8.2f}x {trips:>15} {txns:>14}{verdict}"
        )
    print(
        "(trips: round trips to Redis, statements on SQL; txns: SQL write transactions, a "
        "writing autocommit statement counting as one; per message, the final empty pop "
        "included)"
    )
    for storage, why in skipped.items():
        print(f"{storage:<10} skipped: {why}")
    for run in runs:
        if run["profile"]:
            print(f"\n-- {run['storage']}: bad drain, by own time --\n{run['profile']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_consumer_logging()
    wanted = args.storage or list(STORAGES)
    skipped = {s: why for s in wanted if (why := reachable(s)) is not None}
    runs = [
        measure(s, args.messages, profile=args.profile, top=args.top)
        for s in wanted
        if s not in skipped
    ]
    env = {
        "messages": args.messages,
        "python": platform.python_version(),
        "huey": dist_version("huey"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    if args.json:
        print(json.dumps({"environment": env, "results": runs, "skipped": skipped}, indent=2))
    else:
        print_results(env, runs, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
