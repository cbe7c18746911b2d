"""Hooks for integrations that watch every message (``versioned_tasks.contrib``).

An app keeps a list of observers, empty unless an integration adds one with
``huey.add_observer()``; the worker's read path and ``execute`` check that list
with one ``if``, so an app that nobody instruments pays nothing more. Counts of
dead letters, upcasts and the rest come from the library's Huey signals; the
hooks here are for what signals do not carry: the time each read took, and a
context around each execution (a tracing span).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from huey.api import Task

from ..messages.actions import Action, DeadLetterAction, DeferAction, HandlerAction
from ..messages.readwrite import Outcome, Retired, wire_origin

__all__ = ["Observer", "ReadInfo", "read_info"]


class Observer:
    """The base of an integration's hooks; every method does nothing by default.

    A hook that raises is logged and changes nothing for the message.
    """

    def read(self, raw: bytes, outcome: Outcome, decision: Task | Action, seconds: float) -> None:
        """A worker or scheduler read one stored message.

        Args:
            raw: the exact bytes read.
            outcome: what the read pipeline made of them.
            decision: the task to run, or the action to take.
            seconds: how long the read pipeline and the decision took.
        """

    @contextlib.contextmanager
    def execute(self, task: Task) -> Iterator[None]:
        """Wraps the worker's execution of ``task`` (Huey's ``execute``)."""
        yield

    #: Set by an observer that writes header fields (``header_fields``); at most
    #: one per app, since the envelope has one header.
    writes_header: bool = False

    def header_fields(self) -> bytes:
        """More header fields for a message being written, as bytes that start with
        a comma (``b',"trace":{...}'``), or empty. Called only when ``writes_header``."""
        return b""

    def consumer_created(self, consumer: Any) -> None:
        """The app created a consumer (``huey_consumer`` calls ``create_consumer``),
        in the consumer's main process, before it starts."""


class ReadInfo(NamedTuple):
    """A read message's identity and fate, for metric labels."""

    #: The task name on the wire ("" where unknown).
    task: str
    #: The version on the wire (None where unknown or unversioned).
    version: int | None
    #: ``task`` (handed to the worker to run), ``dead_letter``, ``deferred``,
    #: ``retired`` (to a tombstone handler) or ``requeued`` (the scheduler put
    #: it on the queue: a retired message, or a deferred one that came due).
    outcome: str


def read_info(outcome: Outcome, decision: Task | Action) -> ReadInfo:
    """Name, version and fate of a read message (see :class:`ReadInfo`)."""
    if isinstance(outcome, Task):
        origin = wire_origin(outcome)
        if origin is not None:
            return ReadInfo(origin[0], origin[1], "task")
        spec = getattr(type(outcome), "_vt_spec", None)
        if spec is not None:
            return ReadInfo(spec.name, spec.version, "task")
        kind = type(outcome)
        return ReadInfo(f"{kind.__module__}.{kind.__name__}", None, "task")
    if isinstance(outcome, Retired):
        name, version = outcome.message.task, outcome.message.version
    else:
        name, version = outcome.task or "", outcome.version
    if isinstance(decision, DeadLetterAction):
        fate = "dead_letter"
    elif isinstance(decision, DeferAction):
        fate = "deferred"
    elif isinstance(decision, HandlerAction):
        fate = "retired"
    else:
        fate = "requeued"
    return ReadInfo(name, version, fate)
