"""Header scans for the census: each storage's queue, schedule and dead letters,
read in chunks without changing anything.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, Final, Literal, TypeAlias, TypeVar

import orjson
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisPriorityQueue,
    RedisStorage,
    SqliteStorage,
)

from ..exceptions import ConfigurationError
from .deadletters import (
    FileBackend,
    MemoryBackend,
    PostgresBackend,
    RedisBackend,
    SqliteBackend,
    backend_for,
)

__all__ = [
    "DEFAULT_CHUNK",
    "Chunk",
    "Identity",
    "Where",
    "dead_letter_chunks",
    "dead_letter_count",
    "message_chunks",
]

Where: TypeAlias = Literal["queue", "schedule", "dead_letters"]
#: A task name and version read from a header; None where it is not readable.
Identity: TypeAlias = tuple[str | None, int | None]

DEFAULT_CHUNK: Final = 1000
#: Bytes of each SQL row fetched at first; a longer header fetches the whole row.
_SQL_PREFIX: Final = 2048
#: File bytes read at first for a header.
_FILE_PREFIX: Final = 4096


# -- reading storage in chunks -----------------------------------------------------------

#: A chunk of stored messages with their due time (schedule only).
Chunk: TypeAlias = Sequence[tuple[bytes, float | None]]


_T = TypeVar("_T")


def _chunks_of(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _redis_list(conn: Any, key: str, size: int) -> Iterator[Chunk]:
    # From the head (where producers push): a push moves every item one step
    # further, so an item that stays is never skipped; pops at the tail only
    # end the list sooner.
    start = 0
    while True:
        items = conn.lrange(key, start, start + size - 1)
        if items:
            yield list(zip(items, repeat(None)))
        if len(items) < size:
            return
        start += size


def _redis_sorted(conn: Any, key: str, size: int, *, strip: int) -> Iterator[Chunk]:
    # From the highest score down: the scheduler and priority workers take the
    # lowest scores, which never moves the rank of what is left to read. The
    # schedule's scores are the due times; a priority queue's are priorities,
    # and each of its members starts with an 8-byte stamp (strip=8).
    start = 0
    while True:
        if strip:
            members = conn.zrevrange(key, start, start + size - 1)
            items = list(zip([member[strip:] for member in members], repeat(None)))
        else:
            items = conn.zrevrange(key, start, start + size - 1, withscores=True)
        if items:
            yield items
        if len(items) < size:
            return
        start += size


class _SqlPages:
    """Pages of (id, prefix, length[, timestamp]) rows of Huey's task and schedule tables."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        if isinstance(storage, PostgresStorage):
            p, self._substr = "%s", "substring(data from 1 for %s)"
            self._tables = {"queue": storage.table_task, "schedule": storage.table_schedule}
        else:
            p, self._substr = "?", "substr(data, 1, ?)"
            self._tables = {"queue": "task", "schedule": "schedule"}
        self._p = p

    def chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        table, p = self._tables[where], self._p
        stamp = ", timestamp" if where == "schedule" else ""
        page = (
            f"select id, {self._substr}, length(data){stamp} from {table} "
            f"where queue = {p} and id > {p} order by id limit {p}"
        )
        whole = f"select data from {table} where id = {p}"
        last = 0
        while True:
            rows = self.storage.sql(
                page, (_SQL_PREFIX, self.storage.name, last, size), results=True
            )
            chunk: list[tuple[bytes, float | None]] = []
            for row in rows:
                raw = bytes(row[1])
                if b"\n" not in raw and row[2] > len(raw) and raw[:1] == b"V":
                    found = self.storage.sql(whole, (row[0],), results=True)
                    if not found:
                        continue  # taken by a worker meanwhile
                    raw = bytes(found[0][0])
                chunk.append((raw, float(row[3]) if stamp else None))
            if chunk:
                yield chunk
            if len(rows) < size:
                return
            last = rows[-1][0]


def _file_prefix(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(_FILE_PREFIX)
            if b"\n" not in raw and len(raw) == _FILE_PREFIX:
                raw += f.read()
    except FileNotFoundError:
        return None  # taken by a worker meanwhile
    return raw


def _file_items(directory: str, *, stamped: bool) -> Iterator[tuple[bytes, float | None]]:
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if entry.name.endswith(".tmp") or entry.name.startswith("."):
                continue
            raw = _file_prefix(entry.path)
            if raw is None:
                continue
            # Huey names a scheduled file after its due time in hex milliseconds.
            due = int(entry.name[:12], 16) / 1000 if stamped else None
            yield raw, due


def _memory_items(storage: MemoryStorage, where: Where) -> list[tuple[bytes, float | None]]:
    # References only, taken under the storage's lock: the bytes are not copied.
    with storage._lock:
        if where == "queue":
            return [(data, None) for _, _, data in storage._queue]
        return [(data, _stamp(ts)) for ts, data in storage._schedule]


def _stamp(ts: datetime.datetime) -> float:
    # The number every other storage keeps: the naive datetime read as local time.
    return ts.timestamp()


def message_chunks(storage: Any, where: Where, size: int = DEFAULT_CHUNK) -> Iterator[Chunk]:
    """The queue's or the schedule's messages, in chunks of about ``size``."""
    if isinstance(storage, RedisStorage):
        if where == "schedule":
            return _redis_sorted(storage.conn, storage.schedule_key, size, strip=0)
        if isinstance(storage, RedisPriorityQueue):
            # A priority queue member starts with an 8-byte timestamp Huey adds.
            return _redis_sorted(storage.conn, storage.queue_key, size, strip=8)
        return _redis_list(storage.conn, storage.queue_key, size)
    if isinstance(storage, SqliteStorage | PostgresStorage):
        return _SqlPages(storage).chunks(where, size)
    if isinstance(storage, MemoryStorage):
        return _chunks_of(_memory_items(storage, where), size)
    if isinstance(storage, FileStorage):
        directory = storage.queue_path if where == "queue" else storage.schedule_path
        return _chunks_of(_file_items(directory, stamped=where == "schedule"), size)
    raise ConfigurationError(
        f"A census cannot read {type(storage).__name__}; it reads MemoryStorage, "
        f"SqliteStorage, PostgresStorage, FileStorage and the Redis storages."
    )


# -- dead letters: the store's own columns, never the bytes ------------------------------

_DeadChunk: TypeAlias = list[tuple[Identity, int]]


def _dead_meta(data: bytes) -> Identity:
    meta, _, _ = bytes(data).partition(b"\n")
    try:
        parsed = orjson.loads(meta)
    except orjson.JSONDecodeError:
        return None, None
    if type(parsed) is not dict:
        return None, None
    return _dead_identity(parsed.get("task"), parsed.get("version"))


def _dead_redis(backend: RedisBackend, size: int) -> Iterator[_DeadChunk]:
    # By sequence number (the index's unique scores), so that entries added or
    # replayed meanwhile never shift the ones left to read.
    conn, last = backend._conn, "-inf"
    while True:
        ids = conn.zrangebyscore(backend._index, last, "+inf", start=0, num=size, withscores=True)
        if ids:
            rows = conn.hmget(backend._entries, [member for member, _ in ids])
            yield [(_dead_meta(row), 1) for row in rows if row is not None]
        if len(ids) < size:
            return
        last = f"({ids[-1][1]!r}"


def _has_table(backend: SqliteBackend | PostgresBackend) -> bool:
    # A store never used has no table yet: the census does not create it.
    if isinstance(backend, PostgresBackend):
        query = "select to_regclass(%s) is not null"
    else:
        query = "select count(*) from sqlite_master where type = 'table' and name = ?"
    return bool(backend._storage.sql(query, (backend.table,), results=True)[0][0])


def _dead_sql(backend: SqliteBackend | PostgresBackend) -> Iterator[_DeadChunk]:
    # Counted by the database, from the store's own columns.
    if not _has_table(backend):
        return
    storage = backend._storage
    p = "%s" if isinstance(backend, PostgresBackend) else "?"
    rows = storage.sql(
        f"select task, version, count(*) from {backend.table} where queue = {p} "
        f"group by task, version",
        (storage.name,),
        results=True,
    )
    yield [(_dead_identity(task, version), int(count)) for task, version, count in rows]


def _dead_identity(task: Any, version: Any) -> Identity:
    # SQLite keeps whatever a column was given: a corrupt row counts as unknown.
    return (task if type(task) is str else None, version if type(version) is int else None)


def _dead_files(backend: FileBackend, size: int) -> Iterator[_DeadChunk]:
    def entries() -> Iterator[tuple[Identity, int]]:
        try:
            listing = os.scandir(backend._dir)
        except FileNotFoundError:
            return
        with listing:
            for entry in listing:
                if entry.name.startswith(".") or entry.name.endswith(".partial"):
                    continue
                try:
                    with open(entry.path, "rb") as f:
                        line = f.readline()
                except FileNotFoundError:
                    continue
                yield _dead_meta(line), 1

    yield from _chunks_of(entries(), size)


def dead_letter_chunks(storage: Any, size: int = DEFAULT_CHUNK) -> Iterator[_DeadChunk]:
    """(task, version) and a count for the dead-letter store beside ``storage``."""
    backend = backend_for(storage)
    if isinstance(backend, RedisBackend):
        return _dead_redis(backend, size)
    if isinstance(backend, SqliteBackend | PostgresBackend):
        return _dead_sql(backend)
    if isinstance(backend, FileBackend):
        return _dead_files(backend, size)
    assert isinstance(backend, MemoryBackend)
    with backend._lock:
        entries = list(backend._entries.values())
    return iter(
        [
            [
                (_dead_identity(getattr(e, "task", None), getattr(e, "version", None)), 1)
                for e in entries[i : i + size]
            ]
            for i in range(0, len(entries), size)
        ]
    )


def dead_letter_count(storage: Any) -> int:
    """How many entries the dead-letter store beside ``storage`` holds (0 if never used)."""
    backend = backend_for(storage)
    if isinstance(backend, SqliteBackend | PostgresBackend) and not _has_table(backend):
        return 0
    return backend.count()
