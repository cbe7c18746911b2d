"""Shared fixtures: one parametrized app factory over Memory, SQLite, Redis,
PostgreSQL and files.

``make_huey(**options)`` builds a fresh :class:`VersionedHuey` on the current
backend. Every call within one test shares the same queue (same storage, same
name), so a test can play "old code" and "new code" against one queue:

    old = make_huey()
    new = make_huey()
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    BACKENDS,
    PG_DSN,
    REDIS_URL,
    MakeHuey,
    flush_postgres_name,
    flush_redis_name,
    require_postgres,
    require_redis,
)
from huey.storage import MemoryStorage

from versioned_tasks import (
    VersionedFileHuey,
    VersionedHuey,
    VersionedPostgresHuey,
    VersionedRedisHuey,
    VersionedSqliteHuey,
)


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
        flush_redis_name(queue_name)
    elif backend == "postgres":
        for huey in made:
            huey.storage.close()  # one connection per app: do not wait for the GC
        flush_postgres_name(queue_name)
