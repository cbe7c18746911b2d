"""What happens to a stored message that will not run now.

The read pipeline says what a message is; these say what to do with it. They
are plain values so that a storage can carry them out inside the same
transaction as the pop (see ``_sqlite.py``) or one by one.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from ._pipeline import Newer, Retired

__all__ = ["Action", "DeadLetterAction", "DeferAction", "HandlerAction", "RequeueAction"]

logger = logging.getLogger("versioned_tasks")


@dataclass(frozen=True, slots=True)
class DeadLetterAction:
    """Keep the exact bytes in the dead-letter store."""

    reason: str
    task: str | None
    version: int | None
    error: str

    def log(self, entry_id: str) -> None:
        logger.warning(
            "Dead-lettered %s (task %r, version %s): %s [entry %s]",
            self.reason,
            self.task,
            self.version,
            self.error,
            entry_id,
        )


@dataclass(frozen=True, slots=True)
class DeferAction:
    """Put the exact bytes back on the schedule: a newer worker will take them."""

    eta: datetime.datetime
    newer: Newer

    def log(self) -> None:
        logger.info(
            "Deferred task %r version %s (this worker knows version %s) until %s.",
            self.newer.task,
            self.newer.version,
            self.newer.known_version,
            self.eta,
        )


@dataclass(frozen=True, slots=True)
class RequeueAction:
    """Put the exact bytes on the queue (a retired message the scheduler read)."""

    priority: Any


@dataclass(frozen=True, slots=True)
class HandlerAction:
    """Hand a retired message to its tombstone's handler, in the worker."""

    retired: Retired


Action = DeadLetterAction | DeferAction | RequeueAction | HandlerAction
