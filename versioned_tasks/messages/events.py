"""The Huey signals this library sends, and what their receivers get.

Each signal goes through Huey's own mechanism (``huey._emit``), so
``@huey.signal(SIGNAL_DEAD_LETTERED)`` and catch-all ``@huey.signal()``
receivers see it, and a receiver that raises is logged by Huey and changes
nothing for the message. The second argument a receiver gets is one of the
frozen values below; each has ``.name`` and ``.id`` as a Huey ``Task`` has, so
that a catch-all receiver logging ``task.name`` and ``task.id`` works for them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .reasons import Reason

__all__ = [
    "SIGNAL_DEAD_LETTERED",
    "SIGNAL_RENAMED",
    "SIGNAL_REPLAYED",
    "SIGNAL_RETIRED",
    "SIGNAL_UPCAST",
    "DeadLetteredMessage",
    "RenamedMessage",
    "ReplayedMessage",
    "TombstonedMessage",
    "UpcastMessage",
]

#: Sent once per dead letter written, after it is stored; receivers get
#: ``(signal, message)`` with a :class:`DeadLetteredMessage`.
SIGNAL_DEAD_LETTERED: Final = "dead-lettered"
#: Sent once per message read at an older version and upcast to today's; receivers
#: get ``(signal, message)`` with an :class:`UpcastMessage`.
SIGNAL_UPCAST: Final = "upcast"
#: Sent once per message written under an old task name and run as the new one;
#: receivers get ``(signal, message)`` with a :class:`RenamedMessage`.
SIGNAL_RENAMED: Final = "renamed"
#: Sent once per message of a tombstoned task, after its handler ran or it was
#: dead-lettered; receivers get ``(signal, message)`` with a :class:`TombstonedMessage`.
SIGNAL_RETIRED: Final = "retired"
#: Sent once per dead letter replayed (its message is back on the queue);
#: receivers get ``(signal, message)`` with a :class:`ReplayedMessage`.
SIGNAL_REPLAYED: Final = "replayed"


@dataclass(frozen=True, slots=True)
class DeadLetteredMessage:
    """A message that went to the dead-letter store, as ``SIGNAL_DEAD_LETTERED``
    receivers get it.

    Attributes:
        reason: one of the dead-letter reasons (``versioned_tasks.REASONS``).
        task: the task name on the wire, or None where unknown (undecodable bytes).
        version: the schema version on the wire, or None where unknown.
        id: the Huey task id, where known.
        error: what went wrong, as text.
        entry_id: the dead letter's id in the store (``huey.dead_letters.get(entry_id)``).
    """

    reason: Reason
    task: str | None
    version: int | None
    id: str | None
    error: str
    entry_id: str

    @property
    def name(self) -> str | None:
        """The task name, as a Huey ``Task`` has one, for receivers of every signal."""
        return self.task


@dataclass(frozen=True, slots=True)
class UpcastMessage:
    """A message read at an older version and upcast to today's, as
    ``SIGNAL_UPCAST`` receivers get it.

    Attributes:
        task: the task's name (after any rename).
        from_version: the version on the wire.
        to_version: the version it runs at (the task's current version).
        id: the Huey task id.
    """

    task: str
    from_version: int
    to_version: int
    id: str

    @property
    def name(self) -> str:
        """The task name, as a Huey ``Task`` has one, for receivers of every signal."""
        return self.task


@dataclass(frozen=True, slots=True)
class RenamedMessage:
    """A message written under an old task name that runs as the new task, as
    ``SIGNAL_RENAMED`` receivers get it.

    Attributes:
        old: the task name on the wire.
        new: the name of the task it runs as.
        version: the version on the wire.
        id: the Huey task id.
    """

    old: str
    new: str
    version: int | None
    id: str

    @property
    def name(self) -> str:
        """The task it runs as, as a Huey ``Task`` has a name."""
        return self.new


@dataclass(frozen=True, slots=True)
class TombstonedMessage:
    """A message of a retired (tombstoned) task, after its handler ran or it was
    dead-lettered, as ``SIGNAL_RETIRED`` receivers get it.

    Attributes:
        task: the task name on the wire.
        version: the version on the wire (None for an unversioned message).
        id: the Huey task id, where known.
        tombstone: the retired name the tombstone is declared under (after renames).
        handled: True when the tombstone's handler ran and returned; False when
            the message was dead-lettered (no handler, or the handler raised).
    """

    task: str
    version: int | None
    id: str | None
    tombstone: str
    handled: bool

    @property
    def name(self) -> str:
        """The task name, as a Huey ``Task`` has one, for receivers of every signal."""
        return self.task


@dataclass(frozen=True, slots=True)
class ReplayedMessage:
    """A dead letter whose message is back on the queue, as ``SIGNAL_REPLAYED``
    receivers get it.

    Attributes:
        entry_id: the dead letter's id (the entry is gone from the store).
        task: the task name on the wire of the stored message.
        version: its version on the wire.
        id: the Huey task id of the message put back on the queue.
    """

    entry_id: str
    task: str | None
    version: int | None
    id: str | None

    @property
    def name(self) -> str | None:
        """The task name, as a Huey ``Task`` has one, for receivers of every signal."""
        return self.task
