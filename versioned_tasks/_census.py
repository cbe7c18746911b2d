"""The census: what is queued, scheduled and dead-lettered, by task and version.

Only envelope headers are read (the bytes up to the first newline, parsed with
orjson); bodies are never parsed, signatures never checked. Storage is read in
chunks, so memory stays flat however long the queue is:

- Redis: ``LRANGE`` over the list from its head, ``ZREVRANGE`` over sorted sets
  (the schedule, and a priority queue) from their far end;
- SQLite and PostgreSQL: pages of rows by id (keyset), only a prefix of each
  message unless its header is longer;
- MemoryStorage and FileStorage: what the storage holds, one item at a time.

On a queue that workers and producers use meanwhile, the census is a moving
picture. The reading orders above are chosen so that a message that stays in
storage for the whole census is always counted (workers take from the other
end); one written meanwhile may be counted or not, and may shift an already
counted one into the next page, where it is counted again. Counts therefore err
on the high side, never the low one: "no message needs this upcaster" is never
said while one waits in storage.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypedDict, TypeVar

import orjson
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisPriorityQueue,
    RedisStorage,
    SqliteStorage,
)

from ._deadletters import (
    FileBackend,
    MemoryBackend,
    PostgresBackend,
    RedisBackend,
    SqliteBackend,
    backend_for,
)
from ._legacy import is_legacy
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._huey import VersionedHuey

__all__ = [
    "WHERES",
    "Census",
    "CensusRow",
    "Removal",
    "Where",
    "read_identity",
    "take_census",
]

Where: TypeAlias = Literal["queue", "schedule", "dead_letters"]
#: The places a census counts, in the order it reads and reports them.
WHERES: Final[tuple[Where, ...]] = ("queue", "schedule", "dead_letters")

#: Called after each chunk with the place and how many items were read.
Progress: TypeAlias = Callable[[Where, int], None]

DEFAULT_CHUNK: Final = 1000
#: Bytes of each SQL row fetched at first; a longer header fetches the whole row.
_SQL_PREFIX: Final = 2048
#: File bytes read at first for a header.
_FILE_PREFIX: Final = 4096
_MAX_VERSION: Final = 2**31 - 1
#: Deepest chain of callbacks followed in a header (on_complete of on_complete ...).
_MAX_CALLBACK_DEPTH: Final = 64

#: Header keys that say nothing about an eta or a callback.
_PLAIN_KEYS: Final = frozenset({"kind", "task", "v", "id", "at", "by", "build", "form", "params"})
_ENVELOPE: Final = b"VTE1"
_SIGNED: Final = b"VTS1"
_MAC_LEN: Final = 64
_MAX_KEY_ID: Final = 32

Identity: TypeAlias = tuple[str | None, int | None]
_Key: TypeAlias = tuple[Where, str | None, int | None]


class CensusRow(TypedDict):
    """One line of a census: how many messages of one task and version sit in one place.

    ``task`` and ``version`` are as written on the wire (before renames). ``task``
    is None for bytes that are no task envelope (junk, legacy pickle, a value);
    ``version`` is None where the message carries none (a plain Huey task, or
    unreadable bytes).
    """

    task: str | None
    version: int | None
    where: Where
    count: int


# -- reading one header ----------------------------------------------------------------


def _signed_start(raw: bytes) -> int:
    """Where the header of the envelope a ``VTS1`` message carries starts, or -1.

    The signature is skipped, not checked: a census only counts.
    """
    if raw[:4] != _SIGNED:
        return -1
    colon = raw.find(b":", 4, 4 + _MAX_KEY_ID + 1)
    if colon <= 4:
        return -1
    start = colon + 1 + _MAC_LEN
    return start + 4 if raw[start : start + 4] == _ENVELOPE else -1


def read_header(raw: bytes) -> dict[str, Any] | None:
    """The parsed header of an envelope (signed or not, the signature unchecked),
    or None for anything else. Only the bytes up to the first newline are parsed."""
    start = 4 if raw[:4] == _ENVELOPE else _signed_start(raw)
    end = raw.find(b"\n", start) if start > 0 else -1
    if end < 0:
        return None
    try:
        header = orjson.loads(raw[start:end])
    except orjson.JSONDecodeError:
        return None
    return header if type(header) is dict else None


def _good_version(version: Any) -> bool:
    return version is None or (type(version) is int and 1 <= version <= _MAX_VERSION)


def _identity(obj: Mapping[str, Any]) -> Identity:
    # As the read pipeline decides it: a task message names a non-empty task,
    # and carries either no version or one in range.
    name, version = obj.get("task"), obj.get("v")
    if type(name) is not str or not name or not _good_version(version):
        return None, None
    return name, version


def read_identity(raw: bytes) -> Identity:
    """The task name and version on the wire of stored bytes, read from the header only.

    ``(None, None)`` for anything that is not a task envelope.
    """
    header = read_header(raw)
    if header is None or header.get("kind", "task") != "task":
        return None, None
    return _identity(header)


def _callbacks(header: Mapping[str, Any], depth: int = 0) -> Iterator[tuple[str, int | None]]:
    """The task and version of every callback nested in a header, depth first."""
    if depth >= _MAX_CALLBACK_DEPTH:
        return
    nested = [header.get("on_complete"), header.get("on_error")]
    chord = header.get("chord")
    if type(chord) is dict:
        nested.append(chord.get("callback"))
    for obj in nested:
        if type(obj) is dict:
            name, version = _identity(obj)
            if name is not None:
                yield name, version
            yield from _callbacks(obj, depth + 1)


# -- the tally ---------------------------------------------------------------------------


@dataclass
class _Tally:
    """What a census has counted so far; a handful of keys, whatever the queue length."""

    counts: Counter[_Key] = field(default_factory=Counter)
    callbacks: Counter[_Key] = field(default_factory=Counter)
    legacy: Counter[Where] = field(default_factory=Counter)
    #: Latest due time per task and version: the schedule's own timestamp, or
    #: the header's eta of a queued message.
    latest: dict[tuple[str, int | None], float] = field(default_factory=dict)

    def chunk(self, where: Where, chunk: _Chunk) -> None:
        """Count a chunk of stored messages: the loop every message goes through."""
        counts, loads, decode_error = self.counts, orjson.loads, orjson.JSONDecodeError
        top = _MAX_VERSION
        for raw, due in chunk:
            start = 4 if raw[:4] == _ENVELOPE else _signed_start(raw)
            end = raw.find(b"\n", start) if start > 0 else -1
            try:
                header = loads(raw[start:end]) if end > 0 else None
            except decode_error:
                header = None
            if type(header) is not dict or header.get("kind", "task") != "task":
                self.unreadable(where, raw)
                continue
            name, version = header.get("task"), header.get("v")
            if (
                type(name) is not str
                or not name
                or (version is not None and (type(version) is not int or not 0 < version <= top))
            ):
                counts[where, None, None] += 1
                continue
            counts[where, name, version] += 1
            if header.keys() <= _PLAIN_KEYS:  # the common case: no eta, no callback
                if due is not None:
                    self._due(name, version, due)
            else:
                self._extras(where, header, name, version, due)

    def unreadable(self, where: Where, raw: bytes) -> None:
        """Count bytes that are no task envelope (junk, legacy pickle, a value)."""
        self.counts[where, None, None] += 1
        if is_legacy(raw):
            self.legacy[where] += 1

    def _extras(
        self,
        where: Where,
        header: dict[str, Any],
        name: str,
        version: int | None,
        due: float | None,
    ) -> None:
        if due is None and "eta" in header:
            # On the queue with an eta: a worker moves it to the schedule.
            due = _eta(header["eta"])
        self._due(name, version, due)
        if "on_complete" in header or "on_error" in header or "chord" in header:
            for nested, nested_version in _callbacks(header):
                self.callbacks[where, nested, nested_version] += 1
                self._due(nested, nested_version, due)

    def _due(self, name: str, version: int | None, due: float | None) -> None:
        if due is not None:
            key = (name, version)
            if due > self.latest.get(key, float("-inf")):
                self.latest[key] = due


def _eta(value: Any) -> float | None:
    """A header's naive ISO ``eta`` as the storages keep due times, or None."""
    try:
        eta = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return eta.timestamp() if eta.tzinfo is None else None


# -- reading storage in chunks -----------------------------------------------------------

#: A chunk of stored messages with their due time (schedule only).
_Chunk: TypeAlias = Sequence[tuple[bytes, float | None]]


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


def _redis_list(conn: Any, key: str, size: int) -> Iterator[_Chunk]:
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


def _redis_sorted(conn: Any, key: str, size: int, *, strip: int) -> Iterator[_Chunk]:
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

    def chunks(self, where: Where, size: int) -> Iterator[_Chunk]:
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


def message_chunks(storage: Any, where: Where, size: int = DEFAULT_CHUNK) -> Iterator[_Chunk]:
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


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """Whether one upcaster, rename or tombstone of the app is still needed.

    Attributes:
        kind: ``"upcaster"``, ``"rename"`` or ``"tombstone"``.
        task: the upcaster's task, the rename's old name, or the retired name.
        from_version: the upcaster's ``from_version`` (None for the others).
        target: the rename's new name (None for the others).
        counts: messages that need it, by place (callbacks nested in a
            message's header count as messages too).
        latest_eta: the latest due time among the messages that need it and
            have one (scheduled, or queued with an eta), naive and in UTC when
            the app has ``utc=True``, as Huey keeps it.
        via: for an upcaster or a tombstone, the old names (renamed to the
            task) under which some of those messages travel.
    """

    kind: Literal["upcaster", "rename", "tombstone"]
    task: str
    counts: Mapping[Where, int]
    from_version: int | None = None
    target: str | None = None
    latest_eta: datetime.datetime | None = None
    via: tuple[str, ...] = ()

    @property
    def needed(self) -> bool:
        """Whether any queued, scheduled or dead-lettered message needs it."""
        return any(self.counts.values())

    @property
    def subject(self) -> str:
        """What it is, as declared: ``upcaster billing.send_invoice 1->2``, ..."""
        if self.kind == "upcaster":
            return f"upcaster {self.task} {self.from_version}->{(self.from_version or 0) + 1}"
        if self.kind == "rename":
            return f"rename {self.task} -> {self.target}"
        return f"tombstone {self.task}"

    def describe(self) -> str:
        """One line: safe to remove, or needed by how many messages and until when."""
        if not self.needed:
            return f"{self.subject}: safe to remove (no message needs it)"
        parts = [f"{count:,} {_PLACE[where]}" for where, count in self.counts.items() if count]
        text = f"{self.subject}: needed by {', '.join(parts)}"
        if self.via:
            text += f" (incl. messages under {', '.join(map(repr, self.via))}, renamed)"
        if self.latest_eta is not None:
            text += f"; latest scheduled for {self.latest_eta.isoformat(sep=' ')}"
        return text

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the eta as ISO 8601)."""
        return {
            "kind": self.kind,
            "task": self.task,
            "from_version": self.from_version,
            "target": self.target,
            "needed": self.needed,
            "counts": dict(self.counts),
            "latest_eta": self.latest_eta.isoformat() if self.latest_eta else None,
            "via": list(self.via),
        }


_PLACE: Final[dict[Where, str]] = {
    "queue": "queued",
    "schedule": "scheduled",
    "dead_letters": "dead-lettered",
}


@dataclass(frozen=True)
class Census:
    """The result of :func:`take_census`.

    Attributes:
        rows: the census rows (``huey.census()`` returns these), top-level
            messages only, sorted by place, task and version.
        removals: every upcaster, rename and tombstone of the app, and whether
            a message still needs it.
        newer: rows of messages (callbacks included) whose version is newer
            than this app knows: deferred until a newer worker takes them.
        unknown: rows of messages (callbacks included) of tasks this app does
            not know at all (neither declared, renamed nor retired).
        legacy: legacy pickled messages by place (counted in ``rows`` under
            task None).
    """

    rows: list[CensusRow]
    removals: list[Removal]
    newer: list[CensusRow]
    unknown: list[CensusRow]
    legacy: dict[Where, int]

    def total(self, where: Where | None = None) -> int:
        """How many messages were counted, in one place or in all."""
        return sum(row["count"] for row in self.rows if where is None or row["where"] == where)

    def unreadable(self, where: Where | None = None) -> int:
        """How many messages are no task envelope at all (task None)."""
        return sum(
            row["count"]
            for row in self.rows
            if row["task"] is None and (where is None or row["where"] == where)
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole census."""
        return {
            "rows": self.rows,
            "totals": {where: self.total(where) for where in WHERES},
            "legacy": {where: self.legacy.get(where, 0) for where in WHERES},
            "newer": self.newer,
            "unknown": self.unknown,
            "removals": [removal.to_json() for removal in self.removals],
        }


def _rows(counts: Mapping[_Key, int]) -> list[CensusRow]:
    order = {where: i for i, where in enumerate(WHERES)}
    keys = sorted(
        (key for key, count in counts.items() if count),
        key=lambda k: (order[k[0]], k[1] is None, k[1] or "", k[2] is None, k[2] or 0),
    )
    return [
        CensusRow(task=task, version=version, where=where, count=counts[where, task, version])
        for where, task, version in keys
    ]


class _Needs:
    """Which declarations each counted (task, version) goes through."""

    def __init__(self, huey: VersionedHuey, tally: _Tally) -> None:
        self.schema = huey.schema
        self.plain = set(huey._registry._registry)
        self.tally = tally
        self.everything: Counter[_Key] = tally.counts + tally.callbacks

    def renames_of(self, name: str) -> list[tuple[str, str]]:
        """The rename steps a wire name goes through (bounded, as ``resolve``)."""
        steps: list[tuple[str, str]] = []
        renames = self.schema.renames
        while name in renames and len(steps) <= len(renames):
            steps.append((name, renames[name]))
            name = renames[name]
        return steps

    def removals(self) -> list[Removal]:
        found: dict[tuple[str, str, int | None], dict[str, Any]] = {}
        for key in self.schema.tombstones:
            found["tombstone", key, None] = _blank()
        for old, new in self.schema.renames.items():
            found["rename", old, None] = {**_blank(), "target": new}
        for task, steps in self.schema.upcasters.items():
            for from_version in steps:
                found["upcaster", task, from_version] = _blank()
        for (where, name, version), count in self.everything.items():
            if name is not None and count:
                self._credit(found, where, name, version, count)
        return [self._removal(kind, task, frm, info) for (kind, task, frm), info in found.items()]

    def _credit(
        self,
        found: dict[Any, dict[str, Any]],
        where: Where,
        name: str,
        version: int | None,
        count: int,
    ) -> None:
        steps = self.renames_of(name)
        resolved = steps[-1][1] if steps else name
        due = self.tally.latest.get((name, version))
        touched: list[tuple[str, str, int | None]] = [("rename", old, None) for old, _ in steps]
        if resolved in self.schema.tombstones:
            touched.append(("tombstone", resolved, None))
        spec = self.schema.specs.get(resolved)
        upcasters = self.schema.upcasters.get(resolved, {})
        if spec is not None:
            # A message without a version is read as version 1.
            touched += [
                ("upcaster", resolved, k)
                for k in range(version or 1, spec.version)
                if k in upcasters
            ]
        for key in touched:
            info = found[key]
            info["counts"][where] += count
            if due is not None and (info["due"] is None or due > info["due"]):
                info["due"] = due
            if steps and key[0] != "rename":
                info["via"].add(name)

    def _removal(self, kind: Any, task: str, frm: int | None, info: dict[str, Any]) -> Removal:
        due = info["due"]
        return Removal(
            kind=kind,
            task=task,
            from_version=frm,
            target=info.get("target"),
            counts=dict(info["counts"]),
            latest_eta=datetime.datetime.fromtimestamp(due) if due is not None else None,
            via=tuple(sorted(info["via"])),
        )

    def newer_and_unknown(self) -> tuple[list[CensusRow], list[CensusRow]]:
        newer: Counter[_Key] = Counter()
        unknown: Counter[_Key] = Counter()
        for (where, name, version), count in self.everything.items():
            if name is None or not count:
                continue
            resolved = self.schema.resolve(name)
            spec = self.schema.specs.get(resolved)
            if spec is not None:
                if (version or 1) > spec.version:
                    newer[where, name, version] += count
            elif resolved not in self.schema.tombstones and resolved not in self.plain:
                unknown[where, name, version] += count
        return _rows(newer), _rows(unknown)


def _blank() -> dict[str, Any]:
    return {"counts": dict.fromkeys(WHERES, 0), "due": None, "via": set()}


def _order(removal: Removal) -> tuple[int, str, int]:
    kinds = {"upcaster": 0, "rename": 1, "tombstone": 2}
    return kinds[removal.kind], removal.task, removal.from_version or 0


# -- taking a census ---------------------------------------------------------------------


def take_census(
    huey: VersionedHuey,
    *,
    progress: Progress | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Census:
    """Count the app's queue, schedule and dead-letter store by task and version,
    and say which upcasters, renames and tombstones a message still needs.

    Reads headers only, in chunks of ``chunk_size``; ``progress(where, n)`` is
    called after each chunk. Nothing is changed in storage.
    """
    tally = _Tally()
    storage = huey.storage
    # Opened first, so that a storage without a dead-letter store fails at once.
    dead_letters = dead_letter_chunks(storage, chunk_size)
    where: Where
    for where in ("queue", "schedule"):
        for chunk in message_chunks(storage, where, chunk_size):
            tally.chunk(where, chunk)
            if progress is not None:
                progress(where, len(chunk))
    for dead in dead_letters:
        for (task, version), count in dead:
            tally.counts["dead_letters", task, version] += count
        if progress is not None:
            progress("dead_letters", sum(count for _, count in dead))
    needs = _Needs(huey, tally)
    newer, unknown = needs.newer_and_unknown()
    return Census(
        rows=_rows(tally.counts),
        removals=sorted(needs.removals(), key=_order),
        newer=newer,
        unknown=unknown,
        legacy={where: tally.legacy[where] for where in WHERES if tally.legacy[where]},
    )


def census_sizes(huey: VersionedHuey) -> dict[Where, int]:
    """How many items each place holds now (for a progress bar's totals)."""
    backend = backend_for(huey.storage)
    unused = isinstance(backend, SqliteBackend | PostgresBackend) and not _has_table(backend)
    return {
        "queue": int(huey.storage.queue_size()),
        "schedule": int(huey.storage.schedule_size()),
        "dead_letters": 0 if unused else backend.count(),
    }
