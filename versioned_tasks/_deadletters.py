"""The dead-letter store: exact bytes of every message that could not run.

It lives in the same backend as the queue (a table in the SQLite or PostgreSQL
database, Redis keys under the queue's name, files beside a FileStorage's queue,
a dict on a MemoryStorage) and never in Huey's
result store, whose ``flush_results()`` would wipe it.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisStorage,
    SqliteStorage,
)

from .exceptions import ConfigurationError, DeadLetterNotFound, MessageRejected, ReplayFailed

__all__ = ["DeadLetter", "DeadLetterStore", "backend_for"]

_PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that could not run.

    Attributes:
        id: the entry's id in the store (not the Huey task id).
        reason: ``undecodable``, ``bad_signature``, ``unknown_task``,
            ``upcast_failed``, ``invalid_payload``, ``newer_version`` or ``retired``.
        task: the task name on the wire, or None where unknown.
        version: the schema version on the wire, or None where unknown.
        raw: the exact bytes that were dequeued.
        error: what went wrong, as text.
        created_at: when the entry was written (timezone-aware UTC).
    """

    id: str
    reason: str
    task: str | None
    version: int | None
    raw: bytes
    error: str
    created_at: datetime.datetime

    def __repr__(self) -> str:
        version = f" v{self.version}" if self.version is not None else ""
        return f"<DeadLetter id={self.id} reason={self.reason} task={self.task or '?'}{version}>"

    def _meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "task": self.task,
            "version": self.version,
            "error": self.error,
            "created_at": self.created_at.timestamp(),
        }


def _from_meta(meta: dict[str, Any], raw: bytes) -> DeadLetter:
    return DeadLetter(
        id=meta["id"],
        reason=meta["reason"],
        task=meta["task"],
        version=meta["version"],
        raw=bytes(raw),
        error=meta["error"],
        created_at=_utc(meta["created_at"]),
    )


def new_entry(
    reason: str, raw: bytes, error: str, task: str | None, version: int | None
) -> DeadLetter:
    """A new entry with a fresh id, created now."""
    return DeadLetter(
        id=uuid.uuid4().hex,
        reason=reason,
        task=task,
        version=version,
        raw=bytes(raw),
        error=error,
        created_at=datetime.datetime.now(datetime.UTC),
    )


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


class _Backend(Protocol):
    def add(self, entry: DeadLetter) -> None: ...
    def get(self, id: str) -> DeadLetter | None: ...
    def update(self, id: str, reason: str, error: str) -> bool: ...
    def delete(self, id: str) -> bool: ...
    def purge(self) -> int: ...
    def count(self) -> int: ...
    def page(self, offset: int, limit: int) -> list[DeadLetter]: ...


class DeadLetterStore:
    """The dead-letter store of one app: ``huey.dead_letters``.

    ``len()`` counts the entries, iteration yields them newest first. Every
    instance on the same storage and name shares the same entries.
    """

    def __init__(self, backend: _Backend, replay: Callable[[bytes], Any]) -> None:
        self._backend = backend
        self._replay = replay

    def __repr__(self) -> str:
        return f"<DeadLetterStore {type(self._backend).__name__} entries={len(self)}>"

    def __len__(self) -> int:
        return self._backend.count()

    def __iter__(self) -> Iterator[DeadLetter]:
        offset = 0
        while True:
            page = self._backend.page(offset, _PAGE)
            yield from page
            if len(page) < _PAGE:
                return
            offset += _PAGE

    def list(self, limit: int | None = None) -> list[DeadLetter]:
        """The newest ``limit`` entries (all of them when ``limit`` is None)."""
        if limit is None:
            return [*self]
        if limit <= 0:
            return []
        return self._backend.page(0, limit)

    def add(
        self,
        *,
        reason: str,
        raw: bytes,
        error: str,
        task: str | None = None,
        version: int | None = None,
        inflight: str | None = None,
    ) -> DeadLetter:
        """Store a message that cannot run; returns the new entry.

        ``inflight`` (Redis only) names the in-flight list the bytes were moved
        to when they were dequeued; they leave it in the same transaction as the
        entry is written.

        Raises:
            ConfigurationError: ``inflight`` on a store that is not on Redis.
        """
        entry = new_entry(reason, raw, error, task, version)
        if inflight is None:
            self._backend.add(entry)
        elif isinstance(self._backend, RedisBackend):
            self._backend.add(entry, inflight=inflight)
        else:
            raise ConfigurationError(
                f"inflight= needs a dead-letter store on Redis, not "
                f"{type(self._backend).__name__}."
            )
        return entry

    def get(self, id: str) -> DeadLetter:
        """The entry with this id.

        Raises:
            DeadLetterNotFound: there is none.
        """
        entry = self._backend.get(id)
        if entry is None:
            raise DeadLetterNotFound(id)
        return entry

    def replay(self, id: str) -> Any:
        """Run an entry through today's pipeline and enqueue it.

        Returns Huey's ``Result`` for the task (None when results are off, and
        for a retired task whose tombstone now has a handler: its bytes go back
        on the queue for the worker to hand to the handler). The entry is
        removed only after the enqueue succeeded.

        Raises:
            DeadLetterNotFound: there is no such entry.
            ReplayFailed: it still cannot run; the entry keeps its id and gets
                the new reason.
        """
        entry = self.get(id)
        try:
            result = self._replay(entry.raw)
        except MessageRejected as exc:
            self._backend.update(id, exc.reason, exc.error)
            raise ReplayFailed(
                id=id, reason=exc.reason, task=exc.task, version=exc.version, error=exc.error
            ) from None
        self._backend.delete(id)
        return result

    def delete(self, id: str) -> bool:
        """Remove an entry; returns whether it existed."""
        return self._backend.delete(id)

    def purge(self) -> int:
        """Remove every entry; returns how many there were."""
        return self._backend.purge()


# -- backends -----------------------------------------------------------------


class MemoryBackend:
    """Entries in a dict hung on the MemoryStorage itself."""

    def __init__(self, storage: MemoryStorage) -> None:
        # Attached to the storage under its own lock, so that two threads
        # opening the store at once share one dict.
        with storage._lock:
            state = storage.__dict__.setdefault("_vt_dead_letters", ({}, threading.Lock()))
        self._entries: dict[str, DeadLetter] = state[0]
        self._lock: threading.Lock = state[1]

    def add(self, entry: DeadLetter) -> None:
        with self._lock:
            self._entries[entry.id] = entry

    def get(self, id: str) -> DeadLetter | None:
        return self._entries.get(id)

    def update(self, id: str, reason: str, error: str) -> bool:
        with self._lock:
            entry = self._entries.get(id)
            if entry is None:
                return False
            self._entries[id] = replace(entry, reason=reason, error=error)
            return True

    def delete(self, id: str) -> bool:
        with self._lock:
            return self._entries.pop(id, None) is not None

    def purge(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def count(self) -> int:
        return len(self._entries)

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        with self._lock:
            newest_first = list(reversed(self._entries.values()))
        return newest_first[offset : offset + limit]


class _SqlBackend:
    """A dead-letter table beside a SQL storage's own tables, rows keyed by queue.

    Subclasses say how to create the table and how to run one statement;
    the statements themselves are shared, written with the driver's
    placeholder.
    """

    _COLUMNS = "id, reason, task, version, raw, error, created_at"

    def __init__(self, storage: Any, table: str, placeholder: str) -> None:
        self._storage = storage
        self._queue = storage.name
        self.table = table
        self._ready = False
        p = placeholder
        where = f"where queue = {p}"
        self._insert = (
            f"insert into {table} (id, queue, reason, task, version, raw, error, "
            f"created_at) values ({', '.join([p] * 8)})"
        )
        self._get = f"select {self._COLUMNS} from {table} {where} and id = {p}"
        self._update = f"update {table} set reason = {p}, error = {p} {where} and id = {p}"
        self._delete = f"delete from {table} {where} and id = {p}"
        self._purge = f"delete from {table} {where}"
        self._count = f"select count(*) from {table} {where}"
        self._page = (
            f"select {self._COLUMNS} from {table} {where} order by seq desc limit {p} offset {p}"
        )

    def ensure_table(self) -> None:
        raise NotImplementedError

    def _sql(self, query: str, params: tuple[Any, ...] = (), *, write: bool = False) -> Any:
        raise NotImplementedError

    @staticmethod
    def _row(row: tuple[Any, ...]) -> DeadLetter:
        id, reason, task, version, raw, error, created = row
        return DeadLetter(id, reason, task, version, bytes(raw), error, _utc(created))

    def _row_values(self, entry: DeadLetter) -> tuple[Any, ...]:
        return (
            entry.id,
            self._queue,
            entry.reason,
            entry.task,
            entry.version,
            entry.raw,
            entry.error,
            entry.created_at.timestamp(),
        )

    def add(self, entry: DeadLetter) -> None:
        self._sql(self._insert, self._row_values(entry), write=True)

    def insert(self, cursor: Any, raw: bytes, action: Any) -> DeadLetter:
        """Write an entry with the caller's cursor, inside the caller's transaction."""
        entry = new_entry(action.reason, raw, action.error, action.task, action.version)
        cursor.execute(self._insert, self._row_values(entry))
        return entry

    def get(self, id: str) -> DeadLetter | None:
        rows = self._sql(self._get, (self._queue, id))
        return self._row(rows[0]) if rows else None

    def update(self, id: str, reason: str, error: str) -> bool:
        return bool(self._sql(self._update, (reason, error, self._queue, id), write=True))

    def delete(self, id: str) -> bool:
        return bool(self._sql(self._delete, (self._queue, id), write=True))

    def purge(self) -> int:
        return int(self._sql(self._purge, (self._queue,), write=True))

    def count(self) -> int:
        return int(self._sql(self._count, (self._queue,))[0][0])

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        rows = self._sql(self._page, (self._queue, limit, offset))
        return [self._row(row) for row in rows]


class SqliteBackend(_SqlBackend):
    """A ``vt_dead_letters`` table in the queue's own SQLite database."""

    _DDL = (
        "create table if not exists vt_dead_letters ("
        "seq integer primary key autoincrement, id text not null unique, "
        "queue text not null, reason text not null, task text, version integer, "
        "raw blob not null, error text not null, created_at real not null)",
        "create index if not exists vt_dead_letters_queue_seq on vt_dead_letters (queue, seq)",
    )

    def __init__(self, storage: SqliteStorage) -> None:
        super().__init__(storage, "vt_dead_letters", "?")

    def ensure_table(self) -> None:
        """Create the table on first use (outside any other transaction)."""
        if not self._ready:
            with self._storage.db(commit=True) as cursor:
                for ddl in self._DDL:
                    cursor.execute(ddl)
            self._ready = True

    def _sql(self, query: str, params: tuple[Any, ...] = (), *, write: bool = False) -> Any:
        self.ensure_table()
        with self._storage.db(commit=write) as cursor:
            cursor.execute(query, params)
            return cursor.rowcount if write else cursor.fetchall()


class PostgresBackend(_SqlBackend):
    """A ``<prefix>_vt_dead_letters`` table beside a PostgresStorage's own tables.

    ``<prefix>`` is the storage's ``table_prefix`` (``huey`` by default), so
    the store follows the storage's tables; rows are keyed by queue name. Every
    statement goes through the storage's own connection and lock.
    """

    def __init__(self, storage: PostgresStorage) -> None:
        # Huey names its tables "<prefix>_kv", ...; the prefix is already
        # reduced to [A-Za-z0-9_], so it is safe to put in SQL.
        prefix = storage.table_kv[: -len("_kv")]
        super().__init__(storage, f"{prefix}_vt_dead_letters", "%s")
        self._ddl = (
            f"create table if not exists {self.table} ("
            "seq bigserial primary key, id text not null unique, "
            "queue text not null, reason text not null, task text, version integer, "
            "raw bytea not null, error text not null, created_at double precision not null)",
            f"create index if not exists {self.table}_queue_seq on {self.table} (queue, seq)",
        )

    def ensure_table(self) -> None:
        """Create the table on first use, unless it exists already.

        A table that exists is left alone, so that a database user without the
        right to create tables can use one created beforehand. Two processes
        creating it at once would race in PostgreSQL's catalog ("create table if
        not exists" is not atomic), so the creation holds a transaction-level
        advisory lock named after the table.
        """
        if self._ready:
            return
        with self._storage.db() as cursor:
            cursor.execute("select to_regclass(%s) is not null", (self.table,))
            exists = cursor.fetchone()[0]
        if not exists:
            with self._storage.db(commit=True) as cursor:
                cursor.execute("select pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                for ddl in self._ddl:
                    cursor.execute(ddl)
        self._ready = True

    def _sql(self, query: str, params: tuple[Any, ...] = (), *, write: bool = False) -> Any:
        # One statement each, on the storage's autocommit connection: atomic
        # on its own, with no begin/commit round trips.
        self.ensure_table()
        with self._storage.db() as cursor:
            cursor.execute(query, params)
            return cursor.rowcount if write else cursor.fetchall()


class RedisBackend:
    """Keys ``huey.deadletters.<name>`` (entries), ``.index`` (order), ``.seq``."""

    def __init__(self, storage: RedisStorage) -> None:
        self._conn = storage.conn
        base = f"huey.deadletters.{storage.name}"
        self._entries = base
        self._index = f"{base}.index"
        self._seq = f"{base}.seq"

    @staticmethod
    def _pack(entry: DeadLetter) -> bytes:
        return orjson.dumps(entry._meta()) + b"\n" + entry.raw

    @staticmethod
    def _unpack(data: bytes) -> DeadLetter:
        meta, _, raw = bytes(data).partition(b"\n")
        return _from_meta(orjson.loads(meta), raw)

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None:
        """Write the entry; with ``inflight``, also remove its bytes from that list."""
        seq = self._conn.incr(self._seq)
        pipe = self._conn.pipeline(transaction=True)
        pipe.hset(self._entries, entry.id, self._pack(entry))
        pipe.zadd(self._index, {entry.id: seq})
        if inflight is not None:
            pipe.lrem(inflight, 1, entry.raw)
        pipe.execute()

    def get(self, id: str) -> DeadLetter | None:
        data = self._conn.hget(self._entries, id)
        return self._unpack(data) if data is not None else None

    def update(self, id: str, reason: str, error: str) -> bool:
        entry = self.get(id)
        if entry is None:
            return False
        self._conn.hset(self._entries, id, self._pack(replace(entry, reason=reason, error=error)))
        return True

    def delete(self, id: str) -> bool:
        pipe = self._conn.pipeline(transaction=True)
        pipe.hdel(self._entries, id)
        pipe.zrem(self._index, id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge(self) -> int:
        pipe = self._conn.pipeline(transaction=True)
        pipe.hlen(self._entries)
        pipe.delete(self._entries, self._index)
        count, _ = pipe.execute()
        return int(count)

    def count(self) -> int:
        return int(self._conn.hlen(self._entries))

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        ids = self._conn.zrevrange(self._index, offset, offset + limit - 1)
        if not ids:
            return []
        rows = self._conn.hmget(self._entries, ids)
        return [self._unpack(row) for row in rows if row is not None]


class FileBackend:
    """One file per entry under ``<path>/deadletters/`` of a FileStorage.

    Names start with a zero-padded nanosecond stamp so that a directory
    listing sorts oldest first; every operation holds the storage's own lock.
    """

    def __init__(self, storage: FileStorage) -> None:
        self._lock = storage.lock
        self._dir = os.path.join(storage.path, "deadletters")

    def _files(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.startswith("."))

    def _find(self, id: str) -> str | None:
        suffix = f"-{id}"
        for name in self._files():
            if name.endswith(suffix):
                return os.path.join(self._dir, name)
        return None

    @staticmethod
    def _read(path: str) -> DeadLetter:
        with open(path, "rb") as f:
            meta, _, raw = f.read().partition(b"\n")
        return _from_meta(orjson.loads(meta), raw)

    @staticmethod
    def _write(path: str, entry: DeadLetter) -> None:
        partial = f"{path}.partial"
        with open(partial, "wb") as f:
            f.write(orjson.dumps(entry._meta()) + b"\n" + entry.raw)
        os.replace(partial, path)

    def add(self, entry: DeadLetter) -> None:
        with self._lock:
            os.makedirs(self._dir, exist_ok=True)
            name = f"{time.time_ns():020d}-{entry.id}"
            self._write(os.path.join(self._dir, name), entry)

    def get(self, id: str) -> DeadLetter | None:
        with self._lock:
            path = self._find(id)
            return self._read(path) if path is not None else None

    def update(self, id: str, reason: str, error: str) -> bool:
        with self._lock:
            path = self._find(id)
            if path is None:
                return False
            self._write(path, replace(self._read(path), reason=reason, error=error))
            return True

    def delete(self, id: str) -> bool:
        with self._lock:
            path = self._find(id)
            if path is None:
                return False
            os.remove(path)
            return True

    def purge(self) -> int:
        with self._lock:
            names = self._files()
            for name in names:
                os.remove(os.path.join(self._dir, name))
            return len(names)

    def count(self) -> int:
        with self._lock:
            return len(self._files())

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        with self._lock:
            names = self._files()[::-1][offset : offset + limit]
            return [self._read(os.path.join(self._dir, name)) for name in names]


def backend_for(storage: Any) -> _Backend:
    """The dead-letter backend that lives beside ``storage``.

    Raises:
        ConfigurationError: the storage has no dead-letter backend.
    """
    if isinstance(storage, MemoryStorage):
        return MemoryBackend(storage)
    if isinstance(storage, SqliteStorage):
        return SqliteBackend(storage)
    if isinstance(storage, PostgresStorage):
        return PostgresBackend(storage)
    if isinstance(storage, RedisStorage):
        return RedisBackend(storage)
    if isinstance(storage, FileStorage):
        return FileBackend(storage)
    raise ConfigurationError(
        f"{type(storage).__name__} has no dead-letter store yet; use MemoryStorage, "
        f"SqliteStorage, PostgresStorage, FileStorage or a Redis storage (RedisStorage, "
        f"PriorityRedisStorage and the expiring variants)."
    )
