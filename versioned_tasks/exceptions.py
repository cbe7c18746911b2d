"""Every error that versioned_tasks raises.

The tree::

    VersionedTaskError
     ├── InvalidArguments (also a ValueError)    arguments do not fit the task's model
     ├── SchemaError                             declarations that cannot work together
     ├── ConfigurationError                      an option or backend that cannot be used
     ├── EncodeError (also a TypeError)          a value the envelope cannot carry
     ├── DecodeError (also a ValueError)         bytes that are not a readable envelope
     ├── DeadLetterNotFound (also a KeyError)    no dead-letter entry with that id
     └── MessageRejected                         stored bytes that cannot become a task
          └── ReplayFailed                       a dead letter still cannot run

Each error keeps its subject as attributes (``task``, ``version``, ...) and says
in its message what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ConfigurationError",
    "DeadLetterNotFound",
    "DecodeError",
    "EncodeError",
    "InvalidArguments",
    "MessageRejected",
    "ReplayFailed",
    "SchemaError",
    "VersionedTaskError",
]


class VersionedTaskError(Exception):
    """The root of every error raised by versioned_tasks."""


class InvalidArguments(VersionedTaskError, ValueError):
    """Arguments that do not validate against the task's argument model.

    Raised at the producer (enqueue, ``.schedule()``, retries, pipeline steps)
    before anything is written to storage or any signal fires.

    Attributes:
        task: the logical task name.
        version: the task's schema version.
        errors: pydantic's error list (``loc``, ``msg``, ``type``, ...), or one
            synthetic entry for binding problems such as a duplicate argument.
    """

    def __init__(self, *, task: str, version: int, errors: Sequence[dict[str, Any]]) -> None:
        self.task = task
        self.version = version
        self.errors = list(errors)
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        for error in self.errors[:5]:
            loc = ".".join(str(p) for p in error.get("loc", ())) or "(arguments)"
            parts.append(f"{loc}: {error.get('msg', 'invalid')}")
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        return (
            f"Invalid arguments for task {self.task!r} version {self.version}: "
            f"{'; '.join(parts)}{more}. Nothing was enqueued; fix the call to match "
            f"the task's signature."
        )


class SchemaError(VersionedTaskError):
    """Task declarations, upcasters, renames or tombstones that cannot work together.

    Raised at declaration time or when the schema is checked as a whole
    (consumer creation, first dequeue, ``huey.check_schemas()``), never per message.

    Attributes:
        task: the logical task name concerned, when there is one.
    """

    def __init__(self, message: str, *, task: str | None = None) -> None:
        self.task = task
        super().__init__(message)


class ConfigurationError(VersionedTaskError):
    """An option, serializer or storage backend that versioned_tasks cannot use."""


class EncodeError(VersionedTaskError, TypeError):
    """A value that the JSON envelope cannot carry.

    Attributes:
        path: where the value sits, e.g. ``args[2].when``.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(message)


class DecodeError(VersionedTaskError, ValueError):
    """Bytes that are not a readable envelope (legacy pickle, junk, truncation)."""


class DeadLetterNotFound(VersionedTaskError, KeyError):
    """No dead-letter entry has the given id.

    Attributes:
        id: the id that was asked for.
    """

    def __init__(self, id: str) -> None:
        self.id = id
        super().__init__(
            f"No dead-letter entry with id {id!r}; list the entries with "
            f"`versioned-tasks dlq list --app ...` or iterate huey.dead_letters."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class MessageRejected(VersionedTaskError):
    """Stored bytes that the read pipeline cannot turn into a runnable task.

    Attributes:
        reason: one of the dead-letter reasons (``unknown_task``, ...).
        task: the task name on the wire, when known.
        version: the schema version on the wire, when known.
        error: the error text.
    """

    def __init__(self, *, reason: str, task: str | None, version: int | None, error: str) -> None:
        self.reason = reason
        self.task = task
        self.version = version
        self.error = error
        super().__init__(self._message())

    def _message(self) -> str:
        subject = f"task {self.task!r} version {self.version}" if self.task else "a message"
        return f"Cannot run {subject} ({self.reason}): {self.error}"


class ReplayFailed(MessageRejected):
    """A dead-letter entry that still cannot run with today's code.

    The entry stays in the store under the same id with the new reason.

    Attributes:
        id: the dead-letter entry id.
        reason: the reason it failed this time (one of the dead-letter reasons).
        task: the task name on the wire, when known.
        version: the schema version on the wire, when known.
        error: the error text.
    """

    def __init__(
        self,
        *,
        id: str,
        reason: str,
        task: str | None,
        version: int | None,
        error: str,
    ) -> None:
        self.id = id
        super().__init__(reason=reason, task=task, version=version, error=error)

    def _message(self) -> str:
        subject = (
            f"task {self.task!r} version {self.version}" if self.task else "an unreadable message"
        )
        return (
            f"Replay of dead letter {self.id!r} ({subject}) failed again with reason "
            f"{self.reason!r}: {self.error} The entry was kept with the new reason; deploy a "
            f"fix (an upcaster, rename or tombstone) and replay it again."
        )
