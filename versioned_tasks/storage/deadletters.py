"""The dead-letter store: exact bytes of every message that could not run.

It lives in the same backend as the queue (a table in the SQLite or PostgreSQL
database, Redis keys under the queue's name, files beside a FileStorage's queue,
a dict on a MemoryStorage) and never in Huey's
result store, whose ``flush_results()`` would wipe it.

A replay removes the entry and puts its message on the queue in one step of
the backend (a Lua script on Redis, a transaction on SQL, the storage's lock
on files and memory), so that a replay retried after a lost reply or a failed
commit never enqueues the message twice, and never loses it.
"""

from __future__ import annotations

import bisect
import datetime
import math
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import orjson
from huey.storage import FileStorage, MemoryStorage, PostgresStorage, RedisStorage, SqliteStorage

from ..exceptions import DeadLetterNotFound, MessageRejected, ReplayFailed
from ..messages.readwrite import REASONS
from ..messages.reasons import Reason
from .dlq_query import (
    DEFAULT_SCAN_LIMIT,
    SCAN_CHUNK,
    DeadLetterCounts,
    DeadLetterFilter,
    DeadLetterPage,
    Meta,
    meta_of,
    scan_count,
    scan_select,
    scan_tally,
)
from .scan import DeadChunk, Identity, chunks_of

__all__ = [
    "DeadLetter",
    "DeadLetterBackend",
    "DeadLetterCounts",
    "DeadLetterFilter",
    "DeadLetterPage",
    "DeadLetterStore",
    "FileBackend",
    "MemoryBackend",
    "PostgresBackend",
    "RedisBackend",
    "Requeue",
    "SqliteBackend",
]

_PAGE = 500

#: The format of the counts a Redis store keeps beside its entries (``.counts.state``).
COUNTS_FORMAT = "1"

#: ``created_at`` of a corrupt entry whose stored time cannot be read.
_EPOCH = datetime.datetime.fromtimestamp(0, tz=datetime.UTC)


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
        corrupt: True when the store holds the entry but cannot read what it
            stored about it (metadata that is not JSON, of the wrong shape, a
            column of the wrong type). Such an entry is still listed, under its
            id, with reason ``undecodable``, task and version None, an error
            saying the stored entry is corrupt and what to do, ``created_at``
            as stored where readable (else the Unix epoch), and ``raw`` holding
            every byte stored for it: on Redis and files that is the metadata
            line, the newline and the message; on SQL the ``raw`` column. It
            can be shown and deleted; replaying it raises ``ReplayFailed``.
    """

    id: str
    reason: Reason
    task: str | None
    version: int | None
    raw: bytes
    error: str
    created_at: datetime.datetime
    corrupt: bool = False

    def __repr__(self) -> str:
        version = f" v{self.version}" if self.version is not None else ""
        corrupt = " corrupt" if self.corrupt else ""
        return (
            f"<DeadLetter id={self.id} reason={self.reason} "
            f"task={self.task or '?'}{version}{corrupt}>"
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "task": self.task,
            "version": self.version,
            "error": self.error,
            "created_at": self.created_at.timestamp(),
        }


@dataclass(frozen=True, slots=True)
class Requeue:
    """What a replay puts back on the queue, and what follows once it is there.

    Attributes:
        data: the bytes to enqueue; None where nothing is queued (immediate
            mode, where Huey runs the task instead).
        priority: the message's priority, for storages that have priorities.
        then: called once the entry is gone and ``data`` queued; its return
            value is what ``replay()`` returns.
    """

    data: bytes | None
    priority: Any
    then: Callable[[], Any]


class _Corrupt(Exception):
    """A stored entry whose fields cannot be read (the text says which)."""


def _checked(
    id: str,
    reason: Any,
    task: Any,
    version: Any,
    raw: Any,
    error: Any,
    created: Any,
) -> DeadLetter:
    """An entry from its stored fields.

    Raises:
        _Corrupt: naming the first field that is not what the store writes.
    """
    if type(reason) is not str or reason not in REASONS:
        raise _Corrupt(f"its reason {reason!r} is not one of the dead-letter reasons")
    if task is not None and type(task) is not str:
        raise _Corrupt(f"its task {task!r} is not a string")
    if version is not None and type(version) is not int:
        raise _Corrupt(f"its version {version!r} is not an integer")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _Corrupt(f"its raw bytes are a {type(raw).__name__}, not bytes")
    if type(error) is not str:
        raise _Corrupt(f"its error {error!r} is not text")
    return DeadLetter(id, reason, task, version, bytes(raw), error, _created(created))


def _created(value: Any) -> datetime.datetime:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Corrupt(f"its created_at {value!r} is not a Unix time")
    try:
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise _Corrupt(f"its created_at {value!r} is out of range") from None


def _corrupt(
    id: str, stored: bytes, problem: str, created_at: datetime.datetime | None = None
) -> DeadLetter:
    """How an entry that cannot be read is listed (see ``DeadLetter.corrupt``)."""
    return DeadLetter(
        id=id,
        reason="undecodable",
        task=None,
        version=None,
        raw=stored,
        error=(
            f"The stored dead-letter entry is corrupt: {problem}. Its raw holds every "
            f"byte stored for it; recover the message from raw by hand "
            f"(`versioned-tasks dlq show {id} --json` prints it as base64), enqueue it "
            f"yourself if it should run, then delete the entry."
        ),
        created_at=created_at or _EPOCH,
        corrupt=True,
    )


def _stored_bytes(value: Any) -> bytes:
    """A column's value as the bytes it holds, whatever its type."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if value is None:
        return b""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogatepass")


def _from_packed(id: str, data: bytes, created_at: datetime.datetime | None = None) -> DeadLetter:
    """An entry stored as one JSON metadata line, a newline, then the raw bytes.

    The id is the one it is stored under (hash field, file name), so that a
    corrupt entry can still be fetched and deleted.
    """
    meta_line, newline, raw = data.partition(b"\n")
    if not newline:
        return _corrupt(id, data, "it has no metadata line", created_at)
    try:
        meta = orjson.loads(meta_line)
    except orjson.JSONDecodeError as exc:
        return _corrupt(id, data, f"its metadata is not JSON ({exc})", created_at)
    if type(meta) is not dict:
        return _corrupt(id, data, "its metadata is not a JSON object", created_at)
    try:
        return _checked(
            id,
            meta.get("reason"),
            meta.get("task"),
            meta.get("version"),
            raw,
            meta.get("error"),
            meta.get("created_at"),
        )
    except _Corrupt as exc:
        return _corrupt(id, data, str(exc), created_at)


def _pack(entry: DeadLetter) -> bytes:
    # orjson never writes a raw newline, so the first one ends the metadata.
    return orjson.dumps(entry._meta()) + b"\n" + entry.raw


def new_entry(
    reason: Reason, raw: bytes, error: str, task: str | None, version: int | None
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


class DeadLetterBackend(Protocol):
    """Where one storage keeps its dead letters (see ``storage/adapters.py``)."""

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None: ...
    def get(self, id: str) -> DeadLetter | None: ...
    def update(self, id: str, reason: Reason, error: str) -> bool: ...
    def take(self, id: str, data: bytes | None, priority: Any) -> bool: ...
    def delete(self, id: str) -> bool: ...
    def purge(self) -> int: ...
    def count(self) -> int: ...
    def page(self, offset: int, limit: int) -> list[DeadLetter]: ...
    def identity_chunks(self, size: int) -> Iterator[DeadChunk]:
        """(task, version) and a count per entry group, from the store's own columns."""
        ...

    def census_count(self) -> int:
        """How many entries there are, without creating the store if never used."""
        ...

    def select(
        self,
        flt: DeadLetterFilter,
        *,
        cursor: str | None,
        offset: int,
        limit: int,
        scan_limit: int,
    ) -> DeadLetterPage:
        """A page of the entries ``flt`` selects, newest first."""
        ...

    def tally(self, scan_limit: int | None) -> DeadLetterCounts:
        """Counts by reason and by task and version."""
        ...

    def count_where(self, flt: DeadLetterFilter) -> int:
        """How many entries ``flt`` selects."""
        ...

    def delete_where(self, flt: DeadLetterFilter) -> int:
        """Remove the entries ``flt`` selects; returns how many."""
        ...


class DeadLetterStore:
    """The dead-letter store of one app: ``huey.dead_letters``.

    ``len()`` counts the entries, iteration yields them newest first. Every
    instance on the same storage and name shares the same entries.
    """

    def __init__(self, backend: DeadLetterBackend, replay: Callable[[bytes], Requeue]) -> None:
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
        reason: Reason,
        raw: bytes,
        error: str,
        task: str | None = None,
        version: int | None = None,
        inflight: str | None = None,
    ) -> DeadLetter:
        """Store a message that cannot run; returns the new entry.

        ``inflight`` is internal: on Redis, the key of a list holding the
        message while it is being handled, from which the same script removes
        one copy of ``raw``. Other backends ignore it.
        """
        entry = new_entry(reason, raw, error, task, version)
        self._backend.add(entry, inflight=inflight)
        return entry

    @property
    def pops_with_writes(self) -> bool:
        """Internal: whether :meth:`add_then_pop` works here (a plain Redis list queue)."""
        return isinstance(self._backend, RedisBackend) and self._backend.pops_lists

    def add_then_pop(
        self,
        *,
        reason: Reason,
        raw: bytes,
        error: str,
        task: str | None = None,
        version: int | None = None,
        inflight: str | None = None,
    ) -> tuple[DeadLetter, bytes | None, Exception | None]:
        """Internal: :meth:`add` and pop the queue's next message in one round trip.

        Returns the entry, the popped bytes (None for an empty queue) and the
        write's error (None once written). Only where :attr:`pops_with_writes`.
        """
        assert isinstance(self._backend, RedisBackend)
        entry = new_entry(reason, raw, error, task, version)
        popped, failed = self._backend.add_then_pop(entry, inflight=inflight)
        return entry, popped, failed

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
        on the queue for the worker to hand to the handler). Removing the entry
        and enqueueing its message are one step of the backend: when that step
        fails, neither happened; when it went through but its reply was lost,
        replaying again enqueues nothing and raises ``DeadLetterNotFound``.

        Raises:
            DeadLetterNotFound: there is no such entry (any more).
            ReplayFailed: it still cannot run, or the stored entry is corrupt;
                the entry keeps its id and gets the new reason.
        """
        entry = self.get(id)
        if entry.corrupt:
            raise ReplayFailed(
                id=id, reason=entry.reason, task=None, version=None, error=entry.error
            )
        try:
            requeue = self._replay(entry.raw)
        except MessageRejected as exc:
            # MessageRejected (exceptions.py, below this layer) keeps the reason as text;
            # it is always one of REASONS, set by the reader.
            self._backend.update(id, cast("Reason", exc.reason), exc.error)
            raise ReplayFailed(
                id=id, reason=exc.reason, task=exc.task, version=exc.version, error=exc.error
            ) from None
        if not self._backend.take(id, requeue.data, requeue.priority):
            raise DeadLetterNotFound(id)
        return requeue.then()

    def delete(self, id: str) -> bool:
        """Remove an entry; returns whether it existed."""
        return self._backend.delete(id)

    def purge(self) -> int:
        """Remove every entry; returns how many there were."""
        return self._backend.purge()

    # -- pages, counts and filters (the console, ``dlq list``/``purge`` filters) ----

    def page(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        offset: int = 0,
        reason: str | None = None,
        task: str | None = None,
        version: int | None = None,
        before: datetime.datetime | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> DeadLetterPage:
        """One page of entries, newest first, never reading the whole store.

        Args:
            limit: entries per page.
            cursor: the ``next_cursor`` of the previous page (None: from the newest).
            offset: entries (matching ones, with a filter) to skip first.
            reason: only entries with this reason.
            task: only entries with this task name on the wire.
            version: only entries with this schema version.
            before: only entries created before this time.
            scan_limit: on backends that filter by scanning (memory, files,
                Redis), the most entries whose metadata are read for this page;
                the page says whether it stopped there. SQL backends filter in
                the database and ignore it.
        """
        flt = DeadLetterFilter(reason, task, version, before)
        return self._backend.select(
            flt, cursor=cursor, offset=max(offset, 0), limit=max(limit, 1), scan_limit=scan_limit
        )

    def counts(self, *, scan_limit: int | None = DEFAULT_SCAN_LIMIT) -> DeadLetterCounts:
        """How many entries there are by reason and by task and version.

        SQL backends count in the database (``group by`` on an index). Redis
        reads the counts it keeps beside the entries, updated by the same
        script as each write (as many values as groups, whatever the number
        of entries); both are exact and ignore ``scan_limit``. Memory and
        files read each entry's metadata, newest first, up to ``scan_limit``
        entries (None: all); ``exhaustive`` says whether the counts cover the
        whole store.

        On a Redis store written by a release that did not keep counts, the
        first call rebuilds them from the entries, once (see :meth:`recount`).
        """
        return self._backend.tally(scan_limit)

    @property
    def keeps_counts(self) -> bool:
        """Whether the store keeps counts beside its entries (Redis), which
        :meth:`recount` rebuilds."""
        return isinstance(self._backend, RedisBackend)

    def recount(self) -> int:
        """Rebuild the counts a Redis store keeps from its entries; returns how
        many entries were read (0 on other backends, which keep no counts).

        Not needed in normal use: every write keeps the counts, and a store
        written before they existed is recounted at its first count. It reads
        the metadata of every entry (never the message bytes) in short
        server-side steps of 2,000 entries, so Redis never blocks for long;
        entries written meanwhile are counted exactly.
        """
        backend = self._backend
        return backend.recount() if isinstance(backend, RedisBackend) else 0

    def count(
        self,
        *,
        reason: str | None = None,
        task: str | None = None,
        version: int | None = None,
        before: datetime.datetime | None = None,
    ) -> int:
        """How many entries match (all of them without a filter).

        SQL counts in the database; Redis adds up its kept counts, unless
        ``before`` is given (then, like memory and files, it reads every
        entry's metadata)."""
        flt = DeadLetterFilter(reason, task, version, before)
        return len(self) if flt.empty else self._backend.count_where(flt)

    def purge_matching(
        self,
        *,
        reason: str | None = None,
        task: str | None = None,
        version: int | None = None,
        before: datetime.datetime | None = None,
    ) -> int:
        """Remove the entries that match; returns how many (every entry without a filter)."""
        flt = DeadLetterFilter(reason, task, version, before)
        return self._backend.purge() if flt.empty else self._backend.delete_where(flt)

    def replay_as(self, id: str, raw: bytes) -> Any:
        """Replay an entry with ``raw`` in place of its stored bytes (an edited message).

        ``raw`` runs through today's pipeline and is enqueued; the entry is
        removed in the same step of the backend, only once the enqueue
        succeeded. When ``raw`` cannot run, the entry is left as it was.

        Raises:
            DeadLetterNotFound: there is no such entry (any more).
            ReplayFailed: ``raw`` cannot run (the entry is unchanged).
        """
        entry = self.get(id)
        try:
            requeue = self._replay(raw)
        except MessageRejected as exc:
            raise ReplayFailed(
                id=id, reason=exc.reason, task=exc.task, version=exc.version, error=exc.error
            ) from None
        if not self._backend.take(entry.id, requeue.data, requeue.priority):
            raise DeadLetterNotFound(id)
        return requeue.then()


# -- backends -----------------------------------------------------------------


class _Scanning:
    """Filters, pages and counts for backends that keep each entry as one value:
    they scan the entries' metadata newest first (``meta_chunk``)."""

    def meta_chunk(self, cursor: str | None, size: int) -> Sequence[Meta]:
        """The metadata of the next ``size`` entries older than ``cursor``, newest first."""
        raise NotImplementedError

    def get(self, id: str) -> DeadLetter | None:
        raise NotImplementedError

    def delete(self, id: str) -> bool:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def fetch(self, ids: list[str]) -> list[DeadLetter]:
        """The entries with these ids, in this order (those still there)."""
        return [entry for entry in map(self.get, ids) if entry is not None]

    def select(
        self,
        flt: DeadLetterFilter,
        *,
        cursor: str | None,
        offset: int,
        limit: int,
        scan_limit: int,
    ) -> DeadLetterPage:
        return scan_select(
            self.meta_chunk,
            self.fetch,
            flt,
            cursor=cursor,
            offset=offset,
            limit=limit,
            scan_limit=scan_limit,
        )

    def tally(self, scan_limit: int | None) -> DeadLetterCounts:
        return scan_tally(self.meta_chunk, self.count(), scan_limit)

    def count_where(self, flt: DeadLetterFilter) -> int:
        return len(scan_count(self.meta_chunk, flt))

    def delete_where(self, flt: DeadLetterFilter) -> int:
        return sum(self.delete(id) for id in scan_count(self.meta_chunk, flt))


class MemoryBackend(_Scanning):
    """Entries in a dict hung on the MemoryStorage itself."""

    def __init__(self, storage: MemoryStorage) -> None:
        # Attached to the storage under its own lock, so that two threads
        # opening the store at once share one dict.
        with storage._lock:
            state = storage.__dict__.setdefault("_vt_dead_letters", ({}, threading.Lock()))
        self._storage = storage
        self._entries: dict[str, Any] = state[0]
        self._lock: threading.Lock = state[1]

    @staticmethod
    def _entry(id: str, value: Any) -> DeadLetter:
        if isinstance(value, DeadLetter):
            return value
        stored = value if isinstance(value, bytes) else repr(value).encode()
        return _corrupt(id, stored, f"it holds a {type(value).__name__}, not a DeadLetter")

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None:
        with self._lock:
            self._entries[entry.id] = entry

    def get(self, id: str) -> DeadLetter | None:
        value = self._entries.get(id)
        return None if value is None else self._entry(id, value)

    def update(self, id: str, reason: Reason, error: str) -> bool:
        with self._lock:
            entry = self._entries.get(id)
            if not isinstance(entry, DeadLetter):
                return False
            self._entries[id] = replace(entry, reason=reason, error=error)
            return True

    def take(self, id: str, data: bytes | None, priority: Any) -> bool:
        # The storage's own (reentrant) lock first, as its enqueue takes it:
        # no reader sees the entry gone and the message not yet queued.
        with self._storage._lock, self._lock:
            entry = self._entries.pop(id, None)
            if entry is None:
                return False
            try:
                if data is not None:
                    self._storage.enqueue(data, priority)
            except BaseException:
                self._entries[id] = entry
                raise
            return True

    def delete(self, id: str) -> bool:
        with self._lock:
            return self._entries.pop(id, None) is not None

    def purge(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def identity_chunks(self, size: int) -> Iterator[DeadChunk]:
        with self._lock:
            entries = list(self._entries.values())
        identities = [
            (_dead_identity(getattr(e, "task", None), getattr(e, "version", None)), 1)
            for e in entries
        ]
        return chunks_of(identities, size)

    def census_count(self) -> int:
        return self.count()

    def count(self) -> int:
        return len(self._entries)

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        with self._lock:
            newest_first = list(reversed(self._entries.items()))
        return [self._entry(id, value) for id, value in newest_first[offset : offset + limit]]

    def meta_chunk(self, cursor: str | None, size: int) -> Sequence[Meta]:
        # The cursor is a position in insertion order: simple, and enough for
        # an in-process store (an entry removed meanwhile shifts the rest).
        with self._lock:
            items = list(self._entries.items())
        end = len(items) if cursor is None else min(int(cursor), len(items))
        metas: list[Meta] = []
        for position in range(end - 1, max(end - size, 0) - 1, -1):
            id, value = items[position]
            entry = self._entry(id, value)
            metas.append(
                (
                    str(position),
                    id,
                    entry.reason,
                    entry.task,
                    entry.version,
                    entry.created_at.timestamp(),
                )
            )
        return metas


class _SqlBackend:
    """A dead-letter table beside a SQL storage's own tables, rows keyed by queue.

    Subclasses say how to create the table, how to run one statement and how
    the storage enqueues; the statements themselves are shared, written with
    the driver's placeholder.
    """

    #: Whether the table exists (one placeholder: its name).
    _EXISTS: str

    _COLUMNS = "id, reason, task, version, raw, error, created_at"

    def __init__(self, storage: Any, table: str, placeholder: str) -> None:
        self._storage = storage
        self._queue = storage.name
        self.table = table
        self._ready = False
        p = self._p = placeholder
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

    def _enqueue(self, cursor: Any, data: bytes, priority: Any) -> None:
        """Put ``data`` on the queue as the storage's enqueue does, with ``cursor``."""
        raise NotImplementedError

    @staticmethod
    def _row(row: tuple[Any, ...]) -> DeadLetter:
        id, reason, task, version, raw, error, created = row
        if isinstance(id, bytes | bytearray | memoryview):
            id = bytes(id).decode("utf-8", "replace")
        try:
            return _checked(str(id), reason, task, version, raw, error, created)
        except _Corrupt as exc:
            try:
                created_at: datetime.datetime | None = _created(created)
            except _Corrupt:
                created_at = None
            return _corrupt(str(id), _stored_bytes(raw), str(exc), created_at)

    @staticmethod
    def _text(value: str) -> str:
        """A text column's value as the driver can store it (``raw`` is kept exact)."""
        return value

    def _row_values(self, entry: DeadLetter) -> tuple[Any, ...]:
        return (
            entry.id,
            self._queue,
            self._text(entry.reason),
            None if entry.task is None else self._text(entry.task),
            entry.version,
            entry.raw,
            self._text(entry.error),
            entry.created_at.timestamp(),
        )

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None:
        self._sql(self._insert, self._row_values(entry), write=True)

    def insert(self, cursor: Any, raw: bytes, action: Any) -> DeadLetter:
        """Write an entry with the caller's cursor, inside the caller's transaction."""
        entry = new_entry(action.reason, raw, action.error, action.task, action.version)
        cursor.execute(self._insert, self._row_values(entry))
        return entry

    def get(self, id: str) -> DeadLetter | None:
        rows = self._sql(self._get, (self._queue, id))
        return self._row(rows[0]) if rows else None

    def update(self, id: str, reason: Reason, error: str) -> bool:
        values = (self._text(reason), self._text(error), self._queue, id)
        return bool(self._sql(self._update, values, write=True))

    def take(self, id: str, data: bytes | None, priority: Any) -> bool:
        # One transaction: the message is queued if and only if this call
        # removed the entry, so a replay retried after a lost commit reply
        # finds nothing and queues nothing.
        self.ensure_table()
        with self._storage.db(commit=True) as cursor:
            cursor.execute(self._delete, (self._queue, id))
            if cursor.rowcount != 1:
                return False
            if data is not None:
                self._enqueue(cursor, data, priority)
            return True

    def delete(self, id: str) -> bool:
        return bool(self._sql(self._delete, (self._queue, id), write=True))

    def purge(self) -> int:
        return int(self._sql(self._purge, (self._queue,), write=True))

    def identity_chunks(self, size: int) -> Iterator[DeadChunk]:
        # Counted by the database, from the store's own columns.
        if not self._has_table():
            return
        p = self._p
        # Grouped by reason too, so that the database counts from the covering
        # index on (queue, reason, task, version) instead of reading rows; the
        # census adds up the groups of one task and version.
        rows = self._storage.sql(
            f"select task, version, count(*) from {self.table} where queue = {p} "
            f"group by reason, task, version",
            (self._queue,),
            results=True,
        )
        yield [(_dead_identity(task, version), int(count)) for task, version, count in rows]

    def census_count(self) -> int:
        return self.count() if self._has_table() else 0

    def _has_table(self) -> bool:
        # A store never used has no table yet: the census does not create it.
        query = self._EXISTS
        return bool(self._storage.sql(query, (self.table,), results=True)[0][0])

    def count(self) -> int:
        return int(self._sql(self._count, (self._queue,))[0][0])

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        rows = self._sql(self._page, (self._queue, limit, offset))
        return [self._row(row) for row in rows]

    def _where(self, flt: DeadLetterFilter) -> tuple[str, list[Any]]:
        p = self._p
        clauses, params = [f"queue = {p}"], [self._queue]
        for column, value in (("reason", flt.reason), ("task", flt.task)):
            if value is not None:
                clauses.append(f"{column} = {p}")
                params.append(self._text(value))
        if flt.version is not None:
            clauses.append(f"version = {p}")
            params.append(flt.version)
        if flt.before is not None:
            clauses.append(f"created_at < {p}")
            params.append(flt.before_ts)
        return " and ".join(clauses), params

    def select(
        self,
        flt: DeadLetterFilter,
        *,
        cursor: str | None,
        offset: int,
        limit: int,
        scan_limit: int,
    ) -> DeadLetterPage:
        # By seq (the primary key) with the filter in the query: the database
        # walks its (queue, seq) index from the newest and stops at the page.
        where, params = self._where(flt)
        p = self._p
        if cursor is not None:
            where += f" and seq < {p}"
            params.append(int(cursor))
        rows = self._sql(
            f"select seq, {self._COLUMNS} from {self.table} where {where} "
            f"order by seq desc limit {p} offset {p}",
            (*params, limit + 1, offset),
        )
        entries = [self._row(row[1:]) for row in rows[:limit]]
        more = len(rows) > limit
        return DeadLetterPage(entries, str(rows[limit - 1][0]) if more else None)

    def tally(self, scan_limit: int | None) -> DeadLetterCounts:
        p = self._p
        rows = self._sql(
            f"select reason, task, version, count(*) from {self.table} where queue = {p} "
            f"group by reason, task, version",
            (self._queue,),
        )
        counts = DeadLetterCounts(total=0, counted=0)
        for reason, task, version, count in rows:
            identity = _dead_identity(task, version)
            counts.add(reason if reason in REASONS else "undecodable", *identity, int(count))
        total = sum(counts.by_reason.values())
        return replace(counts, total=total, counted=total)

    def count_where(self, flt: DeadLetterFilter) -> int:
        where, params = self._where(flt)
        return int(self._sql(f"select count(*) from {self.table} where {where}", (*params,))[0][0])

    def delete_where(self, flt: DeadLetterFilter) -> int:
        where, params = self._where(flt)
        return int(self._sql(f"delete from {self.table} where {where}", (*params,), write=True))


class SqliteBackend(_SqlBackend):
    """A ``vt_dead_letters`` table in the queue's own SQLite database."""

    _DDL = (
        "create table if not exists vt_dead_letters ("
        "seq integer primary key autoincrement, id text not null unique, "
        "queue text not null, reason text not null, task text, version integer, "
        "raw blob not null, error text not null, created_at real not null)",
        "create index if not exists vt_dead_letters_queue_seq on vt_dead_letters (queue, seq)",
        # Counts by reason and task from the index alone, never the rows' bytes;
        # a page of one task newest first (the rowid closes every index).
        "create index if not exists vt_dead_letters_queue_reason "
        "on vt_dead_letters (queue, reason, task, version)",
        "create index if not exists vt_dead_letters_queue_task on vt_dead_letters (queue, task)",
    )

    _EXISTS = "select count(*) from sqlite_master where type = 'table' and name = ?"

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

    def _enqueue(self, cursor: Any, data: bytes, priority: Any) -> None:
        # SqliteStorage.enqueue
        cursor.execute(
            "insert into task (queue, data, priority) values (?, ?, ?)",
            (self._queue, self._storage.to_blob(data), priority or 0),
        )


class PostgresBackend(_SqlBackend):
    """A ``<prefix>_vt_dead_letters`` table beside a PostgresStorage's own tables.

    ``<prefix>`` is the storage's ``table_prefix`` (``huey`` by default), so
    the store follows the storage's tables; rows are keyed by queue name. Every
    statement goes through the storage's own connection and lock.
    """

    _EXISTS = "select to_regclass(%s) is not null"

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
            f"create index if not exists {self.table}_queue_reason "
            f"on {self.table} (queue, reason, task, version)",
            f"create index if not exists {self.table}_queue_task "
            f"on {self.table} (queue, task, seq)",
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

    @staticmethod
    def _text(value: str) -> str:
        # PostgreSQL text cannot hold NUL, which a task name read off the wire
        # (or an error quoting it) may contain; the message's bytes stay exact.
        return value.replace("\x00", "\ufffd")

    def _sql(self, query: str, params: tuple[Any, ...] = (), *, write: bool = False) -> Any:
        # One statement each, on the storage's autocommit connection: atomic
        # on its own, with no begin/commit round trips.
        self.ensure_table()
        with self._storage.db() as cursor:
            cursor.execute(query, params)
            return cursor.rowcount if write else cursor.fetchall()

    def _enqueue(self, cursor: Any, data: bytes, priority: Any) -> None:
        # PostgresStorage.enqueue: the row, then a notification that wakes the
        # blocking consumers (delivered at commit).
        storage = self._storage
        cursor.execute(
            f"insert into {storage.table_task} (queue, data, priority) values (%s, %s, %s)",
            (self._queue, data, priority or 0),
        )
        channel = getattr(storage, "channel", None)
        if channel is not None:
            cursor.execute("select pg_notify(%s, %s)", (channel, ""))


# How each entry's metadata line is read in Lua: reason, task, version (text, ''
# for none) and created (Unix time, 0 for unknown). ``group_of`` names the
# counter an entry counts under (see the counts below).
_META_FN = """
local function meta_of(data, with_created)
    if not data then return 'undecodable', '', '', 0 end
    local newline = string.find(data, '\\n', 1, true)
    if not newline then return 'undecodable', '', '', 0 end
    local line = string.sub(data, 1, newline - 1)
    -- The line as the store writes it (orjson, keys in this order), read without
    -- a JSON parser; anything else (a null, an escape) goes through cjson.
    local reason, task, version = string.match(line,
        '^{"id":"[%w]*","reason":"([%w_]+)","task":"([^"\\\\]*)","version":(%-?%d+),"error":')
    if reason then
        local created = 0
        if with_created then
            created = tonumber(string.match(line, ',"created_at":([%d%.eE+-]+)}$')) or 0
        end
        return reason, task, version, created
    end
    local ok, meta = pcall(cjson.decode, line)
    if not ok or type(meta) ~= 'table' then return 'undecodable', '', '', 0 end
    reason = type(meta.reason) == 'string' and meta.reason or 'undecodable'
    task = type(meta.task) == 'string' and meta.task or ''
    version = type(meta.version) == 'number' and tostring(meta.version) or ''
    local created = type(meta.created_at) == 'number' and meta.created_at or 0
    return reason, task, version, created
end
local function group_of(data)
    local reason, task, version = meta_of(data)
    return reason .. '\\0' .. task .. '\\0' .. version
end
"""

# The counts of a Redis store: a hash (``.counts``) of entries per group (reason,
# task and version, NUL-separated), kept by the same scripts that write the
# entries, so that it moves with them in one atomic step. Its state (``.counts.state``,
# a hash): ``format`` says the counts are kept (this format); while they are being
# rebuilt, ``cursor`` is the sequence number up to which the rebuild has counted
# (empty: none yet), and a write counts only entries at or below it (the rebuild
# reads the others when it gets there). Without ``format`` (a store written before
# the counts existed), writes count nothing until a rebuild starts.
_COUNTS_FN = (
    _META_FN
    + f"local FORMAT = '{COUNTS_FORMAT}'"
    + """
local function counted(state, seq)
    local kept = redis.call('HMGET', state, 'format', 'cursor')
    if kept[1] ~= FORMAT then return false end
    if not kept[2] then return true end
    return kept[2] ~= '' and seq ~= nil and seq <= tonumber(kept[2])
end
local function bump(counts, data, by)
    local group = group_of(data)
    if redis.call('HINCRBY', counts, group, by) <= 0 then
        redis.call('HDEL', counts, group)
    end
end
"""
)

# KEYS: entries, index, seq, counts, state[, inflight]; ARGV: id, packed entry.
# HSETNX makes a call that redis-py retries after a lost reply a no-op. The first
# entry of an empty store starts its counts.
_ADD_LUA = (
    _COUNTS_FN
    + """
if redis.call('EXISTS', KEYS[5]) == 0 and redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[4])
    redis.call('HSET', KEYS[5], 'format', FORMAT)
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return 0
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if counted(KEYS[5], seq) then bump(KEYS[4], ARGV[2], 1) end
if KEYS[6] then
    local packed = ARGV[2]
    local raw = string.sub(packed, string.find(packed, '\\n', 1, true) + 1)
    redis.call('LREM', KEYS[6], 1, raw)
end
return 1
"""
)

# KEYS: entries, index, counts, state; ARGV: id, packed entry. Never re-creates
# an entry removed meanwhile.
_UPDATE_LUA = (
    _COUNTS_FN
    + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if counted(KEYS[4], tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))) then
    bump(KEYS[3], old, -1)
    bump(KEYS[3], ARGV[2], 1)
end
return 1
"""
)

# KEYS: entries, index, queue, marker, counts, state; ARGV: id, token, how ('list',
# 'sorted' or 'none'), message, score. Returns 1 when it removed the entry and
# queued the message, 0 when there was no entry, 2 when this very call (same
# token) already did it: redis-py re-sent it after losing the reply.
_TAKE_LUA = (
    _COUNTS_FN
    + """
if redis.call('GET', KEYS[4]) == ARGV[2] then
    return 2
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
    return 0
end
local seq = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if counted(KEYS[6], seq) then bump(KEYS[5], old, -1) end
if ARGV[3] == 'list' then
    redis.call('LPUSH', KEYS[3], ARGV[4])
elseif ARGV[3] == 'sorted' then
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
end
redis.call('SET', KEYS[4], ARGV[2], 'EX', 3600)
return 1
"""
)

# KEYS: entries, index, counts, state; ARGV: the ids. Returns how many it removed.
_DELETE_LUA = (
    _COUNTS_FN
    + """
local removed = 0
for i = 1, #ARGV do
    local old = redis.call('HGET', KEYS[1], ARGV[i])
    local seq = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[i]))
    redis.call('ZREM', KEYS[2], ARGV[i])
    if old then
        redis.call('HDEL', KEYS[1], ARGV[i])
        if counted(KEYS[4], seq) then bump(KEYS[3], old, -1) end
        removed = removed + 1
    end
end
return removed
"""
)

# KEYS: entries, index, counts, state; ARGV: none. Returns how many entries there were.
_PURGE_LUA = (
    _COUNTS_FN
    + """
local count = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[4], 'format', FORMAT)
return count
"""
)

# KEYS: entries, index, counts, state; ARGV: entries per step, '1' to start over.
# One step of a rebuild of the counts, oldest entries first from the cursor.
# Returns {1 when the counts are complete, entries read}.
_REBUILD_LUA = (
    _COUNTS_FN
    + """
local kept = redis.call('HMGET', KEYS[4], 'format', 'cursor')
local cursor = kept[2]
if ARGV[2] == '1' or kept[1] ~= FORMAT then
    redis.call('DEL', KEYS[3], KEYS[4])
    redis.call('HSET', KEYS[4], 'format', FORMAT, 'cursor', '')
    cursor = ''
elseif not cursor then
    return {1, 0}
end
local low = '-inf'
if cursor ~= '' then low = '(' .. cursor end
local size = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], low, '+inf', 'WITHSCORES', 'LIMIT', 0, size)
local counts, order = {}, {}
for i = 1, #ids, 2 do
    local data = redis.call('HGET', KEYS[1], ids[i])
    if data then
        local group = group_of(data)
        if counts[group] == nil then
            counts[group] = 0
            order[#order + 1] = group
        end
        counts[group] = counts[group] + 1
    end
end
for _, group in ipairs(order) do
    redis.call('HINCRBY', KEYS[3], group, counts[group])
end
if #ids / 2 < size then
    redis.call('HDEL', KEYS[4], 'cursor')
    return {1, #ids / 2}
end
redis.call('HSET', KEYS[4], 'cursor', ids[#ids])
return {0, #ids / 2}
"""
)

# KEYS: entries, counts, state. Returns the number of entries, whether the counts
# are complete (1) and the counts, as group, count pairs: all read in one step.
_COUNTS_LUA = (
    _COUNTS_FN
    + """
local kept = redis.call('HMGET', KEYS[3], 'format', 'cursor')
local ready = 0
if kept[1] == FORMAT and not kept[2] then ready = 1 end
local out = {redis.call('HLEN', KEYS[1]), ready}
if ready == 1 then
    local flat = redis.call('HGETALL', KEYS[2])
    for i = 1, #flat do out[#out + 1] = flat[i] end
end
return out
"""
)

# The console's scans of a Redis store, in Lua so that only what is asked for comes
# back (never the message bytes). Both read the index from a score downwards
# (ARGV[1], Redis range syntax) for at most ARGV[2] entries, parse each entry's
# metadata line with cjson, and return the number scanned and the last score.
_META_LUA = (
    _META_FN
    + """
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[1], '-inf', 'WITHSCORES',
                       'LIMIT', 0, tonumber(ARGV[2]))
local out = {#ids / 2, ''}
if #ids > 0 then out[2] = ids[#ids] end
"""
)

# Matches: ARGV[3] stops after that many; ARGV[4..7] reason, task, version and
# "created before" ('' for any). Then the ids that match.
_MATCH_LUA = (
    _META_LUA
    + """
local need = tonumber(ARGV[3])
local found = 0
for i = 1, #ids, 2 do
    local reason, task, version, created = meta_of(redis.call('HGET', KEYS[1], ids[i]),
                                                   ARGV[7] ~= '')
    if (ARGV[4] == '' or reason == ARGV[4]) and (ARGV[5] == '' or task == ARGV[5])
        and (ARGV[6] == '' or version == ARGV[6])
        and (ARGV[7] == '' or created < tonumber(ARGV[7])) then
        out[#out + 1] = ids[i]
        found = found + 1
        if found >= need then
            out[1] = (i + 1) / 2
            out[2] = ids[i + 1]
            break
        end
    end
end
return out
"""
)


def _group(field: Any) -> tuple[str, str | None, int | None]:
    """Reason, task and version of a group of the counts (or of a tally step)."""
    text = bytes(field).decode("utf-8", "replace") if not isinstance(field, str) else field
    reason, _, rest = text.partition("\0")
    task, _, version = rest.rpartition("\0")
    return (
        reason if reason in REASONS else "undecodable",
        task or None,
        int(version) if version.lstrip("-").isdigit() else None,
    )


def _flat_total(flat: Sequence[Any]) -> int:
    return sum(int(flat[at]) for at in range(1, len(flat), 2))


def _score(score: Any) -> str:
    """A sequence score as a cursor (scores are integers written as floats or bytes)."""
    value = float(score.decode() if isinstance(score, bytes) else score)
    return str(int(value))


class RedisBackend:
    """Keys ``huey.deadletters.<name>`` (entries), ``.index`` (order), ``.seq``,
    ``.counts`` and ``.counts.state`` (entries per reason, task and version).

    Each write is one Lua script, so one round trip and atomic, and it keeps the
    counts in the same step; a replay also leaves ``.replayed.<id>`` for an hour,
    so that the same call re-sent after a lost reply is recognised as done.
    """

    def __init__(self, storage: RedisStorage, *, sorted_queue: bool) -> None:
        self._storage = storage
        self._conn = storage.conn
        base = f"huey.deadletters.{storage.name}"
        self._entries = base
        self._index = f"{base}.index"
        self._seq = f"{base}.seq"
        self._replayed = f"{base}.replayed."
        self._counts = f"{base}.counts"
        self._state = f"{base}.counts.state"
        self._sorted = sorted_queue
        self._add = self._conn.register_script(_ADD_LUA)
        self._update = self._conn.register_script(_UPDATE_LUA)
        self._take = self._conn.register_script(_TAKE_LUA)
        self._match = self._conn.register_script(_MATCH_LUA)
        self._delete = self._conn.register_script(_DELETE_LUA)
        self._purge = self._conn.register_script(_PURGE_LUA)
        self._rebuild = self._conn.register_script(_REBUILD_LUA)
        self._read_counts = self._conn.register_script(_COUNTS_LUA)

    @staticmethod
    def _unpack(id: bytes | str, data: bytes) -> DeadLetter:
        key = id.decode("utf-8", "replace") if isinstance(id, bytes) else id
        return _from_packed(key, bytes(data))

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None:
        """Write ``entry`` in one script; with ``inflight`` (internal: the key of a
        list holding the message while it is handled), the same script removes
        one copy of ``entry.raw`` from that list."""
        keys = [self._entries, self._index, self._seq, self._counts, self._state]
        if inflight is not None:
            keys.append(inflight)
        self._add(keys=keys, args=[entry.id, _pack(entry)])

    @property
    def pops_lists(self) -> bool:
        """Whether the queue is a plain Redis list, which :meth:`add_then_pop` pops."""
        return not self._sorted

    def add_then_pop(
        self, entry: DeadLetter, *, inflight: str | None = None
    ) -> tuple[bytes | None, Exception | None]:
        """Write ``entry`` as :meth:`add` does and pop the next message in the
        same round trip: ``RPOP`` from the queue, or with ``inflight``, ``LMOVE``
        into that list (a worker's in-flight list).

        Internal, for the worker reading a flood of bad messages: a dead letter
        then costs one round trip instead of two. Returns the popped bytes (None
        when the queue was empty) and the write's error (None once written); a
        lost connection raises, as a pop does.
        """
        keys = [self._entries, self._index, self._seq, self._counts, self._state]
        if inflight is not None:
            keys.append(inflight)
        # Not a transaction: the script is atomic on its own, and the pop must
        # happen whether or not the write did, so that nothing popped is dropped.
        pipe = self._conn.pipeline(transaction=False)
        pipe.evalsha(self._add.sha, len(keys), *keys, entry.id, _pack(entry))
        queue = self._storage.queue_key
        if inflight is None:
            pipe.rpop(queue)
        else:
            pipe.lmove(queue, inflight, "RIGHT", "LEFT")
        added, popped = pipe.execute(raise_on_error=False)
        if isinstance(popped, Exception):
            popped = None  # nothing was moved
        if isinstance(added, Exception):
            if type(added).__name__ != "NoScriptError":
                return popped, added
            try:
                self.add(entry, inflight=inflight)  # loads the script and writes
            except Exception as exc:
                return popped, exc
        return popped, None

    def get(self, id: str) -> DeadLetter | None:
        data = self._conn.hget(self._entries, id)
        return self._unpack(id, data) if data is not None else None

    def update(self, id: str, reason: Reason, error: str) -> bool:
        entry = self.get(id)
        if entry is None or entry.corrupt:
            return False
        packed = _pack(replace(entry, reason=reason, error=error))
        keys = [self._entries, self._index, self._counts, self._state]
        return bool(self._update(keys=keys, args=[id, packed]))

    def take(self, id: str, data: bytes | None, priority: Any) -> bool:
        how, message, score = self._queueing(data, priority)
        keys = [
            self._entries,
            self._index,
            self._storage.queue_key,
            self._replayed + id,
            self._counts,
            self._state,
        ]
        token = uuid.uuid4().hex
        return bool(self._take(keys=keys, args=[id, token, how, message, score]))

    def _queueing(self, data: bytes | None, priority: Any) -> tuple[str, bytes, float]:
        """How the storage's enqueue would store ``data``: how, member and score."""
        if data is None:
            return "none", b"", 0
        if not self._sorted:
            # RedisStorage.enqueue refuses a priority; the message matters more.
            return "list", data, 0
        # RedisPriorityQueue.enqueue: a microsecond stamp keeps equal
        # priorities in order, and the lowest score pops first.
        prefix = struct.pack(">Q", int(time.time() * 1e6))
        return "sorted", prefix + data, 0 if priority is None else -priority

    @property
    def _count_keys(self) -> list[str]:
        return [self._entries, self._index, self._counts, self._state]

    def delete(self, id: str) -> bool:
        return bool(self._delete(keys=self._count_keys, args=[id]))

    def purge(self) -> int:
        return int(self._purge(keys=self._count_keys, args=[]))

    def identity_chunks(self, size: int) -> Iterator[DeadChunk]:
        # From the counts the store keeps (one read, as many rows as groups).
        by_identity: dict[Identity, int] = {}
        for _, task, version, count in self.groups():
            by_identity[task, version] = by_identity.get((task, version), 0) + count
        if by_identity:
            yield list(by_identity.items())

    # -- the counts ---------------------------------------------------------------

    def recount(self, *, size: int = SCAN_CHUNK) -> int:
        """Rebuild the counts from the entries, in steps of ``size`` entries (each
        one short script); returns how many entries were read.

        Writes meanwhile keep the counts exact: an entry the rebuild has passed
        is counted by the write that changes it, one it has not yet reached is
        read by the rebuild when it gets there.
        """
        return self._finish_rebuild(size, restart=True)

    def _finish_rebuild(self, size: int, *, restart: bool) -> int:
        read = 0
        while True:
            done, step = self._rebuild(keys=self._count_keys, args=[size, "1" if restart else "0"])
            restart = False
            read += int(step)
            if int(done):
                return read

    def _counted(self) -> tuple[int, list[Any] | None]:
        """The number of entries and the kept counts (flat), or None while there are none."""
        entries, ready, *flat = self._read_counts(
            keys=[self._entries, self._counts, self._state], args=[]
        )
        return int(entries), flat if int(ready) else None

    def groups(self) -> list[tuple[str, str | None, int | None, int]]:
        """(reason, task, version, count) of every group of entries, from the counts
        the store keeps beside them: as many as there are groups, whatever the
        number of entries.

        A store written before the counts existed (or by a release that did not
        keep them, whose writes leave the counts' sum off the number of entries)
        has its counts rebuilt first, once, in steps (see :meth:`recount`).
        """
        entries, flat = self._counted()
        if flat is None and entries == 0:
            return []  # never used, or emptied: nothing to count, nothing to write
        if flat is None or _flat_total(flat) != entries:
            self._finish_rebuild(SCAN_CHUNK, restart=flat is not None)
            entries, flat = self._counted()
        pairs = flat or []
        return [(*_group(pairs[at]), int(pairs[at + 1])) for at in range(0, len(pairs), 2)]

    def census_count(self) -> int:
        return self.count()

    def count(self) -> int:
        return int(self._conn.hlen(self._entries))

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        ids = self._conn.zrevrange(self._index, offset, offset + limit - 1)
        if not ids:
            return []
        rows = self._conn.hmget(self._entries, ids)
        return [
            self._unpack(id, row) for id, row in zip(ids, rows, strict=True) if row is not None
        ]

    def _matches(
        self, flt: DeadLetterFilter, cursor: str | None, size: int, need: int
    ) -> tuple[int, str | None, list[str]]:
        """One scan step: entries scanned, the last one's score, the matching ids."""
        top = "+inf" if cursor is None else f"({cursor}"
        before = flt.before_ts
        args = [
            top,
            size,
            need,
            flt.reason or "",
            flt.task or "",
            "" if flt.version is None else str(flt.version),
            "" if before is None else repr(before),
        ]
        scanned, last, *ids = self._match(keys=[self._entries, self._index], args=args)
        names = [i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i) for i in ids]
        return int(scanned), _score(last) if last else None, names

    def _all_matches(self, flt: DeadLetterFilter) -> Iterator[str]:
        cursor = None
        while True:
            scanned, cursor, ids = self._matches(flt, cursor, SCAN_CHUNK, SCAN_CHUNK)
            yield from ids
            if scanned < SCAN_CHUNK or cursor is None:
                return

    def _select_scan(
        self, flt: DeadLetterFilter, cursor: str | None, offset: int, limit: int, scan_limit: int
    ) -> DeadLetterPage:
        found: list[str] = []
        scanned = skipped = 0
        while True:
            size = min(SCAN_CHUNK, scan_limit - scanned)
            need = limit - len(found) + offset - skipped
            if size <= 0:
                return DeadLetterPage(self.fetch(found), cursor, scanned, exhaustive=False)
            step, last, ids = self._matches(flt, cursor, size, need)
            scanned += step
            cursor = last if last is not None else cursor
            for id in ids:
                if skipped < offset:
                    skipped += 1
                else:
                    found.append(id)
            if len(found) >= limit:
                return DeadLetterPage(self.fetch(found), cursor, scanned)
            if step < size:
                return DeadLetterPage(self.fetch(found), None, scanned)

    def tally(self, scan_limit: int | None) -> DeadLetterCounts:
        # From the kept counts: exact, whatever scan_limit.
        counts = DeadLetterCounts(total=0, counted=0)
        for group in self.groups():
            counts.add(*group)
        total = sum(counts.by_reason.values())
        return replace(counts, total=total, counted=total)

    def count_where(self, flt: DeadLetterFilter) -> int:
        if flt.before is None:
            # Reason, task and version are what the counts are kept by.
            return sum(
                count
                for reason, task, version, count in self.groups()
                if (flt.reason is None or reason == flt.reason)
                and (flt.task is None or task == flt.task)
                and (flt.version is None or version == flt.version)
            )
        return sum(1 for _ in self._all_matches(flt))

    def fetch(self, ids: list[str]) -> list[DeadLetter]:
        rows = self._conn.hmget(self._entries, ids) if ids else []
        return [
            self._unpack(id, row) for id, row in zip(ids, rows, strict=True) if row is not None
        ]

    def select(
        self,
        flt: DeadLetterFilter,
        *,
        cursor: str | None,
        offset: int,
        limit: int,
        scan_limit: int,
    ) -> DeadLetterPage:
        if not flt.empty:
            return self._select_scan(flt, cursor, offset, limit, scan_limit)
        # No filter: straight from the index, whatever the offset (O(log N + limit)).
        top = "+inf" if cursor is None else f"({cursor}"
        pairs = self._conn.zrevrangebyscore(
            self._index, top, "-inf", start=offset, num=limit + 1, withscores=True
        )
        ids = [m.decode("utf-8", "replace") if isinstance(m, bytes) else m for m, _ in pairs]
        more = len(pairs) > limit
        entries = self.fetch(ids[:limit])
        return DeadLetterPage(entries, _score(pairs[limit - 1][1]) if more else None)

    def delete_where(self, flt: DeadLetterFilter) -> int:
        ids = list(self._all_matches(flt))
        removed = 0
        for start in range(0, len(ids), 1000):
            removed += int(self._delete(keys=self._count_keys, args=ids[start : start + 1000]))
        return removed


_FILE_NAME = re.compile(r"(\d{20})-(.+)")


class FileBackend(_Scanning):
    """One file per entry under ``<path>/deadletters/`` of a FileStorage.

    Names start with a zero-padded nanosecond stamp so that a directory
    listing sorts oldest first; every operation holds the storage's own lock.
    """

    def __init__(self, storage: FileStorage) -> None:
        self._storage = storage
        self._lock = storage.lock
        self._dir = os.path.join(storage.path, "deadletters")

    def _files(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        # ".partial": an entry being written, or left half-written by a crash.
        return sorted(n for n in names if not n.startswith(".") and not n.endswith(".partial"))

    @staticmethod
    def _id(name: str) -> str:
        match = _FILE_NAME.fullmatch(name)
        return match.group(2) if match else name

    def _find(self, id: str) -> str | None:
        for name in self._files():
            if self._id(name) == id:
                return os.path.join(self._dir, name)
        return None

    def _read(self, path: str) -> DeadLetter:
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        match = _FILE_NAME.fullmatch(name)
        stamp = _utc_ns(int(match.group(1))) if match else None
        return _from_packed(self._id(name), data, stamp)

    @staticmethod
    def _write(path: str, entry: DeadLetter) -> None:
        partial = f"{path}.partial"
        with open(partial, "wb") as f:
            f.write(_pack(entry))
        os.replace(partial, path)

    def add(self, entry: DeadLetter, *, inflight: str | None = None) -> None:
        with self._lock:
            os.makedirs(self._dir, exist_ok=True)
            name = f"{time.time_ns():020d}-{entry.id}"
            self._write(os.path.join(self._dir, name), entry)

    def get(self, id: str) -> DeadLetter | None:
        with self._lock:
            path = self._find(id)
            return self._read(path) if path is not None else None

    def update(self, id: str, reason: Reason, error: str) -> bool:
        with self._lock:
            path = self._find(id)
            if path is None:
                return False
            entry = self._read(path)
            if entry.corrupt:
                return False
            self._write(path, replace(entry, reason=reason, error=error))
            return True

    def take(self, id: str, data: bytes | None, priority: Any) -> bool:
        # Under the storage's lock, which its enqueue and dequeue take too (and
        # which is not reentrant, hence the copy of its enqueue below). Two files
        # cannot change at once: a crash between them leaves the message queued
        # and the entry kept (replayed twice if replayed again), never neither.
        with self._lock:
            path = self._find(id)
            if path is None:
                return False
            queued = None if data is None else self._enqueue(data, priority)
            try:
                os.remove(path)
            except BaseException:
                if queued is not None:
                    os.remove(queued)
                raise
            return True

    def _enqueue(self, data: bytes, priority: Any) -> str:
        """FileStorage.enqueue without its lock (the caller holds it); the file's path."""
        storage = self._storage
        level = int(priority or 0)
        if not 0 <= level <= storage.MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {storage.MAX_PRIORITY}")
        os.makedirs(storage.queue_path, exist_ok=True)
        prefix = f"{storage.MAX_PRIORITY - level:04x}-{int(time.time() * 1000):012x}"
        base = path = os.path.join(storage.queue_path, prefix)
        conflict = 0
        while os.path.exists(path):
            conflict += 1
            path = f"{base}.{conflict:03d}"
        # Written aside first (FileStorage skips ".tmp"), so that no reader
        # ever sees half a message.
        partial = f"{path}.tmp"
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
        return path

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

    def identity_chunks(self, size: int) -> Iterator[DeadChunk]:
        return chunks_of(self._identities(), size)

    def _identities(self) -> Iterator[tuple[Identity, int]]:
        try:
            listing = os.scandir(self._dir)
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

    def census_count(self) -> int:
        return self.count()

    def count(self) -> int:
        with self._lock:
            return len(self._files())

    def page(self, offset: int, limit: int) -> list[DeadLetter]:
        with self._lock:
            names = self._files()[::-1][offset : offset + limit]
            return [self._read(os.path.join(self._dir, name)) for name in names]

    def meta_chunk(self, cursor: str | None, size: int) -> Sequence[Meta]:
        # The cursor is a file name: names sort oldest first.
        with self._lock:
            names = self._files()
        if cursor is not None:
            names = names[: bisect.bisect_left(names, cursor)]
        metas: list[Meta] = []
        for name in reversed(names[-size:]):
            try:
                with open(os.path.join(self._dir, name), "rb") as f:
                    line = f.readline().rstrip(b"\n")
            except FileNotFoundError:
                continue
            metas.append(meta_of(name, self._id(name), line))
        return metas


def _utc_ns(ns: int) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _dead_meta(data: bytes) -> Identity:
    meta, _, _ = bytes(data).partition(b"\n")
    try:
        parsed = orjson.loads(meta)
    except orjson.JSONDecodeError:
        return None, None
    if type(parsed) is not dict:
        return None, None
    return _dead_identity(parsed.get("task"), parsed.get("version"))


def _dead_identity(task: Any, version: Any) -> Identity:
    # SQLite keeps whatever a column was given: a corrupt row counts as unknown.
    return (task if type(task) is str else None, version if type(version) is int else None)
