"""OpenTelemetry traces for versioned_tasks apps (the ``otel`` extra).

::

    from versioned_tasks.contrib.otel import instrument

    instrument(huey)   # in the producers and in the consumer

Producers write the W3C trace context of the span current at enqueue
(``traceparent``, ``tracestate``) into the envelope header's ``trace`` field
(docs/envelope.md). The worker runs each task inside a span named after the
task, a child of that context, with the attributes ``task``, ``version``,
``task_id``, ``from_version`` (when the message was upcast) and
``renamed_from`` (when it was written under an old name); a task that raises
marks its span as an error. A message dead-lettered when read gets a span of
its own, as a child of the producer's context, with a ``dead_lettered`` event
(``reason``, ``error``); a dead letter written during an execution (a
revocation record that cannot be read, a callback that cannot be written) is an
event of the execution's span.

Without ``instrument``, nothing is written to the header and OpenTelemetry is
never imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from huey.api import Task
from huey.signals import SIGNAL_ERROR
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._version import __version__
from ..app.huey import VersionedHuey
from ..app.observe import Observer
from ..messages.actions import Action, DeadLetterAction
from ..messages.events import SIGNAL_DEAD_LETTERED, DeadLetteredMessage
from ..messages.readwrite import Outcome, wire_origin

__all__ = ["TRACE_FIELD", "instrument"]

#: The envelope header field that carries the producer's W3C trace context.
TRACE_FIELD = "trace"
_TRACE_KEY = b'"trace"'

_propagator = TraceContextTextMapPropagator()


def instrument(huey: VersionedHuey, *, tracer_provider: TracerProvider | None = None) -> None:
    """Trace ``huey``'s messages from the producer's span to the worker's.

    Call it wherever the app is used: producers write the trace context, the
    consumer's workers read it. Again on the same app is a no-op.

    Args:
        huey: the app.
        tracer_provider: where spans go (OpenTelemetry's global provider when None).
    """
    if huey.__dict__.get("_vt_otel"):
        return
    tracer = trace.get_tracer("versioned_tasks", __version__, tracer_provider=tracer_provider)
    huey.__dict__["_vt_otel"] = True
    huey.add_observer(_Tracing(tracer))
    huey.signal(SIGNAL_ERROR)(_failed)
    huey.signal(SIGNAL_DEAD_LETTERED)(_dead_lettered_now)


class _Tracing(Observer):
    writes_header = True

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def header_fields(self) -> bytes:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        if not carrier:
            return b""  # no span is current: nothing to carry
        return b',"trace":' + orjson.dumps(carrier)

    def read(self, raw: bytes, outcome: Outcome, decision: Task | Action, seconds: float) -> None:
        carrier = _carrier(raw)
        if isinstance(decision, Task):
            if carrier is not None:
                decision.__dict__["_vt_trace"] = carrier
        elif isinstance(decision, DeadLetterAction):
            self._dead_letter_span(decision, carrier)

    def _dead_letter_span(self, action: DeadLetterAction, carrier: dict[str, str] | None) -> None:
        attributes: dict[str, Any] = {"task": action.task or "", "reason": action.reason}
        if action.version is not None:
            attributes["version"] = action.version
        if action.task_id is not None:
            attributes["task_id"] = action.task_id
        span = self._tracer.start_span(
            action.task or "versioned_tasks.message",
            context=_parent(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        span.add_event("dead_lettered", {"reason": action.reason, "error": action.error})
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {action.reason}"))
        span.end()

    @contextlib.contextmanager
    def execute(self, task: Task) -> Iterator[None]:
        spec = getattr(type(task), "_vt_spec", None)
        name = spec.name if spec is not None else f"{type(task).__module__}.{type(task).__name__}"
        attributes: dict[str, Any] = {"task": name, "task_id": str(task.id)}
        if spec is not None:
            attributes["version"] = spec.version
        origin = wire_origin(task)
        if origin is not None:
            old, version = origin
            if old != name:
                attributes["renamed_from"] = old
            if spec is not None and version is not None and version < spec.version:
                attributes["from_version"] = version
        with self._tracer.start_as_current_span(
            name,
            context=_parent(task.__dict__.get("_vt_trace")),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ):
            yield


def _parent(carrier: dict[str, str] | None) -> Context | None:
    return _propagator.extract(carrier) if carrier else None


def _carrier(raw: bytes) -> dict[str, str] | None:
    """The ``trace`` field of a message's header, read only when it is there."""
    head = bytes(raw[: raw.find(b"\n")]) if b"\n" in raw else b""
    if _TRACE_KEY not in head:
        return None
    start = head.find(b"{")
    try:
        header = orjson.loads(head[start:])
    except orjson.JSONDecodeError:
        return None
    value = header.get(TRACE_FIELD) if type(header) is dict else None
    if type(value) is not dict:
        return None
    return {k: v for k, v in value.items() if type(k) is str and type(v) is str} or None


def _failed(signal: str, task: Any, exc: BaseException | None = None, *args: Any) -> None:
    # Sent by Huey inside the execution, where the task's span is current.
    span = trace.get_current_span()
    if span.is_recording():
        if exc is not None:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__ if exc else "error"))


def _dead_lettered_now(signal: str, message: DeadLetteredMessage) -> None:
    # A dead letter written during an execution is an event of its span; one
    # written when read has a span of its own (see _Tracing.read).
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "dead_lettered",
            {
                "reason": message.reason,
                "error": message.error,
                "dead_letter_id": message.entry_id,
            },
        )
