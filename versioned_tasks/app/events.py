"""What happens to a message, told: one log record and one Huey signal each.

The dispatcher calls these once the outcome is settled (a dead letter stored, a
handler returned, a task handed to the worker or the scheduler, a replay
queued). Signals go through ``app._emit``, Huey's own mechanism: a receiver
that raises is logged by Huey and changes nothing for the message. Log records
carry structured fields (``messages.actions.log_fields``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from huey.api import Task

from ..messages.actions import DeadLetterAction, log_fields
from ..messages.events import (
    SIGNAL_DEAD_LETTERED,
    SIGNAL_RENAMED,
    SIGNAL_REPLAYED,
    SIGNAL_RETIRED,
    SIGNAL_UPCAST,
    DeadLetteredMessage,
    RenamedMessage,
    ReplayedMessage,
    TombstonedMessage,
    UpcastMessage,
)
from ..messages.readwrite import Retired, wire_origin

if TYPE_CHECKING:
    from .huey import VersionedHuey

__all__ = ["Events"]

logger = logging.getLogger("versioned_tasks")


class Events:
    """Logs and signals for one app (see the module)."""

    def __init__(self, app: VersionedHuey) -> None:
        self.app = app

    def dead_lettered(self, action: DeadLetterAction, entry_id: str) -> None:
        """A dead letter is stored: one INFO line and ``SIGNAL_DEAD_LETTERED``
        (and ``SIGNAL_RETIRED`` for a message of a tombstoned task)."""
        action.log(entry_id)
        message = DeadLetteredMessage(
            action.reason, action.task, action.version, action.task_id, action.error, entry_id
        )
        self.app._emit(SIGNAL_DEAD_LETTERED, message)
        if action.tombstone is not None and action.task is not None:
            retired = TombstonedMessage(
                action.task, action.version, action.task_id, action.tombstone, handled=False
            )
            self.app._emit(SIGNAL_RETIRED, retired)

    def handled(self, retired: Retired) -> None:
        """A tombstone's handler ran and returned: one INFO line and ``SIGNAL_RETIRED``."""
        message = retired.message
        task_id = None if message.id is None else str(message.id)
        logger.info(
            "Retired task %r version %s, id %s: handed to the tombstone handler of %r.",
            message.task,
            message.version,
            task_id,
            retired.tombstone,
            extra=log_fields(
                "retired", task=message.task, version=message.version, task_id=task_id
            ),
        )
        notice = TombstonedMessage(
            message.task, message.version, task_id, retired.tombstone, handled=True
        )
        self.app._emit(SIGNAL_RETIRED, notice)

    def migrated(self, task: Task) -> None:
        """A task read under an old name or at an older version is the worker's (or
        the scheduler's): an INFO line and ``SIGNAL_RENAMED`` for a rename, a DEBUG
        line and ``SIGNAL_UPCAST`` for an upcast."""
        origin = wire_origin(task)
        spec = getattr(type(task), "_vt_spec", None)
        if origin is None:
            return
        old, version = origin
        name = spec.name if spec is not None else _registry_key(task)
        if old != name:
            self._renamed(task, old, name, version)
        if spec is not None and version is not None and version < spec.version:
            self._upcast(task, name, version, spec.version)

    def _heard(self, signal: str) -> bool:
        """Whether a receiver listens for ``signal`` or for every signal: the worker's
        per-message notices build nothing when nobody does."""
        receivers = getattr(self.app._signal, "receivers", None)
        if not isinstance(receivers, dict):
            return True  # a Huey whose signals look otherwise: always send
        return bool(receivers.get(signal)) or bool(receivers.get("any"))

    def _renamed(self, task: Task, old: str, new: str, version: int | None) -> None:
        if logger.isEnabledFor(logging.INFO):
            self._log_renamed(task, old, new, version)
        if self._heard(SIGNAL_RENAMED):
            self.app._emit(SIGNAL_RENAMED, RenamedMessage(old, new, version, task.id))

    @staticmethod
    def _log_renamed(task: Task, old: str, new: str, version: int | None) -> None:
        logger.info(
            "Renamed task %r version %s, id %s: runs as %r.",
            old,
            version,
            task.id,
            new,
            extra=log_fields(
                "renamed", task=new, version=version, task_id=task.id, renamed_from=old
            ),
        )

    def _upcast(self, task: Task, name: str, version: int, current: int) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            self._log_upcast(task, name, version, current)
        if self._heard(SIGNAL_UPCAST):
            self.app._emit(SIGNAL_UPCAST, UpcastMessage(name, version, current, task.id))

    @staticmethod
    def _log_upcast(task: Task, name: str, version: int, current: int) -> None:
        logger.debug(
            "Upcast task %r, id %s, from version %s to %s.",
            name,
            task.id,
            version,
            current,
            extra=log_fields(
                "upcast", task=name, version=current, from_version=version, task_id=task.id
            ),
        )

    def replayed(
        self,
        entry_id: str,
        task: str | None,
        version: int | None,
        task_id: str | None,
    ) -> None:
        """A dead letter is back on the queue: one INFO line and ``SIGNAL_REPLAYED``."""
        logger.info(
            "Replayed dead letter %s (task %r, version %s) as task id %s.",
            entry_id,
            task,
            version,
            task_id,
            extra=log_fields(
                "replayed",
                task=task,
                version=version,
                task_id=task_id,
                dead_letter_id=entry_id,
            ),
        )
        message = ReplayedMessage(entry_id, task, version, task_id)
        self.app._emit(SIGNAL_REPLAYED, message)


def _registry_key(task: Task) -> str:
    kind = type(task)
    return f"{kind.__module__}.{kind.__name__}"
