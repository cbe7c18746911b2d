"""How many dead letters there are of each reason, read cheaply from each backend.

For gauges read at every scrape (``contrib.prometheus``): SQL counts in the
database (one ``group by``); Redis counts in a server-side script, a chunk of
the entries' hash per call, so that no entry's bytes cross the network and no
call blocks the server for long; memory counts its dict; files read the first
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

#: Entries of the Redis hash one script call reads.
_REDIS_CHUNK = 1000

# KEYS: entries; ARGV: cursor, count. Returns the next cursor and a flat list of
# reason, count pairs for the entries this HSCAN step returned.
_COUNT_LUA = """
local step = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local counts = {}
local values = step[2]
for i = 2, #values, 2 do
  local value = values[i]
  local newline = string.find(value, '\\n', 1, true)
  local reason = 'undecodable'
  if newline then
    local ok, meta = pcall(cjson.decode, string.sub(value, 1, newline - 1))
    if ok and type(meta) == 'table' and type(meta['reason']) == 'string' then
      reason = meta['reason']
    end
  end
  counts[reason] = (counts[reason] or 0) + 1
end
local flat = {}
for reason, count in pairs(counts) do
  flat[#flat + 1] = reason
  flat[#flat + 1] = count
end
return {step[1], flat}
"""


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
    conn = backend._conn
    script = backend.__dict__.get("_vt_count_script")
    if script is None:
        script = backend.__dict__["_vt_count_script"] = conn.register_script(_COUNT_LUA)
    counts: Counter[str] = Counter()
    cursor: Any = 0
    while True:
        cursor, flat = script(keys=[backend._entries], args=[cursor, _REDIS_CHUNK])
        for i in range(0, len(flat), 2):
            reason = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            counts[reason if reason in REASONS else "undecodable"] += int(flat[i + 1])
        if int(cursor) == 0:
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
