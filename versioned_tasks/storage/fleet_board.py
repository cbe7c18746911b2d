"""Fleet boards: where each storage keeps the consumers' heartbeat records.

A Redis hash, rows of Huey's SQL key-value table, keys of a MemoryStorage, or one
file per consumer under a FileStorage's path.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Final, Protocol

import orjson
from huey.storage import FileStorage, RedisStorage

__all__ = [
    "STALE_AFTER",
    "Board",
    "FileBoard",
    "MemoryBoard",
    "RedisBoard",
    "SqlBoard",
]

#: A record older than this many of its own intervals is stale.
STALE_AFTER: Final = 3
#: The Redis hash outlives its last writer by at least this long (seconds).
_HASH_TTL: Final = 24 * 3600
_KEY_PREFIX: Final = "vt.fleet."


# -- where records live -------------------------------------------------------------------


class Board(Protocol):
    """Where the consumers of one queue publish their heartbeat records."""

    def now(self) -> float: ...
    def publish(self, worker_id: str, data: bytes, interval: float) -> None: ...
    def remove(self, worker_id: str) -> None: ...
    def records(self) -> list[tuple[str, bytes]]: ...


class RedisBoard:
    """A hash ``huey.fleet.<name>``: one field per consumer."""

    def __init__(self, storage: RedisStorage) -> None:
        self._conn = storage.conn
        self.key = f"huey.fleet.{storage.name}"

    def now(self) -> float:
        seconds, micros = self._conn.time()
        return float(seconds) + float(micros) / 1e6

    def publish(self, worker_id: str, data: bytes, interval: float) -> None:
        pipe = self._conn.pipeline(transaction=True)
        pipe.hset(self.key, worker_id, data)
        # Only so that the hash of a fleet that died without stopping goes away.
        pipe.expire(self.key, int(max(_HASH_TTL, STALE_AFTER * interval + 1)))
        pipe.execute()

    def remove(self, worker_id: str) -> None:
        self._conn.hdel(self.key, worker_id)

    def records(self) -> list[tuple[str, bytes]]:
        return [(k.decode(), bytes(v)) for k, v in self._conn.hgetall(self.key).items()]


class _KeyValueBoard:
    """Keys ``vt.fleet.<id>`` of the storage's own key-value store."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def now(self) -> float:
        return time.time()

    def publish(self, worker_id: str, data: bytes, interval: float) -> None:
        self.storage.put_data(_KEY_PREFIX + worker_id, data)

    def remove(self, worker_id: str) -> None:
        self.storage.pop_data(_KEY_PREFIX + worker_id)

    def records(self) -> list[tuple[str, bytes]]:
        raise NotImplementedError


class SqlBoard(_KeyValueBoard):
    """Rows of Huey's key-value table (SQLite ``kv``, PostgreSQL ``<prefix>_kv``)."""

    def __init__(self, storage: Any, table: str, placeholder: str) -> None:
        super().__init__(storage)
        self._table = table
        self._p = placeholder

    def records(self) -> list[tuple[str, bytes]]:
        storage, table, p = self.storage, self._table, self._p
        # A key range rather than LIKE, whose '_' is a wildcard; '/' follows '.'.
        rows = storage.sql(
            f"select key, value from {table} where queue = {p} and key >= {p} and key < {p}",
            (storage.name, _KEY_PREFIX, _KEY_PREFIX[:-1] + "/"),
            results=True,
        )
        return [(str(key)[len(_KEY_PREFIX) :], bytes(value)) for key, value in rows]


class MemoryBoard(_KeyValueBoard):
    """Keys of a MemoryStorage's key-value store: a fleet of one process."""

    def records(self) -> list[tuple[str, bytes]]:
        with self.storage._lock:
            items = list(self.storage._results.items())
        return [
            (key[len(_KEY_PREFIX) :], bytes(value))
            for key, value in items
            if isinstance(key, str) and key.startswith(_KEY_PREFIX)
        ]


class FileBoard:
    """One file per consumer under ``<path>/fleet/``, replaced atomically."""

    def __init__(self, storage: FileStorage) -> None:
        self._dir = os.path.join(storage.path, "fleet")

    def now(self) -> float:
        return time.time()

    def publish(self, worker_id: str, data: bytes, interval: float) -> None:
        os.makedirs(self._dir, exist_ok=True)
        path = os.path.join(self._dir, _file_name(worker_id))
        partial = f"{path}.partial"
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)

    def remove(self, worker_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self._dir, _file_name(worker_id)))

    def records(self) -> list[tuple[str, bytes]]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self._dir, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            worker_id = _worker_id(data)
            if worker_id is not None:
                found.append((worker_id, data))
        return found


def _worker_id(data: bytes) -> str | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    worker_id = obj.get("id") if isinstance(obj, dict) else None
    return worker_id if isinstance(worker_id, str) else None


def _file_name(worker_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in worker_id) + ".json"
