"""Prometheus metrics for versioned_tasks apps (the ``prometheus`` extra).

::

    from versioned_tasks.contrib.prometheus import instrument

    instrument(huey, port=9100)   # /metrics served by the consumer on :9100

Counters (labels as listed):

- ``versioned_tasks_messages_read_total{task,version,outcome}``: every message a
  worker or the scheduler read, by its name and version on the wire and its
  fate: ``task`` (handed on to run), ``dead_letter``, ``deferred``, ``retired``
  (to a tombstone handler) or ``requeued``.
- ``versioned_tasks_upcasts_total{task,from_version,to_version}``
- ``versioned_tasks_dead_letters_total{task,reason}``
- ``versioned_tasks_deferrals_total{task}``
- ``versioned_tasks_replays_total{task}``

A histogram ``versioned_tasks_read_seconds`` of the read pipeline's time per
message, and gauges read from storage at scrape time:
``versioned_tasks_dead_letters_stored{queue,reason}``,
``versioned_tasks_queue_length{queue}`` and ``versioned_tasks_schedule_length{queue}``.

A task name a message carries but the app does not know (no task, rename or
tombstone of that name) is counted as ``(unknown)``, so that bad producers
cannot grow the number of series without bound.

Process workers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before
the consumer starts (``prometheus_client``'s multiprocess mode); each worker
process writes its counts there and the served ``/metrics`` adds them up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from huey.api import Task
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..app.huey import VersionedHuey
from ..app.observe import Observer, ReadInfo, read_info
from ..messages.actions import SIGNAL_DEFERRED, Action, DeferredMessage
from ..messages.events import (
    SIGNAL_DEAD_LETTERED,
    SIGNAL_REPLAYED,
    SIGNAL_UPCAST,
    DeadLetteredMessage,
    ReplayedMessage,
    UpcastMessage,
)
from ..messages.readwrite import Outcome
from ..storage.reason_counts import count_by_reason

__all__ = ["UNKNOWN_TASK", "instrument", "serve_metrics"]

logger = logging.getLogger("versioned_tasks.prometheus")

#: The ``task`` label of a name the app does not know.
UNKNOWN_TASK = "(unknown)"

#: Read-pipeline times are microseconds to milliseconds; the tail shows slow upcasters.
_READ_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)

_lock = threading.Lock()
#: One set of metrics per registry, shared by every app instrumented into it.
_by_registry: dict[int, _Metrics] = {}


class _Metrics:
    """The counters and histogram of one registry, and its storage gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.read = Counter(
            "versioned_tasks_messages_read",
            "Messages read by workers and schedulers, by name and version on the wire "
            "and what became of them.",
            ["task", "version", "outcome"],
            registry=registry,
        )
        self.upcasts = Counter(
            "versioned_tasks_upcasts",
            "Messages upcast from an older version.",
            ["task", "from_version", "to_version"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "versioned_tasks_dead_letters",
            "Dead letters written, by task and reason.",
            ["task", "reason"],
            registry=registry,
        )
        self.deferrals = Counter(
            "versioned_tasks_deferrals",
            "Deferrals of messages newer than the worker knows.",
            ["task"],
            registry=registry,
        )
        self.replays = Counter(
            "versioned_tasks_replays",
            "Dead letters replayed onto the queue.",
            ["task"],
            registry=registry,
        )
        self.read_seconds = Histogram(
            "versioned_tasks_read_seconds",
            "Time of the read pipeline per message (bytes to a task or an action).",
            buckets=_READ_BUCKETS,
            registry=registry,
        )
        self.storage = StorageCollector()
        registry.register(self.storage)


def _metrics(registry: CollectorRegistry) -> _Metrics:
    with _lock:
        metrics = _by_registry.get(id(registry))
        if metrics is None or metrics.registry is not registry:
            metrics = _by_registry[id(registry)] = _Metrics(registry)
        return metrics


def instrument(
    huey: VersionedHuey,
    *,
    registry: CollectorRegistry | None = None,
    port: int | None = None,
    addr: str = "0.0.0.0",
) -> None:
    """Count what happens to ``huey``'s messages in Prometheus metrics.

    Args:
        huey: the app; call ``instrument`` once per app (again is a no-op).
            Several apps may share a registry.
        registry: where the metrics live (``prometheus_client``'s default
            registry when None).
        port: when given, ``/metrics`` is served on this port (and ``addr``)
            from the consumer's main process, once the app creates its consumer
            (``huey_consumer`` does); producers importing the same module serve
            nothing. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) it
            serves the sum over every worker process.
        addr: the address to serve on.
    """
    registry = REGISTRY if registry is None else registry
    metrics = _metrics(registry)
    marker = f"_vt_prometheus_{id(registry)}"
    if huey.__dict__.get(marker):
        return
    huey.__dict__[marker] = True
    metrics.storage.add(huey)
    observer = _Observer(huey, metrics, port, addr)
    huey.add_observer(observer)
    _connect(huey, metrics)


def _connect(huey: VersionedHuey, metrics: _Metrics) -> None:
    label = _Labeller(huey)

    def dead_lettered(signal: str, message: DeadLetteredMessage) -> None:
        metrics.dead_letters.labels(label(message.task), message.reason).inc()

    def upcast(signal: str, message: UpcastMessage) -> None:
        metrics.upcasts.labels(
            message.task, str(message.from_version), str(message.to_version)
        ).inc()

    def deferred(signal: str, message: DeferredMessage) -> None:
        metrics.deferrals.labels(label(message.task)).inc()

    def replayed(signal: str, message: ReplayedMessage) -> None:
        metrics.replays.labels(label(message.task)).inc()

    huey.signal(SIGNAL_DEAD_LETTERED)(dead_lettered)
    huey.signal(SIGNAL_UPCAST)(upcast)
    huey.signal(SIGNAL_DEFERRED)(deferred)
    huey.signal(SIGNAL_REPLAYED)(replayed)


class _Labeller:
    """The ``task`` label of a name on the wire: itself if the app knows it."""

    def __init__(self, huey: VersionedHuey) -> None:
        self._huey = huey

    def __call__(self, name: str | None) -> str:
        if not name:
            return UNKNOWN_TASK
        schema = self._huey.schema
        if (
            name in schema.specs
            or name in schema.renames
            or name in schema.tombstones
            or self._huey.plain_task(name) is not None
        ):
            return name
        return UNKNOWN_TASK


class _Observer(Observer):
    """Counts each read and times the read pipeline; starts the /metrics server."""

    def __init__(self, huey: VersionedHuey, metrics: _Metrics, port: int | None, addr: str):
        self._metrics = metrics
        self._label = _Labeller(huey)
        self._children: dict[ReadInfo, Any] = {}
        self._by_class: dict[type, Any] = {}
        self._port = port
        self._addr = addr

    def read(self, raw: bytes, outcome: Outcome, decision: Task | Action, seconds: float) -> None:
        # The common case first: a task read as it runs has the labels of its class.
        kind = type(outcome)
        if decision is outcome and "_vt_from" not in outcome.__dict__:
            child = self._by_class.get(kind)
            if child is None:
                child = self._by_class[kind] = self._child(read_info(outcome, decision))
        else:
            info = read_info(outcome, decision)
            child = self._children.get(info)
            if child is None:
                child = self._children[info] = self._child(info)
        child.inc()
        self._metrics.read_seconds.observe(seconds)

    def _child(self, info: ReadInfo) -> Any:
        version = "" if info.version is None else str(info.version)
        return self._metrics.read.labels(self._label(info.task), version, info.outcome)

    def consumer_created(self, consumer: Any) -> None:
        if self._port is not None:
            serve_metrics(self._port, addr=self._addr, registry=self._metrics.registry)


class StorageCollector(Collector):
    """Gauges read from each instrumented app's storage at scrape time: dead letters
    by reason, queue and schedule lengths. A storage that cannot be read is left out
    of that scrape (and logged), not failed."""

    def __init__(self) -> None:
        self.apps: list[VersionedHuey] = []

    def add(self, huey: VersionedHuey) -> None:
        """Read ``huey``'s storage too."""
        self.apps.append(huey)

    def describe(self) -> list[Metric]:
        # Named up front, so that registering the collector reads no storage.
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "versioned_tasks_dead_letters_stored",
            "Entries in the dead-letter store, by reason.",
            labels=["queue", "reason"],
        )
        yield GaugeMetricFamily(
            "versioned_tasks_queue_length", "Messages waiting on the queue.", labels=["queue"]
        )
        yield GaugeMetricFamily(
            "versioned_tasks_schedule_length",
            "Messages on the schedule (future etas, retries, deferrals).",
            labels=["queue"],
        )

    def collect(self) -> Iterator[Metric]:
        dead, queue, schedule = self._families()
        for huey in list(self.apps):
            _read_into(huey, "dead letters", _dead, dead)
            _read_into(huey, "queue", _queue_length, queue)
            _read_into(huey, "schedule", _schedule_length, schedule)
        yield from (dead, queue, schedule)


def _dead(huey: VersionedHuey, family: GaugeMetricFamily) -> None:
    for reason, count in sorted(count_by_reason(huey.dead_letters).items()):
        family.add_metric([huey.name, reason], count)


def _queue_length(huey: VersionedHuey, family: GaugeMetricFamily) -> None:
    family.add_metric([huey.name], huey.pending_count())


def _schedule_length(huey: VersionedHuey, family: GaugeMetricFamily) -> None:
    family.add_metric([huey.name], huey.scheduled_count())


def _read_into(
    huey: VersionedHuey,
    what: str,
    read: Callable[[VersionedHuey, GaugeMetricFamily], None],
    family: GaugeMetricFamily,
) -> None:
    try:
        read(huey, family)
    except Exception:
        logger.warning("Could not read the %s of %r for /metrics.", what, huey.name, exc_info=True)


_servers: dict[tuple[int, str], Any] = {}


def serve_metrics(
    port: int, *, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> Any:
    """Serve ``/metrics`` on ``port`` from a thread of this process, once per port.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set), it serves the sum of
    every process's counts plus the storage gauges of the apps instrumented into
    ``registry``; otherwise ``registry`` itself. Returns the server (its
    ``server_port`` is the port bound, for ``port=0``).
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        server = _servers.get((port, addr))
        if server is not None and port != 0:
            return server
        served = _served_registry(registry)
        server, _thread = start_http_server(port, addr=addr, registry=served)
        _servers[(port, addr)] = server
    logger.info("Serving Prometheus metrics on %s:%s/metrics.", addr, server.server_port)
    return server


def _served_registry(registry: CollectorRegistry) -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return registry
    served = CollectorRegistry()
    MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    metrics = _by_registry.get(id(registry))
    if metrics is not None:
        with contextlib.suppress(ValueError):
            served.register(metrics.storage)
    return served
