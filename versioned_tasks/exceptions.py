"""Every error that versioned_tasks raises.

The tree::

    VersionedTaskError
     ├── InvalidArguments (also a ValueError)    arguments do not fit the task's model
     │    └── DowncastFailed                     arguments cannot be written at a pinned version
     ├── InvalidResult (also a ValueError)       a return value does not fit result_model
     ├── SchemaError                             declarations that cannot work together
     ├── ConfigurationError                      an option or backend that cannot be used
     │    └── LockFileError                      a schema lock file missing or unreadable
     ├── EncodeError (also a TypeError)          a value the envelope cannot carry
     │    └── EnvelopeTooLarge                   a message over the serializer's max_size
     ├── DecodeError (also a ValueError)         bytes that are not a readable envelope
     │    └── SignatureError                     a signature missing, wrong or of an unknown key
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
    "DowncastFailed",
    "EncodeError",
    "EnvelopeTooLarge",
    "InvalidArguments",
    "LockFileError",
    "MessageRejected",
    "ReplayFailed",
    "SchemaError",
    "SchemaWarning",
    "SignatureError",
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
        problems: each problem found, one sentence with its fix (a check of the
            whole schema may find several; otherwise the message alone).
    """

    def __init__(
        self, message: str, *, task: str | None = None, problems: Sequence[str] = ()
    ) -> None:
        self.task = task
        self.problems: tuple[str, ...] = tuple(problems) or (message,)
        super().__init__(message)


class SchemaWarning(UserWarning):
    """A declaration that works but looks like a mistake (a rename or tombstone
    whose name resembles a declared task): issued by ``huey.check_schemas()``
    through :mod:`warnings`.
    """


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


class InvalidResult(VersionedTaskError, ValueError):
    """A task's return value does not validate against its ``result_model``.

    Raised in the worker, where Huey records it as the task's failure (and
    retries the task if it has retries left).

    Attributes:
        task: the logical task name.
        version: the task's schema version.
        errors: pydantic's error list.
    """

    def __init__(self, *, task: str, version: int, model: str, errors: Sequence[dict[str, Any]]):
        self.task = task
        self.version = version
        self.errors = list(errors)
        first = self.errors[0] if self.errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(value)"
        super().__init__(
            f"Task {task!r} version {version} returned a value that is not a valid "
            f"{model}: {loc}: {first.get('msg', 'invalid')}. Return a {model} (or data "
            f"that validates as one), or change the task's result_model."
        )


class EnvelopeTooLarge(EncodeError):
    """A message or value larger than the serializer's ``max_size``.

    Raised where it is written (enqueue, ``.schedule()``, storing a result), so
    nothing oversized reaches storage.

    Attributes:
        task: the task's name on the wire, or None for a stored value.
        version: the task's schema version, when it has one.
        size: the size of the envelope, in bytes.
        limit: the ``max_size`` it exceeds, in bytes.
    """

    def __init__(self, *, task: str | None, version: int | None, size: int, limit: int) -> None:
        self.task = task
        self.version = version
        self.size = size
        self.limit = limit
        if task is None:
            subject = "A stored value (a result, lock, revocation or huey.put() data)"
        elif version is None:
            subject = f"Task {task!r}"
        else:
            subject = f"Task {task!r} version {version}"
        super().__init__(
            f"{subject}: the envelope is {size:,} bytes, more than max_size ({limit:,} bytes); "
            f"nothing was written. Pass large data by reference (a storage key or a URL), or "
            f"raise max_size on the VersionedSerializer of every producer and worker."
        )


class SignatureError(DecodeError):
    """Stored bytes whose signature is missing, does not match, or names a key
    this reader does not know.

    A ``VersionedHuey`` dead-letters such a message with the reason
    ``bad_signature`` and never runs it; ``VersionedSerializer.deserialize()``
    raises this error for values (results, revocations, locks).

    Attributes:
        key_id: the key id the message names, when it names one.
        reason: ``"bad_signature"``, the dead-letter reason.
    """

    reason = "bad_signature"

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        self.key_id = key_id
        super().__init__(message)


class LockFileError(ConfigurationError):
    """A schema lock file (``versioned-tasks.lock``) that is missing or unreadable.

    Raised by ``versioned-tasks check``, ``lock`` and ``schema`` (exit code 2)
    for a file that does not exist, is not JSON, or does not have the lock's
    shape, e.g. after a hand edit or a bad merge.

    Attributes:
        path: the lock file's path, as given.
    """

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class DowncastFailed(InvalidArguments):
    """Arguments that cannot be written at the older version a producer is pinned to.

    Raised at enqueue when ``emit_versions`` pins a task to an older version
    and a downcaster raises, returns something that is not a dict with string
    keys, or returns a payload that does not fit the older version's schema
    (when a schema lock says what that is). Nothing is written.

    Attributes:
        task: the logical task name.
        version: the task's current version (the arguments were valid at it).
        target: the pinned version the message was to be written at.
        step: ``(from_version, to_version)`` of the step that failed, or the
            target twice when the finished payload failed the schema check.
        errors: one entry describing the failure (``type`` is ``downcast_failed``).
    """

    def __init__(
        self, *, task: str, version: int, target: int, step: tuple[int, int], error: str
    ) -> None:
        self.target = target
        self.step = step
        super().__init__(
            task=task,
            version=version,
            errors=[{"loc": (), "msg": error, "type": "downcast_failed"}],
        )

    def _message(self) -> str:
        high, low = self.step
        where = (
            f"the downcaster from version {high} to {low}"
            if high != low
            else f"the downcast payload, checked against the lock's schema of version {low},"
        )
        return (
            f"Task {self.task!r} version {self.version} cannot be written at version "
            f"{self.target} (pinned by emit_versions): {where} failed: "
            f"{self.errors[0]['msg']}. Nothing was enqueued; fix the downcaster with "
            f"@huey.downcaster({self.task!r}, from_version={high}), or unpin the task once "
            f"every worker reads version {self.version}."
        )
