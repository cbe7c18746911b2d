"""Pages, filters and counts of a dead-letter store, without reading it whole.

The store may hold millions of entries. SQL backends filter, page and count in
the database (``where ... order by seq desc limit``, ``group by``). The other
backends keep each entry as one value (metadata line and message bytes), so a
filter on reason, task, version or age is a scan: it reads the metadata of the
entries newest first, in chunks, and stops after ``scan_limit`` entries,
saying so (:attr:`DeadLetterPage.exhaustive`). On Redis the scan runs in a Lua
script that sends back only each entry's metadata line, never its bytes.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

import orjson

from ..messages.reasons import REASONS

if TYPE_CHECKING:
    from .deadletters import DeadLetter

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "SCAN_CHUNK",
    "DeadLetterCounts",
    "DeadLetterFilter",
    "DeadLetterPage",
    "Meta",
    "meta_of",
    "scan_count",
    "scan_select",
    "scan_tally",
]

#: Entries a filtered page or a count reads at most on a backend that scans.
DEFAULT_SCAN_LIMIT: Final = 100_000

#: Entries whose metadata one scan step reads.
SCAN_CHUNK: Final = 2000

#: One entry's metadata: cursor, id, reason, task, version, created (Unix time).
Meta: TypeAlias = tuple[str, str, str, str | None, int | None, float]

#: ``chunk(cursor, size)``: the next ``size`` entries older than ``cursor``
#: (from the newest when None), newest first.
MetaChunks: TypeAlias = Callable[[str | None, int], Sequence[Meta]]


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which entries a page, a count or a purge is about (None: any).

    Attributes:
        reason: the entry's reason.
        task: the task name on the wire.
        version: the schema version on the wire.
        before: only entries created before this time (timezone-aware).
    """

    reason: str | None = None
    task: str | None = None
    version: int | None = None
    before: datetime.datetime | None = None

    @property
    def empty(self) -> bool:
        """Whether it selects every entry."""
        return (
            self.reason is None
            and self.task is None
            and self.version is None
            and (self.before is None)
        )

    @property
    def before_ts(self) -> float | None:
        """``before`` as a Unix time."""
        return None if self.before is None else self.before.timestamp()

    def matches(self, meta: Meta) -> bool:
        """Whether an entry with this metadata is selected."""
        _, _, reason, task, version, created = meta
        before = self.before_ts
        return (
            (self.reason is None or reason == self.reason)
            and (self.task is None or task == self.task)
            and (self.version is None or version == self.version)
            and (before is None or created < before)
        )


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of entries, newest first.

    Attributes:
        entries: the entries of the page.
        next_cursor: pass it as ``cursor`` for the next page; None at the end.
        scanned: how many entries' metadata were read to fill the page (0 where
            the backend filters in its own queries).
        exhaustive: False when the scan stopped at ``scan_limit`` before the
            end of the store: more matches may lie beyond ``next_cursor``.
    """

    entries: list[DeadLetter]
    next_cursor: str | None
    scanned: int = 0
    exhaustive: bool = True


@dataclass(frozen=True, slots=True)
class DeadLetterCounts:
    """How many entries there are, by reason and by task and version.

    Attributes:
        total: every entry of the store.
        counted: how many entries the counts below cover (``total`` unless the
            scan stopped at its limit: then the newest ``counted``).
        by_reason: reason -> count.
        by_task: (task, version) -> count; task None for unreadable entries.
        exhaustive: whether every entry was counted.
    """

    total: int
    counted: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_task: dict[tuple[str | None, int | None], int] = field(default_factory=dict)
    exhaustive: bool = True

    def add(self, reason: str, task: str | None, version: int | None, count: int) -> None:
        """Count ``count`` entries of this reason, task and version."""
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        self.by_task[task, version] = self.by_task.get((task, version), 0) + count


def meta_of(cursor: str, id: str, line: bytes | None) -> Meta:
    """The metadata of an entry from its stored metadata line (JSON); an entry
    whose line cannot be read counts as ``undecodable``, of unknown task."""
    try:
        meta = orjson.loads(line) if line else None
    except orjson.JSONDecodeError:
        meta = None
    if type(meta) is not dict:
        return cursor, id, "undecodable", None, None, 0.0
    reason, task, version, created = (
        meta.get("reason"),
        meta.get("task"),
        meta.get("version"),
        meta.get("created_at"),
    )
    return (
        cursor,
        id,
        reason if reason in REASONS else "undecodable",
        task if type(task) is str else None,
        version if type(version) is int else None,
        float(created) if isinstance(created, int | float) else 0.0,
    )


def _metas(chunks: MetaChunks, cursor: str | None) -> Iterator[Meta]:
    while True:
        chunk = chunks(cursor, SCAN_CHUNK)
        yield from chunk
        if len(chunk) < SCAN_CHUNK:
            return
        cursor = chunk[-1][0]


def scan_select(
    chunks: MetaChunks,
    fetch: Callable[[list[str]], list[DeadLetter]],
    flt: DeadLetterFilter,
    *,
    cursor: str | None,
    offset: int,
    limit: int,
    scan_limit: int,
) -> DeadLetterPage:
    """A page of matching entries found by scanning metadata newest first.

    Skips ``offset`` matches, collects ``limit`` more, reads at most
    ``scan_limit`` entries; then fetches the whole entries of the page.
    """
    found: list[Meta] = []
    skipped = scanned = 0
    last: str | None = None
    more = False
    for meta in _metas(chunks, cursor):
        if scanned >= scan_limit or len(found) >= limit:
            more = True
            break
        scanned += 1
        last = meta[0]
        if not flt.matches(meta):
            continue
        if skipped < offset:
            skipped += 1
            continue
        found.append(meta)
    entries = fetch([meta[1] for meta in found]) if found else []
    exhaustive = not (more and scanned >= scan_limit and len(found) < limit)
    return DeadLetterPage(entries, last if more else None, scanned, exhaustive)


def scan_tally(chunks: MetaChunks, total: int, scan_limit: int | None) -> DeadLetterCounts:
    """Counts by reason and by task of the newest ``scan_limit`` entries (all when None)."""
    counts = DeadLetterCounts(total=total, counted=0)
    counted = 0
    complete = True
    for meta in _metas(chunks, None):
        if scan_limit is not None and counted >= scan_limit:
            complete = False
            break
        counted += 1
        counts.add(meta[2], meta[3], meta[4], 1)
    return DeadLetterCounts(
        total=max(total, counted),
        counted=counted,
        by_reason=counts.by_reason,
        by_task=counts.by_task,
        exhaustive=complete,
    )


def scan_count(chunks: MetaChunks, flt: DeadLetterFilter) -> list[str]:
    """The ids of every matching entry (a full scan of the metadata)."""
    return [meta[1] for meta in _metas(chunks, None) if flt.matches(meta)]
