"""In-place rewrites for migrate-queue: the queue and the schedule of each storage,
one message replaced or removed at a time, atomically, if it is still there.
"""

from __future__ import annotations

import heapq
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from huey.storage import (
    FileStorage,
    MemoryStorage,
    RedisStorage,
    SqliteStorage,
)

from ..messages.readwrite import Rejected
from .deadletters import DeadLetter, DeadLetterStore, SqliteBackend

__all__ = ["Area"]


# -- where messages wait, per storage ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    handle: Any
    raw: bytes
    new: bytes | None  # None: remove it (it is dead-lettered)
    rejected: Rejected | None


class Area:
    """The queue or the schedule of one storage, rewritten one message at a time."""

    label = "queue"

    def items(self) -> list[tuple[Any, bytes]]:
        """Every stored message with a handle to find it again, oldest first."""
        raise NotImplementedError

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        """Replace (``op.new``) or remove each message if it is still there; atomic each."""
        raise NotImplementedError

    def settle(self, ops: Sequence[_Op], store: DeadLetterStore) -> list[DeadLetter | bool]:
        """Apply the ops: True converted, a DeadLetter moved, False taken by a worker.

        The dead letter is written before the message leaves the storage: if
        the run is killed in between, the message is in both places, never in
        neither.
        """
        entries: dict[int, DeadLetter] = {}
        for index, op in enumerate(ops):
            if op.rejected is not None:
                r = op.rejected
                entries[index] = store.add(
                    reason=r.reason, raw=op.raw, task=r.task, version=r.version, error=r.error
                )
        done = self.swap(ops)
        settled: list[DeadLetter | bool] = []
        for index, ok in enumerate(done):
            entry = entries.get(index)
            if not ok and entry is not None:
                store.delete(entry.id)  # the worker popped it and read it itself
            settled.append(entry if ok and entry is not None else ok)
        return settled


# Redis: producers LPUSH at the head, workers (B)RPOP at the tail. A message's
# index counted from the tail changes only when messages to its right leave,
# so it can only move towards the tail: each message is looked for from where
# it was, plus how far the earlier ones had moved (``shift``), and replaced in
# place within the script, atomically.
_LIST_SWAP: Final = """
local key = KEYS[1]
local shift = tonumber(ARGV[1])
local marker = ARGV[2]
local done = {}
for i = 3, #ARGV, 3 do
  local index = tonumber(ARGV[i])
  local old, new = ARGV[i + 1], ARGV[i + 2]
  local pos = index + shift
  local found = 0
  while pos <= -1 do
    if redis.call('LINDEX', key, pos) == old then
      found = 1
      break
    end
    pos = pos + 1
  end
  if found == 1 then
    shift = pos - index
    if new == '' then
      redis.call('LSET', key, pos, marker)
      redis.call('LREM', key, -1, marker)
      shift = shift + 1
    else
      redis.call('LSET', key, pos, new)
    end
  end
  done[#done + 1] = found
end
table.insert(done, 1, shift)
return done
"""

# A sorted set (the schedule; PriorityRedisStorage's queue): the member is
# swapped for the new one under the same score, atomically.
_SET_SWAP: Final = """
local done = {}
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score then
    redis.call('ZREM', KEYS[1], ARGV[i])
    if ARGV[i + 1] ~= '' then
      redis.call('ZADD', KEYS[1], score, ARGV[i + 1])
    end
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
"""


class _RedisList(Area):
    def __init__(self, storage: RedisStorage) -> None:
        self._conn = storage.conn
        self._key = storage.queue_key
        self._script = storage.conn.register_script(_LIST_SWAP)
        self._shift = 0
        self._marker = f"vt-migrate-queue:{uuid.uuid4().hex}".encode()

    def items(self) -> list[tuple[Any, bytes]]:
        items = self._conn.lrange(self._key, 0, -1)
        count = len(items)
        # Tail first (the next a worker pops), with the index counted from the tail.
        return [(index - count, bytes(items[index])) for index in range(count - 1, -1, -1)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        args: list[Any] = [self._shift, self._marker]
        for op in ops:
            args += [op.handle, op.raw, op.new or b""]
        shift, *done = self._script(keys=[self._key], args=args)
        self._shift = int(shift)
        return [bool(found) for found in done]


class _RedisSortedSet(Area):
    def __init__(self, storage: RedisStorage, key: str, label: str, *, prefix: int) -> None:
        self._conn = storage.conn
        self._key = key
        self._prefix = prefix  # PriorityRedisStorage prefixes 8 bytes of enqueue time
        self._script = storage.conn.register_script(_SET_SWAP)
        self.label = label

    def items(self) -> list[tuple[Any, bytes]]:
        members = self._conn.zrange(self._key, 0, -1)
        return [(bytes(member), bytes(member[self._prefix :])) for member in members]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        args: list[bytes] = []
        for op in ops:
            member: bytes = op.handle
            args += [member, member[: self._prefix] + op.new if op.new is not None else b""]
        return [bool(found) for found in self._script(keys=[self._key], args=args)]


class _SqlTable(Area):
    """Huey's task or schedule table, rewritten by row id and content."""

    def __init__(self, storage: Any, table: str, label: str, mark: str) -> None:
        self._storage = storage
        self._table = table
        self._mark = mark
        self.label = label
        p = mark
        self._update = (
            f"update {table} set data = {p} where id = {p} and queue = {p} and data = {p}"
        )
        self._delete = f"delete from {table} where id = {p} and queue = {p} and data = {p}"

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage.db() as cursor:
            cursor.execute(
                f"select id, data from {self._table} where queue = {self._mark} order by id",
                (self._storage.name,),
            )
            return [(row_id, bytes(data)) for row_id, data in cursor.fetchall()]

    def _apply(self, cursor: Any, op: _Op) -> bool:
        name = self._storage.name
        if op.new is not None:
            cursor.execute(self._update, (op.new, op.handle, name, op.raw))
        else:
            cursor.execute(self._delete, (op.handle, name, op.raw))
        return bool(cursor.rowcount == 1)

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        # PostgresStorage's connection is in autocommit: each statement is atomic.
        with self._storage.db() as cursor:
            return [self._apply(cursor, op) for op in ops]


class _SqliteTable(_SqlTable):
    """On SQLite the dead-letter table is in the same database: one transaction
    per chunk removes a message and writes its dead letter together."""

    def __init__(
        self, storage: SqliteStorage, table: str, label: str, backend: SqliteBackend
    ) -> None:
        super().__init__(storage, table, label, "?")
        self._backend = backend

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage.db(commit=True) as cursor:
            return [self._apply(cursor, op) for op in ops]

    def settle(self, ops: Sequence[_Op], store: DeadLetterStore) -> list[DeadLetter | bool]:
        self._backend.ensure_table()
        settled: list[DeadLetter | bool] = []
        with self._storage.db(commit=True) as cursor:
            for op in ops:
                if not self._apply(cursor, op):
                    settled.append(False)
                elif op.rejected is not None:
                    settled.append(self._backend.insert(cursor, op.raw, op.rejected))
                else:
                    settled.append(True)
        return settled


class _Directory(Area):
    """FileStorage: one file per message, rewritten under the storage's lock."""

    def __init__(self, storage: FileStorage, path: str, label: str) -> None:
        self._lock = storage.lock
        self._path = path
        self.label = label

    def _names(self) -> list[str]:
        try:
            names = os.listdir(self._path)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.endswith(".tmp"))

    def items(self) -> list[tuple[Any, bytes]]:
        with self._lock:
            items = []
            for name in self._names():
                with open(os.path.join(self._path, name), "rb") as f:
                    items.append((name, f.read()))
            return items

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._lock:
            return [self._swap_one(op) for op in ops]

    def _swap_one(self, op: _Op) -> bool:
        path = os.path.join(self._path, op.handle)
        try:
            with open(path, "rb") as f:
                if f.read() != op.raw:
                    return False
        except FileNotFoundError:
            return False
        if op.new is None:
            os.remove(path)
            return True
        partial = f"{path}.vt-migrate.tmp"  # ".tmp": FileStorage skips it when listing
        with open(partial, "wb") as f:
            f.write(op.new)
        os.replace(partial, path)
        return True


class _MemoryQueue(Area):
    """MemoryStorage's heap of ``(priority, counter, data)``: in-process only."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage._lock:
            return [(counter, data) for _, counter, data in sorted(self._storage._queue)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage._lock:
            heap = self._storage._queue
            where = {entry[1]: index for index, entry in enumerate(heap)}
            done, removed = [], set()
            for op in ops:
                index = where.get(op.handle)
                found = index is not None and heap[index][2] == op.raw
                if found and op.new is not None:
                    # Same (priority, counter) key: the heap stays a heap.
                    heap[index] = (heap[index][0], op.handle, op.new)
                elif found:
                    removed.add(index)
                done.append(found)
            if removed:
                heap[:] = [entry for i, entry in enumerate(heap) if i not in removed]
                heapq.heapify(heap)
            return done


class _MemorySchedule(Area):
    """MemoryStorage's heap of ``(timestamp, data)``: in-process only."""

    label = "schedule"

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage._lock:
            return [(ts, data) for ts, data in sorted(self._storage._schedule)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage._lock:
            heap = self._storage._schedule
            done = []
            for op in ops:
                index = next(
                    (i for i, entry in enumerate(heap) if entry == (op.handle, op.raw)), None
                )
                if index is not None and op.new is not None:
                    heap[index] = (op.handle, op.new)
                elif index is not None:
                    heap.pop(index)
                done.append(index is not None)
            heapq.heapify(heap)
            return done
