"""One adapter per Huey storage: everything the library does that depends on where
messages are kept, chosen once by :func:`adapter_for`.

Each adapter owns, for its backend: the dead-letter store beside it, the fleet
board, the census's header scan of the queue and the schedule, the in-place
rewrite for migrate-queue, the atomic pops (SQLite, PostgreSQL) and whether
reliable fetch (Redis lists) can run. This module is the one place that tells
Huey's storage classes apart; the app, the census, the fleet and migrate-queue
ask the adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisPriorityQueue,
    RedisStorage,
    SqliteStorage,
)

from ..exceptions import ConfigurationError
from . import scan
from .atomic import AtomicPostgres, AtomicSql, AtomicSqlite
from .deadletters import (
    DeadLetterBackend,
    FileBackend,
    MemoryBackend,
    PostgresBackend,
    RedisBackend,
    SqliteBackend,
)
from .fleet_board import Board, FileBoard, MemoryBoard, RedisBoard, SqlBoard
from .reliable import RELIABLE_DEFAULT
from .rewrite import (
    Area,
    _Directory,
    _MemoryQueue,
    _MemorySchedule,
    _RedisList,
    _RedisSortedSet,
    _SqliteTable,
    _SqlTable,
)
from .scan import Chunk, Where

__all__ = ["StorageAdapter", "adapter_for", "fleet_enabled", "reliable_enabled"]


class StorageAdapter(Protocol):
    """What the library needs from one Huey storage (see the module docstring)."""

    storage: Any

    def dead_letters(self) -> DeadLetterBackend:
        """The dead-letter store beside the storage.

        Raises:
            ConfigurationError: the storage has no dead-letter store.
        """
        ...

    def fleet_board(self) -> Board | None:
        """Where consumers publish heartbeats, or None where they cannot."""
        ...

    def fleet_by_default(self) -> bool:
        """Whether consumers publish heartbeats when ``fleet`` is not given."""
        ...

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        """The queue's or the schedule's stored messages, in chunks of about ``size``.

        Raises:
            ConfigurationError: the storage cannot be read this way.
        """
        ...

    def rewrite_areas(self) -> tuple[Area, Area]:
        """The queue and the schedule, rewritable one message at a time.

        Raises:
            ConfigurationError: the storage cannot rewrite messages in place.
        """
        ...

    def atomic_pops(self, dead_letters: DeadLetterBackend) -> AtomicSql | None:
        """Pops settled with their dead-letter writes in one transaction, or None."""
        ...

    def reliable_refusal(self) -> str | None:
        """Why reliable fetch cannot run here (a sentence), or None where it can."""
        ...


class _Adapter:
    """Defaults: no fleet board, no atomic pops, no reliable fetch."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def fleet_board(self) -> Board | None:
        return None

    def fleet_by_default(self) -> bool:
        return False

    def atomic_pops(self, dead_letters: DeadLetterBackend) -> AtomicSql | None:
        return None

    def reliable_refusal(self) -> str | None:
        return _no_acknowledgement(self.storage)


def _no_acknowledgement(storage: Any) -> str:
    return _refusal(
        storage, "Huey has no acknowledgement there: a task running when its worker dies is lost"
    )


def _refusal(storage: Any, why: str) -> str:
    return (
        f"reliable=True is not supported on {type(storage).__name__}: {why}. Reliable fetch "
        f"works on RedisStorage and RedisExpireStorage; use one of them, or drop reliable=True."
    )


class MemoryAdapter(_Adapter):
    """Huey's in-process MemoryStorage."""

    storage: MemoryStorage

    def dead_letters(self) -> DeadLetterBackend:
        return MemoryBackend(self.storage)

    def fleet_board(self) -> Board | None:
        return MemoryBoard(self.storage)

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        return scan.memory_chunks(self.storage, where, size)

    def rewrite_areas(self) -> tuple[Area, Area]:
        return _MemoryQueue(self.storage), _MemorySchedule(self.storage)


class SqliteAdapter(_Adapter):
    """Huey's SqliteStorage: dead letters in a table of the same database file."""

    storage: SqliteStorage

    def dead_letters(self) -> SqliteBackend:
        return SqliteBackend(self.storage)

    def fleet_board(self) -> Board | None:
        return SqlBoard(self.storage, "kv", "?")

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        tables: dict[Where, str] = {"queue": "task", "schedule": "schedule"}
        return scan.SqlPages(self.storage, tables, "?", "substr(data, 1, ?)").chunks(where, size)

    def rewrite_areas(self) -> tuple[Area, Area]:
        backend = self.dead_letters()
        return (
            _SqliteTable(self.storage, "task", "queue", backend),
            _SqliteTable(self.storage, "schedule", "schedule", backend),
        )

    def atomic_pops(self, dead_letters: DeadLetterBackend) -> AtomicSql | None:
        assert isinstance(dead_letters, SqliteBackend)
        return AtomicSqlite(self.storage, dead_letters)

    def reliable_refusal(self) -> str | None:
        return _refusal(
            self.storage,
            "there a bad message's pop and its dead-letter write already share one "
            "transaction, but a task running when its worker dies is lost, as with plain Huey",
        )


class PostgresAdapter(_Adapter):
    """Huey's PostgresStorage: dead letters in a table beside its own."""

    storage: PostgresStorage

    def dead_letters(self) -> PostgresBackend:
        return PostgresBackend(self.storage)

    def fleet_board(self) -> Board | None:
        return SqlBoard(self.storage, self.storage.table_kv, "%s")

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        tables: dict[Where, str] = {
            "queue": self.storage.table_task,
            "schedule": self.storage.table_schedule,
        }
        pages = scan.SqlPages(self.storage, tables, "%s", "substring(data from 1 for %s)")
        return pages.chunks(where, size)

    def rewrite_areas(self) -> tuple[Area, Area]:
        return (
            _SqlTable(self.storage, self.storage.table_task, "queue", "%s"),
            _SqlTable(self.storage, self.storage.table_schedule, "schedule", "%s"),
        )

    def atomic_pops(self, dead_letters: DeadLetterBackend) -> AtomicSql | None:
        assert isinstance(dead_letters, PostgresBackend)
        return AtomicPostgres(self.storage, dead_letters)


class RedisAdapter(_Adapter):
    """Huey's Redis storages: a list queue, or a sorted set with priorities; either
    with expiring results."""

    storage: RedisStorage

    def __init__(self, storage: RedisStorage) -> None:
        super().__init__(storage)
        #: A sorted-set queue whose members start with an 8-byte stamp Huey adds.
        self.priority = isinstance(storage, RedisPriorityQueue)

    def dead_letters(self) -> DeadLetterBackend:
        return RedisBackend(self.storage, sorted_queue=self.priority)

    def fleet_board(self) -> Board | None:
        return RedisBoard(self.storage)

    def fleet_by_default(self) -> bool:
        return True

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        conn = self.storage.conn
        if where == "schedule":
            return scan.redis_sorted_chunks(conn, self.storage.schedule_key, size, strip=0)
        if self.priority:
            return scan.redis_sorted_chunks(conn, self.storage.queue_key, size, strip=8)
        return scan.redis_list_chunks(conn, self.storage.queue_key, size)

    def rewrite_areas(self) -> tuple[Area, Area]:
        storage = self.storage
        queue: Area = (
            _RedisSortedSet(storage, storage.queue_key, "queue", prefix=8)
            if self.priority
            else _RedisList(storage)
        )
        return queue, _RedisSortedSet(storage, storage.schedule_key, "schedule", prefix=0)

    def reliable_refusal(self) -> str | None:
        if self.priority:
            return _refusal(
                self.storage,
                "its queue is a sorted set popped with BZPOPMIN, which cannot move a message "
                "into an in-flight list atomically",
            )
        return None


class FileAdapter(_Adapter):
    """Huey's FileStorage: one file per message, dead letters in a directory beside."""

    storage: FileStorage

    def dead_letters(self) -> DeadLetterBackend:
        return FileBackend(self.storage)

    def fleet_board(self) -> Board | None:
        return FileBoard(self.storage)

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        storage = self.storage
        directory = storage.queue_path if where == "queue" else storage.schedule_path
        return scan.file_chunks(directory, size, stamped=where == "schedule")

    def rewrite_areas(self) -> tuple[Area, Area]:
        return (
            _Directory(self.storage, self.storage.queue_path, "queue"),
            _Directory(self.storage, self.storage.schedule_path, "schedule"),
        )


class UnknownAdapter(_Adapter):
    """A storage the library does not know: each feature refuses it, saying which it knows."""

    def dead_letters(self) -> DeadLetterBackend:
        raise ConfigurationError(
            f"{type(self.storage).__name__} has no dead-letter store yet; use MemoryStorage, "
            f"SqliteStorage, PostgresStorage, FileStorage or a Redis storage (RedisStorage, "
            f"PriorityRedisStorage and the expiring variants)."
        )

    def message_chunks(self, where: Where, size: int) -> Iterator[Chunk]:
        raise ConfigurationError(
            f"A census cannot read {type(self.storage).__name__}; it reads MemoryStorage, "
            f"SqliteStorage, PostgresStorage, FileStorage and the Redis storages."
        )

    def rewrite_areas(self) -> tuple[Area, Area]:
        raise ConfigurationError(
            f"migrate-queue cannot rewrite a {type(self.storage).__name__} in place; it knows "
            f"SqliteStorage, PostgresStorage, the Redis storages, FileStorage and MemoryStorage."
        )


def adapter_for(storage: Any) -> StorageAdapter:
    """The adapter of a Huey storage (subclasses of Huey's storages included)."""
    if isinstance(storage, RedisStorage):
        return RedisAdapter(storage)
    if isinstance(storage, SqliteStorage):
        return SqliteAdapter(storage)
    if isinstance(storage, PostgresStorage):
        return PostgresAdapter(storage)
    if isinstance(storage, MemoryStorage):
        return MemoryAdapter(storage)
    if isinstance(storage, FileStorage):
        return FileAdapter(storage)
    return UnknownAdapter(storage)


def fleet_enabled(option: bool | None, adapter: StorageAdapter) -> bool:
    """Whether consumers publish heartbeats: ``option``, or the storage's default.

    Raises:
        ConfigurationError: ``fleet=True`` on a storage with nowhere to publish.
    """
    if option is None:
        return adapter.fleet_by_default()
    if option and adapter.fleet_board() is None:
        raise ConfigurationError(
            f"fleet=True is not supported on {type(adapter.storage).__name__}: consumers "
            f"publish heartbeats on Redis, SQLite, PostgreSQL, FileStorage and MemoryStorage; "
            f"drop fleet=True."
        )
    return bool(option)


def reliable_enabled(option: bool | None, adapter: StorageAdapter, *, heartbeats: bool) -> bool:
    """Whether the app's workers use reliable fetch: ``option``, or the default on
    RedisStorage and RedisExpireStorage when None.

    Raises:
        ConfigurationError: ``reliable=True`` on a storage without it, or with
            the consumer heartbeat (``fleet``) turned off.
    """
    refusal = adapter.reliable_refusal()
    if option is None:
        return RELIABLE_DEFAULT and refusal is None and heartbeats
    if not option:
        return False
    if refusal is not None:
        raise ConfigurationError(refusal)
    if not heartbeats:
        raise ConfigurationError(
            "reliable=True needs the consumer heartbeat, which tells a dead consumer's "
            "in-flight messages from a live one's; drop fleet=False."
        )
    return True
