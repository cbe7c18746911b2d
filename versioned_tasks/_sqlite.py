"""Pops from a SqliteStorage that write their dead letters in the same transaction.

Huey has no acknowledgement: a popped message is gone from storage, and a crash
between the pop and the dead-letter write loses it. When the dead-letter table
lives in the queue's own SQLite database, that window can be closed: the row is
deleted and the dead letter (or the deferral) written in one transaction, so a
crash leaves either the message where it was or its dead letter, never neither.

The read pipeline runs before that transaction, outside the storage's lock: it
has no side effects, and user code it calls (validators, upcasters) may then use
the storage without deadlocking. The row is deleted by id and bytes (SQLite
reuses freed ids), so when two workers read the same head, one deletes it and
the other reads the next one.

A commit costs a disk sync, which is most of what a message costs here. Once the
head turns out to be a message that cannot run, the worker reads further ahead
and settles the run of such messages (and the task that ends it) in one
transaction: a flood of bad messages costs a fraction of a commit each, and a
queue of good tasks still reads one row at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from huey.api import Task
from huey.storage import SqliteStorage

from ._actions import Action, DeadLetterAction, DeferAction, HandlerAction, RequeueAction
from ._deadletters import SqliteBackend

__all__ = ["AtomicSqlite"]

logger = logging.getLogger("versioned_tasks")

Decide = Callable[..., "Task | Action"]
_Decided = tuple[int, bytes, float, Any]  # row id, bytes, priority, decision

#: How many rows a worker reads at once after a head that could not run.
_AHEAD = 64
Act = Callable[[bytes, Action], None]
Rescue = Callable[[bytes], None]


class AtomicSqlite:
    """The worker's and the scheduler's pops, each settled in one SQLite transaction."""

    def __init__(self, storage: SqliteStorage, backend: SqliteBackend) -> None:
        self._storage = storage
        self._backend = backend
        self._queue = storage.name

    # -- the worker --------------------------------------------------------------

    def dequeue(self, decide: Decide, act: Act, rescue: Rescue) -> Task | None:
        """Pop until a runnable task; what cannot run is settled with its pop."""
        ahead = 1
        while True:
            run = self._decide_run(self._heads(ahead), decide)
            if not run:
                return None
            if len(run) > 1:
                taken = self._take_run(run)
                if taken is None:
                    ahead = 1  # rolled back: settle one by one, as below
                    continue
            else:
                row_id, raw, priority, decision = run[0]
                taken = [self._take(row_id, raw, priority, decision)]
            task = self._after_commit(run, taken, act, rescue)
            if task is not None:
                return task
            ahead = _AHEAD  # the head could not run: read further ahead

    def _heads(self, limit: int) -> list[tuple[int, bytes, float]]:
        rows = self._storage.sql(
            "select id, data, priority from task where queue = ? "
            "order by priority desc, id limit ?",
            (self._queue, limit),
            results=True,
        )
        return [(row_id, bytes(data), priority) for row_id, data, priority in rows]

    @staticmethod
    def _decide_run(heads: list[tuple[int, bytes, float]], decide: Decide) -> list[_Decided]:
        """The head rows up to and including the first one that needs this worker."""
        run: list[_Decided] = []
        for row_id, raw, priority in heads:
            decision = decide(raw, from_schedule=False)
            run.append((row_id, raw, priority, decision))
            if isinstance(decision, Task | HandlerAction):
                break
        return run

    def _take_run(self, run: list[_Decided]) -> list[bool] | None:
        """Delete the rows and settle them in one transaction; None if it failed."""
        try:
            self._backend.ensure_table()
            with self._storage.db(commit=True) as cursor:
                return [self._take_row(cursor, row_id, raw, d) for row_id, raw, _, d in run]
        except Exception:
            logger.warning("Settling %d messages at once failed; one at a time.", len(run))
            return None

    def _after_commit(
        self, run: list[_Decided], taken: list[bool], act: Act, rescue: Rescue
    ) -> Task | None:
        for (_, raw, _, decision), took in zip(run, taken, strict=True):
            if not took:
                continue  # another worker took it first
            if isinstance(decision, Task):
                decision.__dict__["_vt_dequeued"] = raw  # see _huey.dequeued_bytes
                return decision
            if isinstance(decision, HandlerAction):
                self._run_handler(raw, decision, act, rescue)
            elif isinstance(decision, DeferAction):
                decision.done()  # committed: count it and send the signal
        return None

    def _take_row(self, cursor: Any, row_id: int, raw: bytes, decision: Any) -> bool:
        # By id AND bytes: SQLite reuses a freed rowid, so the id alone
        # could name a message enqueued after another worker took ours.
        cursor.execute("delete from task where id = ? and data = ?", (row_id, raw))
        if cursor.rowcount != 1:
            return False
        if not isinstance(decision, Task | HandlerAction):
            self._apply(cursor, raw, decision)
        return True

    def _take(self, row_id: int, raw: bytes, priority: float, decision: Any) -> bool:
        """Delete the row and settle the decision in one transaction; False if gone."""
        if not isinstance(decision, Task | HandlerAction):
            self._backend.ensure_table()
        try:
            with self._storage.db(commit=True) as cursor:
                return self._take_row(cursor, row_id, raw, decision)
        except Exception:
            if not isinstance(decision, Task | HandlerAction):
                # Rolled back, so the message is still queued. Move it behind
                # the others, as the generic path does, so that a broken
                # dead-letter table does not keep it at the head.
                self._to_tail(row_id, raw)
            raise

    def _to_tail(self, row_id: int, raw: bytes) -> None:
        try:
            with self._storage.db(commit=True) as cursor:
                cursor.execute("delete from task where id = ? and data = ?", (row_id, raw))
                if cursor.rowcount == 1:
                    cursor.execute(
                        "insert into task (queue, data, priority) values (?, ?, 0)",
                        (self._queue, raw),
                    )
        except Exception:
            logger.exception("Could not move a message that cannot be settled to the tail.")

    @staticmethod
    def _run_handler(raw: bytes, action: HandlerAction, act: Act, rescue: Rescue) -> None:
        # The row is already gone: a handler that fails and then a dead-letter
        # write that fails too must not lose the bytes.
        try:
            act(raw, action)
        except Exception:
            rescue(raw)
            raise

    # -- the scheduler -----------------------------------------------------------

    def read_schedule(self, timestamp: Any, decide: Decide) -> list[Task]:
        """Pop the due messages; each one that cannot run is settled in the same transaction.

        A message whose dead-letter write fails stays on the schedule, untouched,
        and the others go ahead.
        """
        rows = self._storage.sql(
            "select id, data from schedule where queue = ? and timestamp <= ? "
            "order by timestamp, id",
            (self._queue, timestamp.timestamp()),
            results=True,
        )
        if not rows:
            return []
        decided = [(row_id, raw, decide(raw, from_schedule=True)) for row_id, raw in _bytes(rows)]
        if not all(isinstance(decision, Task) for _, _, decision in decided):
            try:
                self._backend.ensure_table()
            except Exception:
                logger.exception("The dead-letter table is not usable; bad messages stay put.")
        tasks: list[Task] = []
        deferred: list[DeferAction] = []
        with self._storage.db(commit=True) as cursor:
            for row_id, raw, decision in decided:
                if isinstance(decision, Task):
                    cursor.execute("delete from schedule where id = ? and data = ?", (row_id, raw))
                    if cursor.rowcount == 1:
                        tasks.append(decision)
                elif self._settle(cursor, row_id, raw, decision) and isinstance(
                    decision, DeferAction
                ):
                    deferred.append(decision)
        for action in deferred:
            action.done()  # committed, and the storage's lock released
        return tasks

    def _settle(self, cursor: Any, row_id: int, raw: bytes, action: Action) -> bool:
        cursor.execute("savepoint vt_settle")
        try:
            cursor.execute("delete from schedule where id = ? and data = ?", (row_id, raw))
            if cursor.rowcount == 1:
                self._apply(cursor, raw, action)
                return True
        except Exception:
            cursor.execute("rollback to vt_settle")
            logger.exception("Could not settle a scheduled message; it stays on the schedule.")
        finally:
            cursor.execute("release vt_settle")
        return False

    # -- both --------------------------------------------------------------------

    def _apply(self, cursor: Any, raw: bytes, action: Action) -> None:
        blob = self._storage.to_blob(raw)
        if isinstance(action, DeadLetterAction):
            entry = self._backend.insert(cursor, raw, action)
            action.log(entry.id)
        elif isinstance(action, DeferAction):
            cursor.execute(
                "insert into schedule (queue, data, timestamp) values (?, ?, ?)",
                (self._queue, blob, action.eta.timestamp()),
            )
            action.log()
        elif isinstance(action, RequeueAction):
            cursor.execute(
                "insert into task (queue, data, priority) values (?, ?, ?)",
                (self._queue, blob, action.priority or 0),
            )


def _bytes(rows: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    return [(row_id, bytes(data)) for row_id, data in rows]
