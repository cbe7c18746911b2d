"""Fleet awareness: every running consumer says which tasks and versions it runs.

A consumer publishes a small JSON record (its id, host, pid, start time, app
build, and ``{logical task name: current version}``) when it starts, again
every ``fleet_interval`` seconds from a daemon thread, and removes it when it
stops. A record not refreshed for three intervals is stale: readers ignore it
and delete it, so a consumer killed outright drops out of the fleet by itself.

Where the records live:

- Redis storages: a hash ``huey.fleet.<queue>``, one field per consumer; its
  clock is Redis's own (``TIME``), so hosts' clocks need not agree.
- SQLite and PostgreSQL: rows of Huey's key-value table under the queue's
  name, keys ``vt.fleet.<id>``.
- MemoryStorage: keys ``vt.fleet.<id>`` of its key-value store (one process).
- FileStorage: files under ``<path>/fleet/``.

Publishing is on by default for Redis storages only (``VersionedHuey(...,
fleet=None)``); ``fleet=True`` turns it on for the others. Reading
(:func:`live_workers`, :func:`readable_versions`) works on every storage
whatever the local setting: a producer that runs no consumer still sees the
consumers that publish.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from huey.consumer import Consumer, Worker

from .._version import __version__
from ..exceptions import ConfigurationError
from ..storage.adapters import adapter_for
from ..storage.fleet_board import STALE_AFTER, Board

if TYPE_CHECKING:
    from .huey import VersionedHuey

__all__ = [
    "DEFAULT_FLEET_INTERVAL",
    "STALE_AFTER",
    "FleetConsumer",
    "Heartbeat",
    "WorkerInfo",
    "live_workers",
    "readable_versions",
]

logger = logging.getLogger("versioned_tasks")

#: Seconds between two heartbeats of a consumer, by default.
DEFAULT_FLEET_INTERVAL: Final = 10.0
#: How long stop() waits for a heartbeat in flight before removing the record.
_JOIN_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class WorkerInfo:
    """One live consumer of the queue, as it last published itself.

    Attributes:
        id: ``host:pid:random``, unique per consumer process start.
        host: the host name.
        pid: the consumer's process id.
        started_at: when the consumer started (timezone-aware UTC).
        last_seen: its last heartbeat (timezone-aware UTC).
        build: the app's ``app_build``, if set.
        tasks: logical task name -> the version this consumer runs.
        interval: seconds between its heartbeats.
        library: the versioned_tasks release it runs.
    """

    id: str
    host: str
    pid: int
    started_at: datetime.datetime
    last_seen: datetime.datetime
    build: str | None
    tasks: Mapping[str, int] = field(default_factory=dict)
    interval: float = DEFAULT_FLEET_INTERVAL
    library: str | None = None

    def __repr__(self) -> str:
        return f"<WorkerInfo {self.id} build={self.build!r} tasks={len(self.tasks)}>"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "build": self.build,
            "tasks": dict(self.tasks),
            "interval": self.interval,
            "library": self.library,
        }


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def _parse(data: bytes) -> tuple[WorkerInfo, float] | None:
    """A record and its last-seen timestamp, or None for one that makes no sense."""
    try:
        record = orjson.loads(data)
        tasks = record["tasks"]
        last_seen, interval = float(record["last_seen"]), float(record["interval"])
        info = WorkerInfo(
            id=str(record["id"]),
            host=str(record["host"]),
            pid=int(record["pid"]),
            started_at=_utc(float(record["started_at"])),
            last_seen=_utc(last_seen),
            build=record.get("build") if type(record.get("build")) is str else None,
            tasks={str(name): version for name, version in tasks.items() if type(version) is int},
            interval=interval,
            library=record.get("library") if type(record.get("library")) is str else None,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return info, last_seen


# -- reading ------------------------------------------------------------------------------


def live_workers(huey: VersionedHuey) -> list[WorkerInfo]:
    """The consumers of the app's queue that published a heartbeat recently,
    oldest first. Stale records (three intervals without a heartbeat) are
    ignored and deleted."""
    board = adapter_for(huey.storage).fleet_board()
    if board is None:
        return []
    now = board.now()
    live: list[WorkerInfo] = []
    for key, data in board.records():
        parsed = _parse(data)
        if parsed is None:
            continue
        info, last_seen = parsed
        if now - last_seen > STALE_AFTER * max(info.interval, 0.0):
            board.remove(key)
        else:
            live.append(info)
    return sorted(live, key=lambda info: (info.started_at, info.id))


def readable_versions(huey: VersionedHuey) -> dict[str, int]:
    """For each logical task that every live consumer knows, the lowest of their
    versions: the highest version all of them read. Empty with no live consumer."""
    return versions_all_read(live_workers(huey))


def versions_all_read(workers: list[WorkerInfo]) -> dict[str, int]:
    """The highest version of each task that every one of ``workers`` reads."""
    if not workers:
        return {}
    names = set(workers[0].tasks).intersection(*(w.tasks for w in workers[1:]))
    return {name: min(w.tasks[name] for w in workers) for name in sorted(names)}


# -- publishing ---------------------------------------------------------------------------


class Heartbeat:
    """Publishes one consumer's record now and every ``interval`` seconds, until stopped."""

    def __init__(self, huey: VersionedHuey, board: Board, interval: float) -> None:
        self.huey = huey
        self.board = board
        self.interval = float(interval)
        host = socket.gethostname()
        self.id = f"{host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._host = host
        self._started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Run (each guarded) from the heartbeat thread after every beat.
        self.after_beat: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"<Heartbeat {self.id} every {self.interval:g}s>"

    def record(self, now: float) -> bytes:
        """This consumer's record as published at ``now``."""
        if self._started_at is None:
            self._started_at = now
        return orjson.dumps(
            {
                "id": self.id,
                "host": self._host,
                "pid": os.getpid(),
                "started_at": self._started_at,
                "last_seen": now,
                "interval": self.interval,
                "build": self.huey.message_writer.build,
                "tasks": {name: spec.version for name, spec in self.huey.schema.specs.items()},
                "library": __version__,
            }
        )

    def beat(self) -> None:
        """Publish the record once."""
        self.board.publish(self.id, self.record(self.board.now()), self.interval)

    def start(self) -> None:
        """Publish now, then from a daemon thread every interval."""
        self._safely(self.beat)
        self._thread = threading.Thread(
            target=self._run, name=f"versioned-tasks-heartbeat-{self.id}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._safely(self.beat)
            for task in self.after_beat:
                self._safely(task)

    def stop(self) -> None:
        """Stop publishing and remove the record."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)
        self._safely(lambda: self.board.remove(self.id))

    def _safely(self, action: Callable[[], object]) -> None:
        # A storage hiccup must never stop the consumer: the record just ages,
        # and a consumer absent from the fleet only makes producers cautious.
        try:
            action()
        except Exception:
            logger.warning("Fleet heartbeat of %s failed.", self.id, exc_info=True)


class FleetWorker(Worker):  # type: ignore[misc]
    """Huey's worker; on the way out it makes the in-flight settlements it still owes."""

    def shutdown(self) -> None:
        """Run Huey's shutdown hooks, then settle what this worker still owes."""
        super().shutdown()
        inflight = self.huey.inflight
        slot = inflight.current_slot() if inflight is not None else None
        if slot is None or not (slot.pending or slot.ran):
            return
        try:
            self.huey.settle_owed(slot)
            inflight.flush_ran(slot)
        except Exception:
            logger.error(
                "Worker stopped owing %d in-flight settlement(s) in %s: those messages run "
                "again once another consumer recovers this consumer's lists.",
                len(slot.pending) + len(slot.ran),
                slot.key,
                exc_info=True,
            )


class FleetConsumer(Consumer):  # type: ignore[misc]
    """Huey's consumer, publishing a heartbeat between ``start()`` and ``stop()``.

    With reliable fetch, the heartbeat is published before any worker pops,
    and after each beat the consumer names its workers' in-flight lists and
    pushes back to the queue the lists of consumers that are gone.
    """

    worker_class = FleetWorker

    def __init__(self, huey: VersionedHuey, *, heartbeat: Heartbeat, **options: Any) -> None:
        self.heartbeat = heartbeat
        super().__init__(huey, **options)

    def start(self) -> None:
        """Start the workers and the scheduler, then the heartbeat."""
        inflight = self.huey.inflight
        if inflight is not None and inflight.consumer_id is not None:
            raise ConfigurationError(
                f"This app already runs a consumer in this process ({inflight.consumer_id}); "
                f"with reliable fetch an app keeps one set of in-flight lists: stop that "
                f"consumer first, or give the second consumer an app of its own."
            )
        if inflight is not None and self._server_supports_reliable(inflight):
            # Huey installs its signal handlers at the end of start(); with the
            # record published first, a SIGINT in between must already stop
            # the consumer gracefully rather than kill the process.
            self._set_signal_handlers()
            # Seen live before any list of ours exists, so no one recovers it.
            self.heartbeat._safely(self.heartbeat.beat)
            inflight.start(self.heartbeat.id, self._worker_names())
            self.heartbeat.after_beat.append(self.keep_in_flight)
            self.heartbeat._safely(self.keep_in_flight)
        super().start()
        self.heartbeat.start()

    @staticmethod
    def _server_supports_reliable(inflight: Any) -> bool:
        try:
            supported = bool(inflight.server_supported())
        except Exception:
            return True  # Redis unreachable: the workers' pops will say so
        if supported:
            return True
        if inflight.required:
            raise ConfigurationError(
                "reliable=True needs Redis 6.2 or later (LMOVE, BLMOVE); upgrade the "
                "server or drop reliable=True."
            )
        logger.warning(
            "This Redis is older than 6.2 (no LMOVE/BLMOVE): workers pop without reliable "
            "fetch, as plain Huey does; a task running when its worker dies is lost."
        )
        return False

    def _worker_names(self) -> list[str]:
        return [str(process.name) for _, process in self.worker_threads]

    def keep_in_flight(self) -> int:
        """Register this consumer's in-flight lists; push back those of consumers
        that are gone. Returns how many messages went back to the queue."""
        inflight = self.huey.inflight
        if inflight is None:
            return 0
        own = self.heartbeat.id
        inflight.register(own, self._worker_names())

        def alive() -> set[str]:
            return {info.id for info in live_workers(self.huey)} | {own}

        moved = int(inflight.recover_gone(alive))
        if moved:
            logger.warning(
                "Recovered %d in-flight message(s) of stopped consumers to the queue.", moved
            )
        return moved

    def stop(self, graceful: bool = False) -> None:
        """Stop as Huey does, then stop the heartbeat and remove this consumer's record."""
        try:
            super().stop(graceful)
            self._release_in_flight()
        finally:
            self.heartbeat.stop()

    def _release_in_flight(self) -> None:
        # Workers that have stopped hold nothing that will still settle: what
        # they left (an interrupted task) goes back to the queue now. A worker
        # still running keeps its list, recovered once this consumer is gone.
        inflight = self.huey.inflight
        if inflight is None or inflight.consumer_id != self.heartbeat.id:
            return
        stopped = [
            str(process.name)
            for _, process in self.worker_threads
            if not self.environment.is_alive(process)
        ]
        inflight.stop()
        self.heartbeat._safely(
            lambda: self._log_released(inflight.release(self.heartbeat.id, stopped))
        )

    @staticmethod
    def _log_released(moved: int) -> None:
        if moved:
            logger.warning("Put %d interrupted in-flight message(s) back on the queue.", moved)
