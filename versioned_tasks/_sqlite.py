"""Pops from a SqliteStorage that write their dead letters in the same transaction.

Huey has no acknowledgement: a popped message is gone from storage, and a crash
between the pop and the dead-letter write loses it. When the dead-letter table
lives in the queue's own SQLite database, that window can be closed: the row is
deleted and the dead letter (or the deferral) written in one transaction, so a
crash leaves either the message where it was or its dead letter, never neither.
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
Act = Callable[[bytes, Action], None]


class AtomicSqlite:
    """The worker's and the scheduler's pops, each in one SQLite transaction."""

    def __init__(self, storage: SqliteStorage, backend: SqliteBackend) -> None:
        self._storage = storage
        self._backend = backend
        self._queue = storage.name

    def dequeue(self, decide: Decide, act: Act) -> Task | None:
        """Pop until a runnable task; what cannot run is settled in the pop's transaction."""
        while True:
            if not self._storage.sql(
                "select 1 from task where queue = ? limit 1", (self._queue,), results=True
            ):
                return None
            self._backend.ensure_table()
            try:
                popped = self._pop_one(decide)
            except Exception:
                # Rolled back: the message is still at the head of the queue.
                # Move it to the tail, as the generic path does, so that a
                # broken dead-letter table does not block the tasks behind it.
                self._move_head_to_tail()
                raise
            if popped is None:
                return None
            raw, decision = popped
            if isinstance(decision, Task):
                return decision
            if isinstance(decision, HandlerAction):
                # User code runs outside the transaction.
                act(raw, decision)

    def _pop_one(self, decide: Decide) -> tuple[bytes, Any] | None:
        with self._storage.db(commit=True) as cursor:
            cursor.execute(
                "select id, data from task where queue = ? order by priority desc, id limit 1",
                (self._queue,),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            row_id, data = row
            cursor.execute("delete from task where id = ?", (row_id,))
            raw = bytes(data)
            decision = decide(raw, from_schedule=False)
            if not isinstance(decision, Task | HandlerAction):
                self._apply(cursor, raw, decision)
            return raw, decision

    def _move_head_to_tail(self) -> None:
        with self._storage.db(commit=True) as cursor:
            cursor.execute(
                "select id, data, priority from task where queue = ? "
                "order by priority desc, id limit 1",
                (self._queue,),
            )
            row = cursor.fetchone()
            if row is not None:
                cursor.execute("delete from task where id = ?", (row[0],))
                cursor.execute(
                    "insert into task (queue, data, priority) values (?, ?, ?)",
                    (self._queue, row[1], row[2]),
                )

    def read_schedule(self, timestamp: Any, decide: Decide, act: Act) -> list[Task]:
        """Pop the due messages; each one that cannot run is settled in the same transaction.

        A message whose dead-letter write fails stays on the schedule, untouched,
        and the others go ahead.
        """
        try:
            self._backend.ensure_table()
        except Exception:
            logger.exception("The dead-letter table is not usable; bad messages stay put.")
        tasks: list[Task] = []
        with self._storage.db(commit=True) as cursor:
            cursor.execute(
                "select id, data from schedule where queue = ? and timestamp <= ? "
                "order by timestamp, id",
                (self._queue, timestamp.timestamp()),
            )
            for row_id, data in cursor.fetchall():
                raw = bytes(data)
                decision = decide(raw, from_schedule=True)
                if isinstance(decision, Task):
                    cursor.execute("delete from schedule where id = ?", (row_id,))
                    tasks.append(decision)
                else:
                    self._settle(cursor, row_id, raw, decision)
        return tasks

    def _settle(self, cursor: Any, row_id: int, raw: bytes, action: Action) -> None:
        cursor.execute("savepoint vt_settle")
        try:
            cursor.execute("delete from schedule where id = ?", (row_id,))
            self._apply(cursor, raw, action)
        except Exception:
            cursor.execute("rollback to vt_settle")
            logger.exception("Could not settle a scheduled message; it stays on the schedule.")
        finally:
            cursor.execute("release vt_settle")

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
