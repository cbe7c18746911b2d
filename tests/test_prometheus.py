"""Prometheus metrics, read back from a real ``/metrics`` scrape over HTTP: thread
workers on every storage, and process workers in multiprocess mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import MakeHuey, wait_for
from observability_support import (
    HANDLED,
    NEW_NAME,
    OLD_NAME,
    UNHANDLED,
    declare_new,
    declare_old,
    run_migration,
    write_old_messages,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from versioned_tasks import VersionedSqliteHuey
from versioned_tasks.contrib.prometheus import UNKNOWN_TASK, instrument, serve_metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by name and sorted labels."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def registry() -> Iterator[tuple[CollectorRegistry, int]]:
    """A fresh registry served on a free port for the test."""
    registry = CollectorRegistry()
    server = serve_metrics(0, addr="127.0.0.1", registry=registry)
    yield registry, server.server_port
    server.shutdown()
    server.server_close()


def test_a_migration_is_counted_and_the_gauges_read_the_storage(
    make_huey: MakeHuey, registry: tuple[CollectorRegistry, int]
) -> None:
    """Through a real consumer: reads by name, version and fate, the upcast, the dead
    letters and a deferral are counted; the gauges show the store and the queue."""
    reg, port = registry
    write_old_messages(make_huey())
    newer = make_huey()

    @newer.versioned_task(version=3, name=NEW_NAME)
    def send_invoice(invoice_id: int, currency: str, channel: str) -> None: ...

    send_invoice(9, "USD", "mail")
    new = declare_new(make_huey())
    instrument(new.app, registry=reg)
    instrument(new.app, registry=reg)  # a second call changes nothing
    run_migration(new, workers=1, extra=lambda: bool(new.app.deferral_counts()))

    samples = scrape(port)
    read = "versioned_tasks_messages_read_total"
    assert value(samples, read, task=OLD_NAME, version="1", outcome="task") == 1
    assert value(samples, read, task=HANDLED, version="1", outcome="retired") == 1
    assert value(samples, read, task=UNHANDLED, version="1", outcome="dead_letter") == 1
    assert value(samples, read, task=UNKNOWN_TASK, version="", outcome="dead_letter") == 1
    # The newer message: handed back to the queue for another worker once, then deferred.
    assert value(samples, read, task=NEW_NAME, version="3", outcome="requeued") == 1
    assert value(samples, read, task=NEW_NAME, version="3", outcome="deferred") == 1
    upcasts = "versioned_tasks_upcasts_total"
    assert value(samples, upcasts, task=NEW_NAME, from_version="1", to_version="2") == 1
    dead = "versioned_tasks_dead_letters_total"
    assert value(samples, dead, task=UNKNOWN_TASK, reason="undecodable") == 1
    assert value(samples, dead, task=UNHANDLED, reason="retired") == 1
    assert value(samples, "versioned_tasks_deferrals_total", task=NEW_NAME) == 1
    reads = sum(v for (name, _), v in samples.items() if name == read)
    assert reads == 6
    assert value(samples, "versioned_tasks_read_seconds_count") == reads
    assert (value(samples, "versioned_tasks_read_seconds_sum") or 0) > 0

    queue = new.app.name
    stored = "versioned_tasks_dead_letters_stored"
    assert value(samples, stored, queue=queue, reason="undecodable") == 1
    assert value(samples, stored, queue=queue, reason="retired") == 1
    assert value(samples, "versioned_tasks_queue_length", queue=queue) == 0
    assert value(samples, "versioned_tasks_schedule_length", queue=queue) == 1  # the deferral


def test_replays_are_counted_and_the_stored_gauge_follows(
    make_huey: MakeHuey, registry: tuple[CollectorRegistry, int]
) -> None:
    """A replay counts under the task's name on the wire; the gauge drops to zero."""
    reg, port = registry
    send_bill = declare_old(make_huey())["send_bill"]
    before = make_huey()
    send_bill(3)
    assert before.dequeue() is None
    (entry,) = before.dead_letters
    today = declare_new(make_huey())
    instrument(today.app, registry=reg)
    stored = "versioned_tasks_dead_letters_stored"
    assert value(scrape(port), stored, queue=today.app.name, reason="unknown_task") == 1
    today.app.dead_letters.replay(entry.id)
    samples = scrape(port)
    assert value(samples, "versioned_tasks_replays_total", task=OLD_NAME) == 1
    assert value(samples, stored, queue=today.app.name, reason="unknown_task") is None
    assert value(samples, "versioned_tasks_queue_length", queue=today.app.name) == 1


def test_two_apps_share_a_registry(
    tmp_path: Path, registry: tuple[CollectorRegistry, int]
) -> None:
    """Several apps in one process: one set of metrics, gauges per queue."""
    reg, port = registry
    first = VersionedSqliteHuey("first", filename=str(tmp_path / "a.db"))
    second = VersionedSqliteHuey("second", filename=str(tmp_path / "b.db"))
    instrument(first, registry=reg)
    instrument(second, registry=reg)
    second.storage.enqueue(b"junk")
    assert second.dequeue() is None
    samples = scrape(port)
    stored = "versioned_tasks_dead_letters_stored"
    assert value(samples, stored, queue="second", reason="undecodable") == 1
    assert value(samples, stored, queue="first", reason="undecodable") is None
    assert value(samples, "versioned_tasks_queue_length", queue="first") == 0


PROCESS_APP = """
import os
import time

from versioned_tasks import VersionedSqliteHuey
from versioned_tasks.contrib.prometheus import instrument

huey = VersionedSqliteHuey("billing", filename="billing.db")


@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str) -> None:
    time.sleep(0.05)  # busy workers: the others take the next messages


@huey.upcaster("billing.send_invoice", from_version=1)
def add_currency(payload: dict) -> dict:
    return {**payload, "currency": "EUR"}


huey.rename("billing.send_bill", "billing.send_invoice")
instrument(huey, port=int(os.environ["VT_METRICS_PORT"]), addr="127.0.0.1")
"""


PROCESS_FLAGS = ("-k", "process", "-w", "3", "-d", "0.05")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_process_workers_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    """``huey_consumer -k process`` with PROMETHEUS_MULTIPROC_DIR: the consumer
    serves /metrics (``instrument(huey, port=...)``) with the counts of every
    worker process added up."""
    (tmp_path / "app.py").write_text(PROCESS_APP)
    (tmp_path / "prom").mkdir()
    old = VersionedSqliteHuey("billing", filename=str(tmp_path / "billing.db"))
    send_bill = declare_old(old)["send_bill"]
    for n in range(40):
        send_bill(n)
    for _ in range(10):
        old.storage.enqueue(b"junk")
    port = free_port()
    env: dict[str, Any] = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "VT_METRICS_PORT": str(port),
    }
    log = tmp_path / "consumer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "app.huey", *PROCESS_FLAGS],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    read = "versioned_tasks_messages_read_total"
    try:

        def drained() -> bool:
            try:
                samples = scrape(port)
            except httpx.HTTPError:
                return False
            return (
                value(samples, read, task=OLD_NAME, version="1", outcome="task") == 40
                and value(samples, read, task=UNKNOWN_TASK, version="", outcome="dead_letter")
                == 10
            )

        wait_for(drained, timeout=60)
        samples = scrape(port)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    upcasts = "versioned_tasks_upcasts_total"
    assert value(samples, upcasts, task=NEW_NAME, from_version="1", to_version="2") == 40
    dead = "versioned_tasks_dead_letters_total"
    assert value(samples, dead, task=UNKNOWN_TASK, reason="undecodable") == 10
    assert value(samples, "versioned_tasks_read_seconds_count") == 50
    stored = "versioned_tasks_dead_letters_stored"
    assert value(samples, stored, queue="billing", reason="undecodable") == 10
    counters = [name for name in os.listdir(tmp_path / "prom") if name.startswith("counter_")]
    assert len(counters) >= 2, counters  # counted by more than one worker process
