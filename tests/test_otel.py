"""OpenTelemetry: the producer's trace context travels in the envelope header, and
the worker's spans are its children, across a real consumer on Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from helpers import REDIS_URL, flush_redis_name, queued, require_redis
from observability_support import (
    NEW_NAME,
    OLD_NAME,
    UNHANDLED,
    declare_new,
    declare_old,
    run_migration,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from versioned_tasks import VersionedMemoryHuey, VersionedRedisHuey
from versioned_tasks.contrib.otel import instrument


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def redis_queue(queue_name: str) -> Iterator[str]:
    require_redis()
    yield queue_name
    flush_redis_name(queue_name)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_worker_spans_are_children_of_the_producer_spans(
    redis_queue: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A renamed v1 message runs upcast in a span under the producer's span, with
    from_version and renamed_from; a dead-lettered one gets a span with the event."""
    provider, exporter = spans
    tracer = provider.get_tracer("shop")
    old = VersionedRedisHuey(redis_queue, url=REDIS_URL, blocking=False)
    tasks = declare_old(old)
    instrument(old, tracer_provider=provider)
    with tracer.start_as_current_span("checkout"):
        bill = tasks["send_bill"](7)
    with tracer.start_as_current_span("cleanup"):
        legacy = tasks["legacy"](1)
    new = declare_new(VersionedRedisHuey(redis_queue, url=REDIS_URL, blocking=False))
    instrument(new.app, tracer_provider=provider)
    new.app.storage.enqueue(b"junk")
    tasks["export"](3)  # enqueued with no span current; its tombstone's handler takes it

    run_migration(new)

    finished = by_name(exporter)
    checkout, cleanup = finished["checkout"], finished["cleanup"]
    run = finished[NEW_NAME]
    assert run.parent is not None
    assert run.parent.span_id == checkout.context.span_id
    assert run.context.trace_id == checkout.context.trace_id
    assert run.kind == SpanKind.CONSUMER
    assert dict(run.attributes or {}) == {
        "task": NEW_NAME,
        "version": 2,
        "task_id": bill.id,
        "from_version": 1,
        "renamed_from": OLD_NAME,
    }

    dead = finished[UNHANDLED]
    assert dead.parent is not None
    assert dead.parent.span_id == cleanup.context.span_id
    (event,) = dead.events
    assert event.name == "dead_lettered"
    assert (event.attributes or {})["reason"] == "retired"
    assert dead.status.status_code == StatusCode.ERROR
    assert (dead.attributes or {})["task_id"] == legacy.id

    junk = finished["versioned_tasks.message"]
    assert junk.parent is None
    assert [e.name for e in junk.events] == ["dead_lettered"]


def test_the_trace_context_is_a_header_field_and_old_readers_ignore_it(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The header carries ``trace`` (traceparent); an app without OpenTelemetry
    reads and runs the message as before."""
    provider, _ = spans
    producer = VersionedMemoryHuey("otel")
    instrument(producer, tracer_provider=provider)

    @producer.versioned_task(version=1, name="shop.ship")
    def ship(order: int) -> int:
        return order * 2

    with provider.get_tracer("shop").start_as_current_span("order") as span:
        ship(21)
    (raw,) = queued(producer)
    header = orjson.loads(raw[4 : raw.index(b"\n")])
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert header["trace"]["traceparent"].split("-")[1] == trace_id

    plain = VersionedMemoryHuey("otel")
    plain.storage = producer.storage

    @plain.versioned_task(version=1, name="shop.ship")
    def ship_here(order: int) -> int:
        return order * 2

    task = plain.dequeue()
    assert task is not None
    assert plain.execute(task) == 42


def test_without_opentelemetry_installed_nothing_is_written() -> None:
    """With OpenTelemetry not importable at all, the library imports and works, and
    writes no ``trace`` field (a message round trip in a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import importlib.abc
        import sys


        class NoOpenTelemetry(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None


        sys.meta_path.insert(0, NoOpenTelemetry())
        from versioned_tasks import VersionedMemoryHuey

        huey = VersionedMemoryHuey("plain")

        @huey.versioned_task(version=1, name="shop.ship")
        def ship(order: int) -> int:
            return order * 2

        ship(21)
        (raw,) = huey.storage.enqueued_items()
        assert b'"trace"' not in raw, raw
        assert huey.execute(huey.dequeue()) == 42
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_the_core_never_imports_opentelemetry_or_prometheus() -> None:
    """Only ``versioned_tasks.contrib`` names the optional packages."""
    root = Path(__file__).resolve().parent.parent / "versioned_tasks"
    for path in root.rglob("*.py"):
        if "contrib" in path.parts:
            continue
        text = path.read_text()
        for package in ("opentelemetry", "prometheus_client"):
            assert f"import {package}" not in text, path
            assert f"from {package}" not in text, path
