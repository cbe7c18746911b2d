"""Reliable fetch on Redis: a popped message stays in an in-flight list until
its outcome is settled.

Huey pops a message and only then runs it: a worker killed in between loses
it. With reliable fetch a worker moves the message (``BLMOVE``) from the queue
into its own in-flight list, and removes those exact bytes (``LREM``) once
the outcome is stored: the task ran (whatever its result), or the message was
dead-lettered, deferred to the schedule, put back on the queue or handed to a
tombstone handler. Where the outcome is itself a Redis write, the write and
the ``LREM`` are one transaction. For a task that ran, the ``LREM`` rides on
the worker's next pop (one pipelined round trip: ``LREM`` then ``LMOVE``;
``BLMOVE`` only when the queue was empty), which Huey's worker makes as soon
as ``execute()`` returns, or at the worker's shutdown: reliable fetch then
costs no extra round trip per message.

Keys, under the queue's name:

- ``huey.inflight.<name>.<consumer id>/<worker name>``: one list per worker
  (thread or process) of one consumer start. Worker names are Huey's own
  (``Worker-1``, ...), which Huey reuses when it restarts a dead worker
  process: the new worker first puts back what its predecessor left.
- ``huey.inflight.<name>``: a set naming every such list, so recovery finds
  them without ``SCAN``. The consumer adds its workers' lists at start and at
  every heartbeat; a worker adds its own at its first pop.

Recovery: a list whose consumer no longer publishes a fleet heartbeat (see
``_fleet.py``; a consumer is gone after three missed beats) is pushed back to
the queue, one message at a time inside one Lua script, by every live
consumer at start and after each of its heartbeats. A list of a live consumer
is never touched by another consumer.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from huey.storage import RedisStorage

__all__ = [
    "RELIABLE_DEFAULT",
    "InflightLists",
    "Slot",
    "inflight_prefix",
    "is_transient",
]

#: What ``reliable=None`` means on RedisStorage and RedisExpireStorage.
RELIABLE_DEFAULT: Final = True
#: LMOVE and BLMOVE came with Redis 6.2.
_MIN_SERVER: Final = (6, 2)

#: Pushes every message of an in-flight list back to the queue, the oldest
#: to the front of the line (the end workers pop), and with ARGV[2] == "1"
#: drops the list from the registry. Returns how many moved.
_RECOVER_LUA: Final = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
    moved = moved + 1
end
if ARGV[2] == '1' then
    redis.call('SREM', KEYS[3], ARGV[1])
end
return moved
"""


def inflight_prefix(storage: RedisStorage) -> str:
    """The registry key; every in-flight list's key starts with it and a dot."""
    return f"huey.inflight.{storage.name}"


def _worker_name() -> str:
    # Huey names worker threads and worker processes "Worker-<n>" and keeps the
    # name when it restarts a dead one.
    process = multiprocessing.current_process().name
    return process if process != "MainProcess" else threading.current_thread().name


@dataclass
class Slot:
    """One worker's in-flight list, and the settlements it still owes."""

    key: str
    consumer: str
    pid: int
    #: The list may hold messages this worker does not know about: at its first
    #: pop (a dead predecessor's), or after a pop whose reply was lost.
    dirty: bool = True
    #: Bytes of tasks that ran, removed from the list with the next pop.
    ran: list[bytes] = field(default_factory=list)
    #: (raw, settle) still to do after a failed settle.
    pending: list[tuple[bytes, Any]] = field(default_factory=list)


class InflightLists:
    """The in-flight lists of one app on a Redis storage.

    ``start(consumer, workers)`` is called by the consumer (with its heartbeat
    id and its workers' names) before its workers start. Only those workers
    pop reliably; anywhere else (a ``huey.dequeue()`` outside a consumer, or
    beside one) ``slot()`` is None and the app pops as plain Huey does, since
    nothing would settle what it holds.
    """

    def __init__(self, storage: RedisStorage, *, required: bool = False) -> None:
        self.storage = storage
        #: ``reliable=True`` was asked for: an old Redis is an error, not a warning.
        self.required = required
        self.registry = inflight_prefix(storage)
        self._recover = storage.conn.register_script(_RECOVER_LUA)
        #: What ``get_connection`` takes: older redis-py releases require a
        #: command name, newer ones deprecate it.
        self._command_name = _command_name_argument(storage.conn.connection_pool)
        self._local = threading.local()
        self.consumer_id: str | None = None
        self.workers: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"<InflightLists {self.registry}>"

    def key_for(self, consumer: str, worker: str) -> str:
        """The in-flight list of ``worker`` of the consumer ``consumer``."""
        return f"{self.registry}.{consumer}/{worker}"

    def consumer_of(self, key: bytes | str) -> str | None:
        """The consumer id in an in-flight list's key, or None for a foreign key."""
        text = key.decode() if isinstance(key, bytes) else key
        prefix = self.registry + "."
        if not text.startswith(prefix) or "/" not in text:
            return None
        return text[len(prefix) :].split("/", 1)[0]

    def server_supported(self) -> bool:
        """Whether the server has LMOVE, BLMOVE and LPOS (Redis 6.2 or later)."""
        info = self.storage.conn.info("server")
        try:
            version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
        except (KeyError, ValueError):
            return True  # not Redis's numbering: let the commands speak for themselves
        return version >= _MIN_SERVER

    def start(self, consumer: str, workers: Iterable[str]) -> None:
        """From now on, these workers of ``consumer`` (in this process and its
        forked children) pop reliably."""
        self.workers = frozenset(workers)
        self.consumer_id = consumer

    def stop(self) -> None:
        """The consumer stopped: no more reliable pops in this process."""
        self.consumer_id = None

    # -- in the worker ---------------------------------------------------------------

    def slot(self) -> Slot | None:
        """This worker's list, while a consumer runs in this process."""
        consumer = self.consumer_id
        if consumer is None:
            return None
        slot: Slot | None = getattr(self._local, "slot", None)
        pid = os.getpid()
        if slot is None or slot.consumer != consumer or slot.pid != pid:
            worker = _worker_name()
            if worker not in self.workers:
                return None
            slot = Slot(self.key_for(consumer, worker), consumer, pid)
            self._local.slot = slot
        return slot

    def current_slot(self) -> Slot | None:
        """This thread's list as last used, even after its consumer stopped."""
        slot: Slot | None = getattr(self._local, "slot", None)
        return slot if slot is not None and slot.pid == os.getpid() else None

    def pop(self, slot: Slot) -> bytes | None:
        """Settle the tasks that ran and move the next message into the worker's
        list, waiting as Huey's dequeue does (``blocking``, ``read_timeout``)."""
        if slot.dirty:
            self._clean(slot)
        storage = self.storage
        try:
            raw = self._settle_and_pop(storage.queue_key, slot.key, slot.ran)
            slot.ran.clear()
            if raw is None and storage.blocking:
                raw = storage.conn.blmove(
                    storage.queue_key, slot.key, storage.read_timeout, "RIGHT", "LEFT"
                )
        except _timeout_error():
            # Empty or timed out, as in Huey; the server may still have moved one.
            slot.dirty = True
            return None
        except Exception:
            # A ConnectionError propagates for backoff, as in Huey.
            slot.dirty = True
            raise
        return raw

    def _settle_and_pop(self, queue: str, key: str, ran: list[bytes]) -> bytes | None:
        # One round trip, no transaction: each command is atomic on its own, and
        # a Lua script would cost Redis three times the CPU of the two commands.
        conn = self.storage.conn
        if not ran:
            raw: bytes | None = conn.lmove(queue, key, "RIGHT", "LEFT")
            return raw
        # Written on a pooled connection directly: redis-py's pipeline object
        # costs the worker more CPU than the two commands themselves. Any error
        # drops the connection, whose replies may then be out of step, and goes
        # up to pop(), which marks the list to be cleaned.
        commands: list[tuple[Any, ...]] = [("LREM", key, 1, done) for done in ran]
        commands.append(("LMOVE", queue, key, "RIGHT", "LEFT"))
        pool = conn.connection_pool
        connection = pool.get_connection(*self._command_name)
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            for _ in ran:
                connection.read_response()
            moved: bytes | None = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
        return moved

    def _clean(self, slot: Slot) -> None:
        # Once the settlements are made, what is left in the list is no task's
        # of this worker: a dead predecessor's (Huey restarts a worker under the
        # same name) or one whose pop reply was lost. Back to the queue with it.
        conn = self.storage.conn
        conn.sadd(self.registry, slot.key)
        self.flush_ran(slot)
        self._push_back(slot.key, unregister=False)
        slot.dirty = False

    def flush_ran(self, slot: Slot) -> None:
        """Remove the tasks that ran from the list now, without popping."""
        while slot.ran:
            self.storage.conn.lrem(slot.key, 1, slot.ran[0])
            slot.ran.pop(0)

    def remove(self, slot_key: str, raw: bytes, write: Callable[[Any], object]) -> None:
        """Settle one message: ``write`` (given a MULTI pipeline) and the LREM, atomically."""
        pipe = self.storage.conn.pipeline(transaction=True)
        write(pipe)
        pipe.lrem(slot_key, 1, raw)
        pipe.execute()

    def holds(self, slot_key: str, raw: bytes) -> bool:
        """Whether the list still holds ``raw`` (a settle that failed may have run)."""
        return self.storage.conn.lpos(slot_key, raw) is not None

    # -- in the consumer --------------------------------------------------------------

    def register(self, consumer: str, workers: Iterable[str]) -> None:
        """Name the lists of ``consumer``'s workers in the registry."""
        keys = [self.key_for(consumer, worker) for worker in workers]
        if keys:
            self.storage.conn.sadd(self.registry, *keys)

    def recover_gone(self, live: Callable[[], set[str]]) -> int:
        """Push back to the queue the lists of consumers not in ``live()``.

        The registry is read before the fleet: a consumer publishes its heartbeat
        before it registers a list, so a list seen here belongs to a consumer the
        fleet already shows, unless that consumer is gone.
        """
        keys = self.storage.conn.smembers(self.registry)
        if not keys:
            return 0
        alive = live()
        moved = 0
        for key in keys:
            consumer = self.consumer_of(key)
            if consumer is not None and consumer not in alive:
                moved += self._push_back(key, unregister=True)
        return moved

    def release(self, consumer: str, workers: Iterable[str]) -> int:
        """Push back and unregister the lists of ``consumer``'s stopped workers."""
        return sum(
            self._push_back(self.key_for(consumer, worker), unregister=True) for worker in workers
        )

    def _push_back(self, key: bytes | str, *, unregister: bool) -> int:
        moved = self._recover(
            keys=[key, self.storage.queue_key, self.registry], args=[key, int(unregister)]
        )
        return int(moved)


def _command_name_argument(pool: Any) -> tuple[str, ...]:
    try:
        parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        return ()
    if parameter is not None and parameter.default is inspect.Parameter.empty:
        return ("LMOVE",)
    return ()


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage could not be reached (a dropped connection,
    a timeout), as opposed to a refusal that would happen again on a retry."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is what reliable fetch runs on
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)


def _timeout_error() -> type[Exception]:
    from redis.exceptions import TimeoutError

    return TimeoutError
