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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypedDict

import orjson

from ..messages.legacy import is_legacy
from ..storage.adapters import adapter_for
from ..storage.scan import (
    DEFAULT_CHUNK,
    Chunk,
    Identity,
    Where,
)
from ..wire.envelope import MAC_LEN, MAX_KEY_ID_LEN, MAX_VERSION, PREFIX, SIGNED_PREFIX

if TYPE_CHECKING:
    from ..app.huey import VersionedHuey

__all__ = [
    "WHERES",
    "Census",
    "CensusRow",
    "Removal",
    "Where",
    "read_identity",
    "take_census",
]

#: The places a census counts, in the order it reads and reports them.
WHERES: Final[tuple[Where, ...]] = ("queue", "schedule", "dead_letters")

#: Called after each chunk with the place and how many items were read.
Progress: TypeAlias = Callable[[Where, int], None]

#: Deepest chain of callbacks followed in a header (on_complete of on_complete ...).
_MAX_CALLBACK_DEPTH: Final = 64

#: Header keys that say nothing about an eta or a callback.
_PLAIN_KEYS: Final = frozenset({"kind", "task", "v", "id", "at", "by", "build", "form", "params"})

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
    if raw[:4] != SIGNED_PREFIX:
        return -1
    colon = raw.find(b":", 4, 4 + MAX_KEY_ID_LEN + 1)
    if colon <= 4:
        return -1
    start = colon + 1 + MAC_LEN
    return start + 4 if raw[start : start + 4] == PREFIX else -1


def read_header(raw: bytes) -> dict[str, Any] | None:
    """The parsed header of an envelope (signed or not, the signature unchecked),
    or None for anything else. Only the bytes up to the first newline are parsed."""
    start = 4 if raw[:4] == PREFIX else _signed_start(raw)
    end = raw.find(b"\n", start) if start > 0 else -1
    if end < 0:
        return None
    try:
        header = orjson.loads(raw[start:end])
    except orjson.JSONDecodeError:
        return None
    return header if type(header) is dict else None


def _good_version(version: Any) -> bool:
    return version is None or (type(version) is int and 1 <= version <= MAX_VERSION)


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

    def chunk(self, where: Where, chunk: Chunk) -> None:
        """Count a chunk of stored messages: the loop every message goes through."""
        counts, loads, decode_error = self.counts, orjson.loads, orjson.JSONDecodeError
        top = MAX_VERSION
        for raw, due in chunk:
            start = 4 if raw[:4] == PREFIX else _signed_start(raw)
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
        self.plain = set(huey.task_classes)
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
    storage = adapter_for(huey.storage)
    # Opened first, so that a storage without a dead-letter store fails at once.
    dead_letters = storage.dead_letters().identity_chunks(chunk_size)
    where: Where
    for where in ("queue", "schedule"):
        for chunk in storage.message_chunks(where, chunk_size):
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
    return {
        "queue": int(huey.storage.queue_size()),
        "schedule": int(huey.storage.schedule_size()),
        "dead_letters": adapter_for(huey.storage).dead_letters().census_count(),
    }
