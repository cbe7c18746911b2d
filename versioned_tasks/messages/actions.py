"""What happens to a stored message that will not run now.

The read pipeline says what a message is; these say what to do with it. They
are plain values so that a storage can carry them out inside the same
transaction as the pop (see ``_atomic.py``) or one by one.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from .readwrite import Newer, Retired
from .reasons import Reason

__all__ = [
    "SIGNAL_DEFERRED",
    "Action",
    "DeadLetterAction",
    "DeferAction",
    "DeferredMessage",
    "HandlerAction",
    "RequeueAction",
    "log_fields",
]

#: The Huey signal sent once per deferral of a message newer than the worker
#: knows; receivers get ``(signal, deferred)`` with a :class:`DeferredMessage`.
SIGNAL_DEFERRED: Final = "deferred"

logger = logging.getLogger("versioned_tasks")


@dataclass(frozen=True, slots=True)
class DeadLetterAction:
    """Keep the exact bytes in the dead-letter store.

    ``done(entry_id)`` is called once the entry is stored (after the commit,
    where there is a transaction): it logs the dead letter and, through
    ``notify`` (set by the app), sends ``SIGNAL_DEAD_LETTERED``.
    """

    reason: Reason
    task: str | None
    version: int | None
    error: str
    #: The Huey task id, where known.
    task_id: str | None = None
    #: For a message of a tombstoned task: the tombstone's name.
    tombstone: str | None = None
    notify: Callable[[DeadLetterAction, str], None] | None = field(
        default=None, compare=False, repr=False
    )

    def log(self, entry_id: str) -> None:
        logger.info(
            "Dead-lettered %s (task %r, version %s): %s [entry %s]",
            self.reason,
            self.task,
            self.version,
            self.error,
            entry_id,
            extra=log_fields(
                "dead_lettered",
                task=self.task,
                version=self.version,
                reason=self.reason,
                task_id=self.task_id,
                dead_letter_id=entry_id,
            ),
        )

    def done(self, entry_id: str) -> None:
        """The entry is stored: log it, and send the signal where the app listens."""
        if self.notify is not None:
            self.notify(self, entry_id)
        else:
            self.log(entry_id)


def log_fields(
    event: str,
    *,
    task: str | None = None,
    version: int | None = None,
    from_version: int | None = None,
    reason: str | None = None,
    task_id: str | None = None,
    dead_letter_id: str | None = None,
    renamed_from: str | None = None,
) -> dict[str, Any]:
    """The structured ``extra`` of a log record about one message: every key, always
    (None where it does not apply), so that JSON formatters see one shape."""
    return {
        "event": event,
        "task": task,
        "version": version,
        "from_version": from_version,
        "reason": reason,
        "task_id": task_id,
        "dead_letter_id": dead_letter_id,
        "renamed_from": renamed_from,
    }


@dataclass(frozen=True, slots=True)
class DeferredMessage:
    """One deferral of a message newer than this worker knows, as the
    ``SIGNAL_DEFERRED`` receivers get it.

    Attributes:
        task: the message's task name on the wire.
        version: the message's schema version on the wire.
        known_version: the version this worker's code declares.
        id: the Huey task id (None if the header has none).
        eta: when the message is due again (naive, in the app's clock: UTC
            when ``utc=True``, as Huey keeps it).
        delay: seconds from now to ``eta``.
        age: seconds since the message was enqueued (its envelope's ``at``).
        detail: which part is too new (the message or one of its callbacks).
    """

    task: str
    version: int | None
    known_version: int
    id: str | None
    eta: datetime.datetime
    delay: float
    age: float
    detail: str

    @property
    def name(self) -> str:
        """The task name, as a Huey ``Task`` has one, for receivers of every signal."""
        return self.task


@dataclass(frozen=True, slots=True)
class DeferAction:
    """Put the exact bytes back on the schedule: a newer worker will take them.

    ``done`` is called once the bytes are on the schedule (after the commit,
    where there is a transaction): it counts the deferral and sends the signal.
    """

    eta: datetime.datetime
    newer: Newer
    delay: float = 0.0
    age: float = 0.0
    notify: Callable[[DeferredMessage], None] | None = field(
        default=None, compare=False, repr=False
    )

    def log(self) -> None:
        logger.info(
            "Deferred task %r version %s, id %s (this worker knows version %s) for %.1fs, "
            "until %s; it is %.0fs old.",
            self.newer.task,
            self.newer.version,
            self.newer.id,
            self.newer.known_version,
            self.delay,
            self.eta,
            self.age,
            extra=log_fields(
                "deferred",
                task=self.newer.task,
                version=self.newer.version,
                task_id=self.newer.id,
            ),
        )

    def message(self) -> DeferredMessage:
        """What the deferral's signal carries."""
        newer = self.newer
        return DeferredMessage(
            task=newer.task,
            version=newer.version,
            known_version=newer.known_version,
            id=newer.id,
            eta=self.eta,
            delay=self.delay,
            age=self.age,
            detail=newer.detail,
        )

    def done(self) -> None:
        """Count the deferral and send ``SIGNAL_DEFERRED``."""
        if self.notify is not None:
            self.notify(self.message())


@dataclass(frozen=True, slots=True)
class RequeueAction:
    """Put the exact bytes on the queue: a retired message the scheduler read (its
    handler runs in the worker), or a deferred newer message that came due."""

    priority: Any


@dataclass(frozen=True, slots=True)
class HandlerAction:
    """Hand a retired message to its tombstone's handler, in the worker."""

    retired: Retired


Action = DeadLetterAction | DeferAction | RequeueAction | HandlerAction
