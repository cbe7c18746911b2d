"""Shared fixtures: one parametrized app factory over Memory, SQLite, Redis,
PostgreSQL and files.

``make_huey(**options)`` builds a fresh :class:`VersionedHuey` on the current
backend. Every call within one test shares the same queue (same storage, same
name), so a test can play "old code" and "new code" against one queue:

    old = make_huey()
    new = make_huey()
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from huey.storage import MemoryStorage

from versioned_tasks import (
    VersionedFileHuey,
    VersionedHuey,
    VersionedPostgresHuey,
    VersionedRedisHuey,
    VersionedSqliteHuey,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

#: Property tests run ``examples(n)`` cases: n by default, n times VT_FUZZ when
#: that is set (``make fuzz`` runs them 50 times longer).
FUZZ = max(1, int(os.environ.get("VT_FUZZ", "1")))


def examples(n: int) -> int:
    """How many cases a property test runs: ``n``, scaled by ``VT_FUZZ``."""
    return n * FUZZ


BACKENDS = ("memory", "sqlite", "redis", "postgres", "file")

#: The tables Huey's PostgresStorage and the dead-letter store use (default prefix).
PG_TABLES = ("huey_task", "huey_schedule", "huey_kv", "huey_counter", "huey_vt_dead_letters")


MakeHuey = Callable[..., VersionedHuey]


def redis_available() -> bool:
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as conn:
            conn.ping()
    except Exception:
        return False
    return True


def require_redis() -> None:
    """Skip without Redis locally; fail under CI, where Redis must be running."""
    if redis_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"Redis is not reachable at {REDIS_URL} and CI is set.")
    pytest.skip(f"Redis is not reachable at {REDIS_URL}")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=2) as conn:
            conn.execute("select 1")
    except Exception:
        return False
    return True


def require_postgres() -> None:
    """Skip without PostgreSQL locally; fail under CI, where it must be running."""
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN} and CI is set.")
    pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}")


def _flush_postgres_name(name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in PG_TABLES:
            # The dead-letter table exists only once some test has used it.
            if conn.execute("select to_regclass(%s)", (table,)).fetchone() != (None,):
                conn.execute(
                    sql.SQL("delete from {} where queue = %s").format(sql.Identifier(table)),
                    (name,),
                )


def _flush_redis_name(name: str) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as conn:
        for key in conn.scan_iter(match=f"*{name}*"):
            conn.delete(key)


@pytest.fixture
def queue_name() -> str:
    """A queue name unique to this test (Redis keys derive from it)."""
    return f"vt_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the storage backend under test."""
    if request.param == "redis":
        require_redis()
    elif request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.fixture
def make_huey(backend: str, queue_name: str, tmp_path: Path) -> Iterator[MakeHuey]:
    """A factory of VersionedHuey apps that all share one queue on ``backend``."""
    shared_memory: list[MemoryStorage] = []
    made: list[VersionedHuey] = []

    def factory(**options: Any) -> VersionedHuey:
        huey = build(**options)
        made.append(huey)
        return huey

    def build(**options: Any) -> VersionedHuey:
        if backend == "memory":
            huey = VersionedHuey(queue_name, storage_class=MemoryStorage, **options)
            if not options.get("immediate"):
                if shared_memory:
                    huey.storage = shared_memory[0]
                else:
                    shared_memory.append(huey.storage)
            return huey
        if backend == "sqlite":
            return VersionedSqliteHuey(queue_name, filename=str(tmp_path / "queue.db"), **options)
        if backend == "file":
            return VersionedFileHuey(queue_name, path=str(tmp_path / "queue"), **options)
        if backend == "postgres":
            return VersionedPostgresHuey(queue_name, dsn=PG_DSN, blocking=False, **options)
        return VersionedRedisHuey(queue_name, url=REDIS_URL, blocking=False, **options)

    yield factory
    if backend == "redis":
        _flush_redis_name(queue_name)
    elif backend == "postgres":
        for huey in made:
            huey.storage.close()  # one connection per app: do not wait for the GC
        _flush_postgres_name(queue_name)
