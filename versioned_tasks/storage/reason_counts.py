"""How many dead letters there are of each reason, read cheaply from each backend.

For gauges read at every scrape (``contrib.prometheus``): SQL counts in the
database (one ``group by``); Redis reads the counts its store keeps beside the
entries (one hash, as many fields as there are groups of reason, task and
version); memory counts its dict; files read the first
line (the metadata) of each entry. A store never used is not created: it has
no entries. An entry whose metadata cannot be read counts as ``undecodable``,
as the store lists it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import orjson

from ..messages.readwrite import REASONS
from .deadletters import (
    DeadLetterBackend,
    DeadLetterStore,
    FileBackend,
    MemoryBackend,
    RedisBackend,
    _SqlBackend,
)

__all__ = ["count_by_reason"]


def count_by_reason(store: DeadLetterStore) -> dict[str, int]:
    """``{reason: count}`` of the entries of one store (reasons with none left out)."""
    return _count(store._backend)


def _count(backend: DeadLetterBackend) -> dict[str, int]:
    if isinstance(backend, _SqlBackend):
        return _sql(backend)
    if isinstance(backend, RedisBackend):
        return _redis(backend)
    if isinstance(backend, MemoryBackend):
        with backend._lock:
            reasons = [getattr(value, "reason", None) for value in backend._entries.values()]
        return _tally(reasons)
    if isinstance(backend, FileBackend):
        return _files(backend)
    return _tally(entry.reason for entry in backend.page(0, backend.count()))


def _tally(reasons: Any) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for reason in reasons:
        counts[reason if reason in REASONS else "undecodable"] += 1
    return dict(counts)


def _sql(backend: _SqlBackend) -> dict[str, int]:
    if not backend._has_table():
        return {}
    rows = backend._storage.sql(
        f"select reason, count(*) from {backend.table} where queue = {backend._p} group by reason",
        (backend._queue,),
        results=True,
    )
    counts: Counter[str] = Counter()
    for reason, count in rows:
        counts[reason if reason in REASONS else "undecodable"] += int(count)
    return dict(counts)


def _redis(backend: RedisBackend) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for reason, _, _, count in backend.groups():
        counts[reason] += count
    return dict(counts)


def _files(backend: FileBackend) -> dict[str, int]:
    reasons = []
    for name in backend._files():
        try:
            with open(os.path.join(backend._dir, name), "rb") as f:
                line = f.readline()
        except FileNotFoundError:
            continue  # replayed or deleted meanwhile
        try:
            meta = orjson.loads(line)
        except orjson.JSONDecodeError:
            meta = None
        reasons.append(meta.get("reason") if type(meta) is dict else None)
    return _tally(reasons)
