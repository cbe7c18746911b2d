"""The console with a million dead letters: how fast its pages answer, and memory.

Fills N dead letters (default 1,000,000) on Redis (a queue name of its own,
deleted afterwards), in a SQLite file and, with ``--postgres``, in PostgreSQL
(tables of a prefix of their own, dropped afterwards), in bulk through each
backend's own write statement (SQL: ``executemany`` of the store's insert;
Redis: the store's add script, pipelined), then serves the console with
uvicorn in a thread and times over HTTP:

- the dead-letter list, first page (with its counts by reason and task);
- a filtered page (one reason), and a filter on a rare task (the slowest kind
  on a store that filters by scanning: Redis stops after 50,000 entries);
- a deep page (offset 90% into the store);
- the census page (time to first byte, and until the last byte).

On Redis it also times the one-time rebuild of the store's counts (as for a
store written before the counts existed), step by step.

Prints each time (best of ``--rounds``) and the process's peak RSS after
filling and after the requests. Not part of ``make test``::

    python benchmarks/console.py [--n 1000000] [--rounds 3] [--only sqlite|redis|postgres]
                                 [--postgres]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import uvicorn

from versioned_tasks import (
    VersionedHuey,
    VersionedPostgresHuey,
    VersionedRedisHuey,
    VersionedSqliteHuey,
)
from versioned_tasks.storage.deadletters import DeadLetter, _pack
from versioned_tasks.web import create_app

REASONS = ["unknown_task", "invalid_payload", "upcast_failed", "newer_version", "retired"]
TASKS = [f"app{i % 7}.task_{i}" for i in range(20)]
BATCH = 20_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def entries(app: VersionedHuey, n: int) -> Iterator[DeadLetter]:
    """N entries like the worker writes: an envelope of ~250 bytes, a reason, an
    error; created over the last 30 days, oldest first. One task in 10,000 is rare."""

    @app.versioned_task(version=3, name="app0.task_0")
    def task_0(order_id: int, note: str = "") -> None: ...

    now = time.time()
    for i in range(n):
        task = "rare.task" if i % 10_000 == 0 else TASKS[i % len(TASKS)]
        version = 1 + i % 3
        header = orjson.dumps({"kind": "task", "task": task, "v": version, "id": uuid.uuid4().hex})
        body = orjson.dumps({"order_id": i, "note": "x" * 120})
        raw = b"VTE1" + header + b"\n" + body
        yield DeadLetter(
            id=uuid.uuid4().hex,
            reason=REASONS[i % len(REASONS)],  # type: ignore[arg-type]
            task=task,
            version=version,
            raw=raw,
            error=f"Task {task!r} version {version}: could not run (benchmark entry {i}).",
            created_at=_at(now - 30 * 86400 + i * (30 * 86400 / n)),
        )


def _at(ts: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def fill_sql(app: VersionedSqliteHuey | VersionedPostgresHuey, n: int) -> None:
    backend: Any = app.dead_letters._backend
    backend.ensure_table()
    batch: list[tuple[Any, ...]] = []
    for entry in entries(app, n):
        batch.append(backend._row_values(entry))
        if len(batch) >= BATCH:
            with app.storage.db(commit=True) as cursor:
                cursor.executemany(backend._insert, batch)
            batch.clear()
    if batch:
        with app.storage.db(commit=True) as cursor:
            cursor.executemany(backend._insert, batch)


def fill_redis(app: VersionedRedisHuey, n: int) -> None:
    backend: Any = app.dead_letters._backend
    keys = [backend._entries, backend._index, backend._seq, backend._counts, backend._state]
    conn = app.storage.conn
    sha = conn.script_load(backend._add.script)
    pipe = conn.pipeline(transaction=False)
    for count, entry in enumerate(entries(app, n), start=1):
        pipe.evalsha(sha, len(keys), *keys, entry.id, _pack(entry))
        if count % 5000 == 0:
            pipe.execute()
    pipe.execute()


def recount_redis(app: VersionedRedisHuey) -> None:
    """The one-time rebuild of the counts of a store written before they existed:
    the counts' keys are dropped, then rebuilt step by step as a first read does.
    Prints the total time, the longest single step (how long Redis is busy at
    once) and the memory the counts take in Redis."""
    backend: Any = app.dead_letters._backend
    conn = app.storage.conn
    conn.delete(backend._counts, backend._state)
    keys = backend._count_keys
    longest = 0.0
    started = time.perf_counter()
    restart = "1"
    while True:
        step = time.perf_counter()
        done, _ = backend._rebuild(keys=keys, args=[2000, restart])
        longest = max(longest, time.perf_counter() - step)
        restart = "0"
        if int(done):
            break
    total = time.perf_counter() - started
    groups = conn.hlen(backend._counts)
    size = conn.memory_usage(backend._counts) or 0
    print(
        f"  rebuild of the counts (a store written before them): {total:.1f} s, "
        f"longest step {longest * 1000:.1f} ms; {groups} groups, {size / 1024:.1f} KiB in Redis"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, app: VersionedHuey) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(app), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def timed(client: httpx.Client, url: str) -> tuple[float, float, int]:
    """Seconds to the first byte and to the last, and the status."""
    start = time.perf_counter()
    with client.stream("GET", url) as response:
        first = None
        for _ in response.iter_bytes():
            if first is None:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        return first or total, total, response.status_code


PAGES = [
    ("list, first page", "/dead-letters"),
    ("list, filtered (reason=retired)", "/dead-letters?reason=retired"),
    ("list, filtered (rare task)", "/dead-letters?task=rare.task"),
    ("list, deep page (offset 90%)", "/dead-letters?offset={deep}"),
    ("entry page", "/dead-letters/{entry}"),
    ("census", "/census"),
]


def measure(label: str, app: VersionedHuey, n: int, rounds: int) -> None:
    started = time.perf_counter()
    if isinstance(app, VersionedSqliteHuey | VersionedPostgresHuey):
        fill_sql(app, n)
        if isinstance(app, VersionedPostgresHuey):
            app.storage.sql(f"analyze {app.dead_letters._backend.table}", commit=True)
    else:
        fill_redis(app, n)  # type: ignore[arg-type]
    fill = time.perf_counter() - started
    assert len(app.dead_letters) == n, len(app.dead_letters)
    print(f"\n{label}: filled {n:,} dead letters in {fill:.1f} s; peak RSS {peak_rss_mb():.0f} MB")
    if isinstance(app, VersionedRedisHuey):
        recount_redis(app)
    entry = app.dead_letters.page(limit=1, offset=n // 2).entries[0].id
    with Served(app) as base, httpx.Client(base_url=base, timeout=600) as client:
        for name, path in PAGES:
            url = path.format(deep=int(n * 0.9), entry=entry)
            best: tuple[float, float, int] | None = None
            for _ in range(rounds):
                result = timed(client, url)
                if best is None or result[1] < best[1]:
                    best = result
            assert best is not None
            first, total, status = best
            print(
                f"  {name:<34} {status}  first byte {first * 1000:8.1f} ms  "
                f"complete {total * 1000:8.1f} ms"
            )
    print(f"  peak RSS after the requests: {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["sqlite", "redis", "postgres"])
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also PostgreSQL (tables of a prefix of their own, dropped afterwards)",
    )
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    print(f"Console benchmark: {args.n:,} dead letters, best of {args.rounds}.")
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            app = VersionedSqliteHuey("bench_console", filename=os.path.join(tmp, "q.db"))
            measure("SQLite file", app, args.n, args.rounds)
    if args.only == "postgres" or (args.only is None and args.postgres):
        prefix = f"vt_bench_{uuid.uuid4().hex[:8]}"
        app = VersionedPostgresHuey(
            "bench_console", dsn=args.pg_dsn, table_prefix=prefix, blocking=False
        )
        try:
            measure(f"PostgreSQL (tables {prefix}_*)", app, args.n, args.rounds)
        finally:
            for table in ("vt_dead_letters", "kv", "schedule", "task", "counter"):
                app.storage.sql(f"drop table if exists {prefix}_{table}", commit=True)
            app.storage.close()
    if args.only in (None, "redis"):
        name = f"vt_bench_console_{uuid.uuid4().hex[:8]}"
        app = VersionedRedisHuey(name, url=args.redis_url, fleet=False, reliable=False)
        try:
            measure(f"Redis (queue {name})", app, args.n, args.rounds)
        finally:
            conn = app.storage.conn
            for key in conn.scan_iter(match=f"*{name}*"):
                conn.delete(key)


if __name__ == "__main__":
    main()
