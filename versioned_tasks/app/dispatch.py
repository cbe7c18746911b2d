"""The per-message dispatcher: what a worker does with each stored message.

``decide`` reads the bytes (the app's reader) and returns a Huey ``Task`` to run
or an action (``messages/actions.py``); ``act`` carries the action out with the
storage's ordinary operations (dead-letter, defer, requeue, a tombstone's
handler); ``rescue`` puts the bytes back when a write fails. ``dequeue`` and
``read_schedule`` run that loop over the storage's pops: the adapter's atomic
pops on SQLite and PostgreSQL, reliable fetch's in-flight lists on Redis (and
their settlements), or plain pops.

``VersionedHuey`` owns one and keeps Huey's seams (``dequeue``, ``read_schedule``)
as one-line calls to it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from huey.api import Task

from ..messages.actions import (
    Action,
    DeadLetterAction,
    DeferAction,
    HandlerAction,
    RequeueAction,
)
from ..messages.readwrite import Newer, Outcome, Retired
from ..messages.reasons import Reason
from ..storage.reliable import Slot
from .events import Events

if TYPE_CHECKING:
    from .huey import VersionedHuey

__all__ = ["Dispatcher", "dequeued_bytes", "remember_dequeued"]

logger = logging.getLogger("versioned_tasks")

_Action = Action


class Dispatcher:
    """Decide, act and rescue for one app, message by message (see the module)."""

    def __init__(self, app: VersionedHuey) -> None:
        self.app = app
        #: Logs and signals what happens to each message.
        self.events = Events(app)
        #: Per thread: reads decided on a SQL head row, until the pop takes it.
        self._local = threading.local()

    def dequeue(self) -> Task | None:
        """Pop the next runnable task (see :meth:`_dequeue`); an upcast or renamed
        one is announced once it is this worker's."""
        task = self._dequeue()
        if task is not None and "_vt_from" in task.__dict__:
            self.events.migrated(task)
        return task

    def _dequeue(self) -> Task | None:
        """Pop the next runnable task; bad messages are dead-lettered on the way.

        Never raises for a bad message, and moves straight on to the next one.
        On SQLite and PostgreSQL the pop and the dead-letter write share one
        transaction; with reliable fetch, the dead-letter write and the removal
        from the worker's in-flight list do. On a plain Redis list, a dead
        letter and the next pop travel in one round trip.
        """
        self.app._ensure_checked()
        if self.app._atomic is not None:
            keys = self.app._revocation_keys_for_pop
            if not self.app._observers:
                return self.app._atomic.dequeue(
                    self.decide,
                    self.act,
                    self.rescue,
                    revocation_keys=keys,
                    pure=self.app._reader.read_pure,
                )
            self._held().clear()
            return self.app._atomic.dequeue(
                self._decide_held,
                self.act,
                self.rescue,
                settled=self._settled,
                revocation_keys=keys,
            )
        slot = self.app.inflight.slot() if self.app.inflight is not None else None
        if slot is not None:
            return self._dequeue_reliably(slot)
        raw = self.app.storage.dequeue()
        while raw is not None:
            try:
                decision = self.decide(raw, from_schedule=False)
                if isinstance(decision, Task):
                    return remember_dequeued(decision, raw)
                popped = self._settle_then_pop(raw, decision)
            except Exception:
                # The dead-letter or schedule write failed: keep the bytes.
                self.rescue(raw)
                raise
            raw = popped if popped is not None else self.app.storage.dequeue()
        return None

    def _settle_then_pop(self, raw: bytes, action: _Action) -> bytes | None:
        """Carry out ``action``; for a dead letter on a plain Redis list, also pop
        the next message in the same round trip (None: nothing popped yet)."""
        if not (isinstance(action, DeadLetterAction) and self.app.dead_letters.pops_with_writes):
            self.act(raw, action)
            return None
        popped, failed = self._write_then_pop(raw, action)
        if failed is not None:
            if popped is not None:
                self.rescue(popped)  # popped in the same round trip: back it goes
            raise failed
        return popped

    def _write_then_pop(
        self, raw: bytes, action: DeadLetterAction, inflight: str | None = None
    ) -> tuple[bytes | None, Exception | None]:
        """Dead-letter ``raw`` and pop the next message in one round trip (see
        ``DeadLetterStore.add_then_pop``); logs the entry once it is written."""
        entry, popped, failed = self.app.dead_letters.add_then_pop(
            reason=action.reason,
            raw=raw,
            error=action.error,
            task=action.task,
            version=action.version,
            inflight=inflight,
        )
        if failed is None:
            self._announced(action).done(entry.id)
        return popped, failed

    def read_schedule(self, timestamp: datetime.datetime | None = None) -> list[Task]:
        """Pop the due tasks; bad ones are dead-lettered, as the storage removes them."""
        tasks = self._read_schedule(timestamp)
        for task in tasks:
            if "_vt_from" in task.__dict__:
                self.events.migrated(task)
        return tasks

    def _read_schedule(self, timestamp: datetime.datetime | None) -> list[Task]:
        self.app._ensure_checked()
        if timestamp is None:
            timestamp = self.app._get_timestamp()
        if self.app._atomic is not None:
            if not self.app._observers:
                return self.app._atomic.read_schedule(timestamp, self.decide)
            self._held().clear()
            return self.app._atomic.read_schedule(
                timestamp, self._decide_held, settled=self._settled
            )
        tasks = []
        for raw in self.app.storage.read_schedule(timestamp):
            try:
                decision = self.decide(raw, from_schedule=True)
                if isinstance(decision, Task):
                    tasks.append(decision)
                else:
                    self.act(raw, decision)
            except Exception:
                # The storage already removed the whole batch: keep these bytes
                # and go on, rather than lose the tasks that are fine.
                logger.exception("Could not dead-letter or defer a scheduled message.")
                self.rescue(raw)
        return tasks

    def decide(self, raw: bytes, *, from_schedule: bool) -> Task | _Action:
        """What to do with one stored message: run it, or one of the actions."""
        if self.app._observers:
            return self._decide_observed(raw, from_schedule)
        outcome = self.app._reader.read(raw)
        if isinstance(outcome, Task):
            return outcome
        return self._decision(outcome, from_schedule)

    def _decide_observed(
        self, raw: bytes, from_schedule: bool, *, hold: bool = False
    ) -> Task | _Action:
        """``decide``, timed and shown to the app's observers (``contrib``); with
        ``hold``, shown only once the atomic pop reports the row as this worker's."""
        start = time.perf_counter()
        outcome = self.app._reader.read(raw)
        decision = outcome if isinstance(outcome, Task) else self._decision(outcome, from_schedule)
        seconds = time.perf_counter() - start
        if hold:
            self._held()[id(decision)] = (raw, outcome, decision, seconds)
        else:
            self._observe(raw, outcome, decision, seconds)
        return decision

    def _decide_held(self, raw: bytes, *, from_schedule: bool) -> Task | _Action:
        # On SQL storages several workers may read the same head row and only one
        # takes it: a read is shown to the observers once it is taken.
        return self._decide_observed(raw, from_schedule, hold=True)

    def _settled(self, raw: bytes, decision: Task | _Action) -> None:
        """The atomic pop took ``raw`` (decided as ``decision``): show the read."""
        held = self._held().pop(id(decision), None)
        if held is not None:
            self._observe(*held)

    def _held(self) -> dict[int, tuple[bytes, Outcome, Task | _Action, float]]:
        held: dict[int, tuple[bytes, Outcome, Task | _Action, float]] | None = getattr(
            self._local, "held", None
        )
        if held is None:
            held = self._local.held = {}
        return held

    def _observe(
        self, raw: bytes, outcome: Outcome, decision: Task | _Action, seconds: float
    ) -> None:
        for observer in self.app._observers:
            try:
                observer.read(raw, outcome, decision, seconds)
            except Exception:
                logger.exception("Observer %r failed on a message read.", observer)

    def _decision(self, outcome: Outcome, from_schedule: bool) -> _Action:
        if isinstance(outcome, Newer):
            return self._decide_newer(outcome, from_schedule)
        if isinstance(outcome, Retired):
            return self._decide_retired(outcome, from_schedule)
        assert not isinstance(outcome, Task)
        return DeadLetterAction(
            outcome.reason,
            outcome.task,
            outcome.version,
            outcome.error,
            task_id=outcome.id,
            notify=self.events.dead_lettered,
        )

    def _decide_newer(self, newer: Newer, from_schedule: bool) -> _Action:
        # The policy of the message's own task (after renames), else the app's.
        spec = self.app.schema.specs.get(self.app.schema.resolve(newer.task))
        action = self.app._newer.decide(
            newer,
            spec,
            self.app._get_timestamp(),
            self.app._deferred,
            from_schedule=from_schedule,
            hand_offs=self.app._hand_offs,
        )
        if isinstance(action, DeadLetterAction):
            return dataclasses.replace(action, task_id=newer.id, notify=self.events.dead_lettered)
        return action

    def _decide_retired(self, retired: Retired, from_schedule: bool) -> _Action:
        message = retired.message
        if not self.app._has_handler(retired):
            return DeadLetterAction(
                "retired",
                message.task,
                message.version,
                f"Task {message.task!r} is retired (tombstoned) and has no handler.",
                task_id=_text_id(message.id),
                tombstone=retired.tombstone,
                notify=self.events.dead_lettered,
            )
        if from_schedule:
            # The worker, not the scheduler, runs tombstone handlers.
            return RequeueAction(retired.priority)
        return HandlerAction(retired)

    def act(self, raw: bytes, action: _Action) -> None:
        """Carry out an action with the storage's ordinary operations."""
        if isinstance(action, DeadLetterAction):
            self.write(raw, action)
        elif isinstance(action, DeferAction):
            self.app.storage.add_to_schedule(raw, action.eta)
            action.log()
            action.done()
        elif isinstance(action, RequeueAction):
            self._requeue(raw, action.priority)
        elif isinstance(action, HandlerAction):
            self._run_handler(raw, action.retired)

    def _run_handler(self, raw: bytes, retired: Retired) -> None:
        failed = self._call_handler(retired)
        if failed is not None:
            self.write(raw, failed)
        else:
            self.events.handled(retired)

    def _call_handler(self, retired: Retired) -> DeadLetterAction | None:
        """Run the tombstone handler; the dead letter to write if it raised."""
        handler = self.app.schema.tombstones[retired.tombstone].handler
        assert handler is not None
        message = retired.message
        try:
            handler(message)
        except Exception as exc:
            logger.exception("Tombstone handler for %r failed.", retired.tombstone)
            return DeadLetterAction(
                "retired",
                message.task,
                message.version,
                f"Tombstone handler for {retired.tombstone!r} raised {type(exc).__name__}: {exc}",
                task_id=_text_id(message.id),
                tombstone=retired.tombstone,
                notify=self.events.dead_lettered,
            )
        return None

    def dead_letter(
        self,
        raw: bytes,
        reason: Reason,
        task: str | None,
        version: int | None,
        error: str,
        *,
        inflight: str | None = None,
        task_id: str | None = None,
    ) -> None:
        """Write a dead letter, then log it and send ``SIGNAL_DEAD_LETTERED``."""
        self.write(raw, DeadLetterAction(reason, task, version, error, task_id), inflight=inflight)

    def write(self, raw: bytes, action: DeadLetterAction, *, inflight: str | None = None) -> None:
        """Carry out a dead letter; announced (logged, signalled) once it is stored."""
        entry = self.app.dead_letters.add(
            reason=action.reason,
            raw=raw,
            task=action.task,
            version=action.version,
            error=action.error,
            inflight=inflight,
        )
        self._announced(action).done(entry.id)

    def _announced(self, action: DeadLetterAction) -> DeadLetterAction:
        """``action``, sending the app's signal once done."""
        if action.notify is None:
            return dataclasses.replace(action, notify=self.events.dead_lettered)
        return action

    def _requeue(self, raw: bytes, priority: Any) -> None:
        # Exact bytes back on the queue; a storage without priorities (plain
        # Redis) refuses one, and the message matters more than its priority.
        try:
            self.app.storage.enqueue(raw, priority)
        except NotImplementedError:
            self.app.storage.enqueue(raw)

    def rescue(self, raw: bytes) -> None:
        # The dead-letter write failed: put the bytes back on the queue, and if
        # even that fails, log them so they can be recovered by hand.
        try:
            self.app.storage.enqueue(raw)
        except Exception:
            logger.critical(
                "Could not dead-letter or requeue a message; its bytes (base64): %s",
                base64.b64encode(raw).decode("ascii"),
            )

    def _dequeue_reliably(self, slot: Slot) -> Task | None:
        """Move the next message into the worker's in-flight list; settle the bad ones.

        Settlements still owed from a failed attempt are made first: a worker
        that cannot settle takes no new message.
        """
        assert self.app.inflight is not None
        self.settle_owed(slot)
        raw = self.app.inflight.pop(slot)
        while raw is not None:
            try:
                decision = self.decide(raw, from_schedule=False)
            except Exception:
                self.settle(slot, raw, self._requeue_settle(slot, raw))
                raise
            if isinstance(decision, Task):
                decision.__dict__["_vt_slot"] = slot
                return remember_dequeued(decision, raw)
            popped = None
            if isinstance(decision, HandlerAction):
                failed = self._call_handler(decision.retired)
                if failed is None:
                    slot.ran.append(raw)
                    self.events.handled(decision.retired)
                else:
                    self.settle(slot, raw, self._action_settle(slot, raw, failed))
            elif isinstance(decision, DeadLetterAction) and self._pops_with_write(slot):
                popped = self._dead_letter_then_pop(slot, raw, decision)
            else:
                self.settle(slot, raw, self._action_settle(slot, raw, decision))
            raw = popped if popped is not None else self.app.inflight.pop(slot)
        return None

    def _pops_with_write(self, slot: Slot) -> bool:
        # Only with nothing else owed: those ride on the ordinary pop.
        return (
            not (slot.ran or slot.pending or slot.dirty) and self.app.dead_letters.pops_with_writes
        )

    def _dead_letter_then_pop(
        self, slot: Slot, raw: bytes, action: DeadLetterAction
    ) -> bytes | None:
        """Dead-letter ``raw`` (leaving the in-flight list) and move the next
        message into the list, in one round trip."""
        try:
            popped, failed = self._write_then_pop(raw, action, slot.key)
        except Exception:
            slot.dirty = True  # the next pop puts back what the list still holds
            raise
        if failed is not None:
            # Not written: the bytes are still in the list, and so is what was
            # popped with them; the next pop puts both back on the queue.
            slot.dirty = True
            raise failed
        return popped

    def settle_owed(self, slot: Slot) -> None:
        """Make the settlements this worker still owes; raises while Redis is unreachable.

        A settlement whose bytes already left the list was made by the attempt
        that seemed to fail (its reply was lost) and is not made again.
        """
        assert self.app.inflight is not None
        while slot.pending:
            raw, settle = slot.pending[0]
            if self.app.inflight.holds(slot.key, raw):
                settle()
            slot.pending.pop(0)
            logger.info("Settled an in-flight message of %s on a later attempt.", slot.key)

    def settle(self, slot: Slot, raw: bytes, settle: Callable[[], None]) -> None:
        # A settlement that fails is owed: the bytes stay in the list (nothing
        # is lost) and the worker makes it before its next pop.
        try:
            settle()
        except Exception:
            slot.pending.append((raw, settle))
            logger.warning(
                "Could not settle a message in %s; it stays there and is settled before "
                "this worker's next pop (if this consumer stops first, it runs again "
                "after recovery).",
                slot.key,
                exc_info=True,
            )
            raise

    def _requeue_settle(self, slot: Slot, raw: bytes) -> Callable[[], None]:
        assert self.app.inflight is not None
        inflight, queue = self.app.inflight, self.app.storage.queue_key
        # A plain Redis queue has no priorities: exact bytes, front of the line.
        return lambda: inflight.remove(slot.key, raw, lambda pipe: pipe.lpush(queue, raw))

    def _action_settle(
        self, slot: Slot, raw: bytes, action: DeadLetterAction | DeferAction | RequeueAction
    ) -> Callable[[], None]:
        """The action's write and the removal from the in-flight list, as one."""
        assert self.app.inflight is not None
        inflight, storage = self.app.inflight, self.app.storage
        if isinstance(action, DeadLetterAction):
            dead = action

            def dead_letter() -> None:
                self.write(raw, dead, inflight=slot.key)

            return dead_letter
        if isinstance(action, DeferAction):
            defer, score = action, storage.convert_ts(action.eta)

            def schedule() -> None:
                inflight.remove(
                    slot.key, raw, lambda pipe: pipe.zadd(storage.schedule_key, {raw: score})
                )
                defer.log()
                defer.done()

            return schedule
        return self._requeue_settle(slot, raw)


def _text_id(value: Any) -> str | None:
    # A header's id is a string, or (read for compatibility) a non-zero integer.
    return None if value is None else str(value)


def remember_dequeued(task: Task, raw: bytes) -> Task:
    """Keep on ``task`` the exact bytes it was dequeued from (see :func:`dequeued_bytes`)."""
    task.__dict__["_vt_dequeued"] = raw
    return task


def dequeued_bytes(task: Task) -> bytes | None:
    """The exact bytes ``task`` was dequeued from in this worker, or None.

    A task that fails after the pop (an unreadable revocation record, say) is
    dead-lettered with these bytes rather than with a re-encoding of itself.
    """
    raw: bytes | None = task.__dict__.get("_vt_dequeued")
    return raw
