"""migrate-queue: rewrite the legacy (pickle) messages of a queue and a schedule as
envelopes, in place, one compare-and-swap at a time; what cannot be converted is
dead-lettered with its bytes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..messages.actions import DeadLetterAction
from ..messages.legacy import LegacyConverter, is_envelope, is_legacy
from ..messages.readwrite import Outcome, Rejected
from ..messages.reasons import Reason
from ..storage.adapters import adapter_for
from ..storage.deadletters import DeadLetter, DeadLetterStore
from ..storage.rewrite import Area, _Op

if TYPE_CHECKING:
    from ..app.huey import VersionedHuey

__all__ = ["MigrationReport", "Moved", "Tally", "migrate"]

logger = logging.getLogger("versioned_tasks")

# -- migrate-queue ----------------------------------------------------------------------

_CHUNK: Final = 200

#: Logs a dead letter the migration wrote and sends its signal (the app's events).
Announce = Callable[[DeadLetterAction, str], None]


@dataclass(slots=True)
class Tally:
    """What a migration did (or, in a dry run, would do) to the queue or the schedule.

    Attributes:
        converted: legacy messages rewritten as envelopes in place.
        envelopes: messages that were envelopes already, left untouched.
        dead_lettered: messages moved to the dead-letter store with their bytes.
        taken: legacy messages a worker popped while the migration ran (the
            worker read them; they were not rewritten).
    """

    converted: int = 0
    envelopes: int = 0
    dead_lettered: int = 0
    taken: int = 0


@dataclass(frozen=True, slots=True)
class Moved:
    """One message the migration dead-lettered (``entry_id`` is None in a dry run)."""

    area: str
    entry_id: str | None
    reason: Reason
    task: str | None
    version: int | None
    error: str


@dataclass(slots=True)
class MigrationReport:
    """The outcome of :func:`migrate`."""

    dry_run: bool
    queue: Tally = field(default_factory=Tally)
    schedule: Tally = field(default_factory=Tally)
    moved: list[Moved] = field(default_factory=list)
    #: Result-store keys whose values are still legacy pickle (left as they are).
    legacy_values: list[str] = field(default_factory=list)

    @property
    def dead_lettered(self) -> int:
        """Messages dead-lettered (or that would be) in the queue and the schedule."""
        return self.queue.dead_lettered + self.schedule.dead_lettered


def migrate(huey: VersionedHuey, converter: LegacyConverter, *, dry_run: bool) -> MigrationReport:
    """Rewrite the legacy messages of the queue and the schedule as envelopes, in place.

    Every change is a compare-and-swap on one stored message: a message a
    worker pops meanwhile is left to the worker, and messages enqueued
    meanwhile are not touched. A message that cannot be converted is
    dead-lettered with its original bytes before it leaves the storage.

    Raises:
        ConfigurationError: the storage has no way to rewrite messages in place.
    """
    queue, schedule = adapter_for(huey.storage).rewrite_areas()
    report = MigrationReport(dry_run=dry_run)
    read = huey.message_reader.read
    announce = huey.message_events.dead_lettered
    report.queue = _migrate_area(queue, converter, read, huey.dead_letters, report, announce)
    report.schedule = _migrate_area(schedule, converter, read, huey.dead_letters, report, announce)
    report.legacy_values = sorted(
        str(key) for key, value in huey.storage.result_items().items() if is_legacy(value)
    )
    return report


def _migrate_area(
    area: Area,
    converter: LegacyConverter,
    read: Callable[[bytes], Outcome],
    store: DeadLetterStore,
    report: MigrationReport,
    announce: Announce,
) -> Tally:
    tally = Tally()
    for chunk in _chunks(area.items()):
        ops = []
        for handle, raw in chunk:
            if is_envelope(raw):
                tally.envelopes += 1
                continue
            outcome, envelope = converter.outcome(raw, read)
            if isinstance(outcome, Rejected):
                ops.append(_Op(handle, raw, None, outcome))
            else:
                ops.append(_Op(handle, raw, envelope, None))
        if report.dry_run:
            _count_dry(area, ops, tally, report)
        elif ops:
            _count(area, ops, area.settle(ops, store), tally, report, announce)
    return tally


def _chunks(items: list[tuple[Any, bytes]]) -> Iterator[list[tuple[Any, bytes]]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _count_dry(area: Area, ops: list[_Op], tally: Tally, report: MigrationReport) -> None:
    for op in ops:
        if op.rejected is None:
            tally.converted += 1
        else:
            tally.dead_lettered += 1
            report.moved.append(_moved(area, None, op.rejected))


def _count(
    area: Area,
    ops: list[_Op],
    settled: list[DeadLetter | bool],
    tally: Tally,
    report: MigrationReport,
    announce: Announce,
) -> None:
    for op, result in zip(ops, settled, strict=True):
        if result is False:
            tally.taken += 1
        elif isinstance(result, DeadLetter):
            assert op.rejected is not None
            tally.dead_lettered += 1
            report.moved.append(_moved(area, result.id, op.rejected))
            rejected = op.rejected
            action = DeadLetterAction(
                rejected.reason, rejected.task, rejected.version, rejected.error, rejected.id
            )
            announce(action, result.id)  # logged and signalled as the worker's are
        else:
            tally.converted += 1


def _moved(area: Area, entry_id: str | None, rejected: Rejected) -> Moved:
    return Moved(
        area.label, entry_id, rejected.reason, rejected.task, rejected.version, rejected.error
    )
