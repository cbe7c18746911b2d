"""Header scans for the census: a storage's queue or schedule read in chunks,
without changing anything (each adapter picks its scan; dead-letter stores scan
their own columns, ``identity_chunks``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, Final, Literal, TypeAlias, TypeVar

__all__ = [
    "DEFAULT_CHUNK",
    "Chunk",
    "DeadChunk",
    "Identity",
    "SqlPages",
    "Where",
    "chunks_of",
    "file_chunks",
    "memory_chunks",
    "redis_list_chunks",
    "redis_sorted_chunks",
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

#: Task and version, and how many dead letters have them.
DeadChunk: TypeAlias = list[tuple[Identity, int]]

#: A chunk of stored messages with their due time (schedule only).
Chunk: TypeAlias = Sequence[tuple[bytes, float | None]]


_T = TypeVar("_T")


def chunks_of(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def redis_list_chunks(conn: Any, key: str, size: int) -> Iterator[Chunk]:
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


def redis_sorted_chunks(conn: Any, key: str, size: int, *, strip: int) -> Iterator[Chunk]:
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


class SqlPages:
    """Pages of (id, prefix, length[, timestamp]) rows of Huey's task and schedule tables.

    ``tables`` names the queue's and the schedule's table, ``placeholder`` is the
    driver's, ``substr`` the dialect's prefix expression (one placeholder: its length).
    """

    def __init__(
        self, storage: Any, tables: Mapping[Where, str], placeholder: str, substr: str
    ) -> None:
        self.storage = storage
        self._tables = tables
        self._p = placeholder
        self._substr = substr

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


def memory_chunks(storage: Any, where: Where, size: int) -> Iterator[Chunk]:
    """A MemoryStorage's queue or schedule, in chunks of ``size``."""
    return chunks_of(_memory_items(storage, where), size)


def file_chunks(directory: str, size: int, *, stamped: bool) -> Iterator[Chunk]:
    """A FileStorage's queue or schedule directory (``stamped``: named by due time)."""
    return chunks_of(_file_items(directory, stamped=stamped), size)


def _memory_items(storage: Any, where: Where) -> list[tuple[bytes, float | None]]:
    # References only, taken under the storage's lock: the bytes are not copied.
    with storage._lock:
        if where == "queue":
            return [(data, None) for _, _, data in storage._queue]
        return [(data, _stamp(ts)) for ts, data in storage._schedule]


def _stamp(ts: datetime.datetime) -> float:
    # The number every other storage keeps: the naive datetime read as local time.
    return ts.timestamp()
