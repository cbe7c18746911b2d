"""Pops from a SQL storage that settle a message that cannot run in the same transaction.

Huey has no acknowledgement: a popped message is gone from storage, and a crash
between the pop and the dead-letter write loses it. When the dead-letter table
lives in the queue's own database (SQLite, PostgreSQL), that window can be
closed: the row is deleted and the dead letter (or the deferral, or the
requeue) written in one transaction, so a crash leaves either the message where
it was or its dead letter, never neither.

The read pipeline runs before that transaction, outside the storage's lock and
holding no row lock: it has no side effects, and user code it calls
(validators, upcasters) may then use the storage without deadlocking. The row
is then deleted by id, and only the worker whose delete removed it goes on
with it; when two workers read the same head, the other one reads the next.
A runnable task costs one read and one single-statement delete.

Most messages call no user code at all: a current-version message of a task
whose arguments are plain JSON types is read by this library and
pydantic-core alone (``Reader.read_pure``). Such a head row is read and
deleted in one hold of the storage's lock, as Huey's own pop does, so that
thread workers hand the lock over once per task rather than twice.

Threads of one process share the storage's connection: a thread claims the rows
it reads (in memory, until its delete has committed or rolled back) and the
others read past them, so thread workers do not all read the same head and lose
the delete to one another (with four thread workers they did, about one read in
two). Workers in other processes have claims of their own; between them the
delete by id settles who takes a row, as above, and a process that lost one
reads a few rows further on for a while (``_Lane``), so that processes do not
all read the same head again.

A commit costs a disk sync, which is most of what a message costs here. Once the
head turns out to be a message that cannot run, the worker reads further ahead
and settles the run of such messages (and the task that ends it) in one
transaction: a flood of bad messages costs a fraction of a commit each, and a
queue of good tasks still reads one row at a time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from huey.api import Task
from huey.storage import PostgresStorage, SqliteStorage

from ..messages.actions import Action, DeadLetterAction, DeferAction, HandlerAction, RequeueAction
from .deadletters import PostgresBackend, SqliteBackend
from .forking import guard_across_fork, reset_in_child

__all__ = ["AtomicPostgres", "AtomicSql", "AtomicSqlite"]

logger = logging.getLogger("versioned_tasks")

Decide = Callable[..., "Task | Action"]
Act = Callable[[bytes, Action], None]
Rescue = Callable[[bytes], None]
#: ``pure(raw)``: the runnable task in ``raw`` when reading it calls no user
#: code, else None (see ``Reader.read_pure``); safe to call holding the storage.
Pure = Callable[[bytes], "Task | None"]
#: ``settled(raw, decision)``: this worker took the row it decided (for observers).
Settled = Callable[[bytes, Any], None]
#: The storage keys of a task's revocation records (Huey's ``_revoke_keys``).
RevocationKeys = Callable[[Task], list[str]]
_Decided = tuple[int, bytes, "Task | Action"]
#: Dead letters written in a transaction, announced (logged, signalled) once it commits.
_Written = list[tuple[DeadLetterAction, str]]

#: How many rows a worker reads at once after a head that could not run.
_AHEAD = 64
#: A pop that lost a delete to another process reads at most this many rows
#: past the head (a power of two, less one) ...
_MAX_SKIP = 15
#: ... for this many pops, then reads the head again (see ``_Lane``).
_LANE_POPS = 16


class _Lane:
    """Where one process's pops read a SQL queue: the head, or a row a few on.

    Consumer processes each have their own connection and do not see each
    other's claims: they read the same head, and all but one lose its delete
    (with four process workers on PostgreSQL, two to three lost deletes per
    message). A pop that lost moves to a row picked at random among the first
    2, then 4, 8 and 16 as it keeps losing, so that processes settle on
    different rows. Every ``_LANE_POPS`` pops from then on (lost, won or
    handed to the slow path alike) it reads the head again, so that no message
    waits behind the lanes for more than that many pops of each process; and
    it goes back to the head for good when the queue is shorter than its lane.
    Threads of a process share its lane (they do not lose to each other); the
    storage's lock, held by every pop, orders their updates.
    """

    __slots__ = ("_pops", "_spread", "skip")

    def __init__(self) -> None:
        #: Rows to read past (beyond those this process's threads claimed).
        self.skip = 0
        self._spread = 1
        self._pops = 0

    def lost(self) -> None:
        """This pop's delete removed nothing: another process took the row."""
        self._spread = min(self._spread * 2, _MAX_SKIP + 1)
        self.skip = random.randrange(self._spread)
        self.popped()

    def popped(self) -> None:
        """A pop read a row (and lost, won or handed it to the slow path)."""
        if self._spread > 1:
            self._pops += 1
            if self._pops >= _LANE_POPS:
                # Back to the head; the spread stays, for the next loss.
                self.skip = self._pops = 0

    def reset(self) -> None:
        """Read the head from the next pop on."""
        self.skip, self._spread, self._pops = 0, 1, 0


class AtomicSql:
    """The worker's and the scheduler's pops, each settled in one SQL transaction.

    Subclasses give the tables, the placeholder and how a row is named; the
    statements and the flow are shared.
    """

    def __init__(
        self, storage: Any, backend: Any, *, task: str, schedule: str, placeholder: str
    ) -> None:
        self._storage = storage
        self._backend = backend
        self._queue = storage.name
        p = placeholder
        this_row = self._this_row(p)
        self._task_table = task
        self._placeholder = p
        self._select_heads = (
            f"select id, data from {task} where queue = {p} "
            f"order by priority desc, id limit {p} offset {p}"
        )
        #: Per number of claimed rows, the head query that reads past them.
        self._select_heads_past: dict[int, str] = {0: self._select_heads}
        #: Ids of the task rows this process's threads have read and not yet settled.
        self._claimed: set[int] = set()
        self._claims_lock = threading.Lock()
        #: Where this process's pops read the queue (see ``_Lane``).
        self._lane = _Lane()
        # Taken inside the storage's lock (_claim_heads), so held after it across
        # a fork; the child's threads hold none of the parent's claims.
        guard_across_fork(self, "_claims_lock", rank=2)
        reset_in_child(self, "_forget_claims")
        self._delete_task = f"delete from {task} where {this_row}"
        self._insert_task = f"insert into {task} (queue, data, priority) values ({p}, {p}, {p})"
        self._select_due = (
            f"select id, data from {schedule} where queue = {p} and timestamp <= {p} "
            "order by timestamp, id"
        )
        self._delete_scheduled = f"delete from {schedule} where {this_row}"
        self._insert_scheduled = (
            f"insert into {schedule} (queue, data, timestamp) values ({p}, {p}, {p})"
        )

    # -- what differs between drivers --------------------------------------------

    @staticmethod
    def _this_row(p: str) -> str:
        """The where clause naming one popped row (its parameters: ``_row``)."""
        raise NotImplementedError

    @staticmethod
    def _row(row_id: int, raw: bytes) -> tuple[Any, ...]:
        raise NotImplementedError

    def _blob(self, raw: bytes) -> Any:
        return raw

    def _wait(self, since: float) -> bool:
        """Wait for an enqueue after finding the queue empty at ``since``; False: give up."""
        return False

    def _requeued(self, cursor: Any) -> None:
        """Called in the transaction that put a message back on the queue."""

    def _lookup_records(self, count: int) -> str | None:
        """The query reading ``count`` revocation records, or None: no look-up ahead."""
        return None

    # -- the worker --------------------------------------------------------------

    def dequeue(
        self,
        decide: Decide,
        act: Act,
        rescue: Rescue,
        *,
        settled: Settled | None = None,
        revocation_keys: RevocationKeys | None = None,
        pure: Pure | None = None,
    ) -> Task | None:
        """Pop until a runnable task; what cannot run is settled with its pop.

        ``settled(raw, decision)`` is called for each row this worker took.
        With ``revocation_keys``, a task popped alone carries its revocation
        records, read while the pop held the storage (see ``_look_up_records``).
        With ``pure``, a head row it reads as a runnable task is deleted in the
        same hold of the storage as its read, as Huey's own pop does; any other
        row is decided outside it.
        """
        empty_since: float | None = None
        ahead = 1
        while True:
            popped = (
                self._pop_pure(pure, revocation_keys)
                if pure is not None and ahead == 1
                else self._claim_heads(ahead)
            )
            if popped is None:
                continue  # another process took the head: read the next one
            if isinstance(popped, Task):
                return popped
            heads = popped
            try:
                run = self._decide_run(heads, decide)
                if not run:
                    empty_since = empty_since or time.monotonic()
                    if self._wait(empty_since):
                        continue
                    return None
                written: _Written = []
                if len(run) > 1:
                    taken = self._take_run(run, written)
                    if taken is None:
                        ahead = 1  # rolled back: settle one at a time, as below
                        continue
                else:
                    row_id, raw, decision = run[0]
                    taken = [self._take(row_id, raw, decision, written, revocation_keys)]
            finally:
                # Deleted and committed, or rolled back and still queued.
                self._release(heads)
            _announce(written)
            if settled is not None:
                for (_, raw, decision), took in zip(run, taken, strict=True):
                    if took:
                        settled(raw, decision)
            task = self._after_commit(run, taken, act, rescue)
            if task is not None:
                return task
            ahead = _AHEAD  # the head could not run: read further ahead

    def _claim_heads(self, limit: int) -> list[tuple[int, bytes]]:
        """Read up to ``limit`` head rows that no other thread has claimed; claim them."""
        with self._storage.db() as cursor:  # the storage's lock: one reader at a time
            heads = self._read_heads(cursor, limit)
            self._claim_rows(heads)
        return heads

    def _pop_pure(
        self, pure: Pure, revocation_keys: RevocationKeys | None
    ) -> Task | list[tuple[int, bytes]] | None:
        """Read the head row (or one a few rows on: see ``_Lane``) and, if ``pure``
        reads it as a runnable task, delete it in the same hold of the storage:
        one hand-over of the lock per task.

        Returns the task; or the head, claimed, for ``decide`` outside the lock
        (an empty list: the queue is empty); or None when another process
        deleted the head between this read and this delete.
        """
        lane = self._lane
        with self._storage.db() as cursor:
            heads = self._read_heads(cursor, 1, lane.skip)
            if not heads and lane.skip:
                lane.reset()  # fewer rows than that: read the head
                heads = self._read_heads(cursor, 1)
            if heads:
                row_id, raw = heads[0]
                task = pure(raw)
                if task is not None:
                    if not self._delete_runnable(cursor, row_id, raw, task, revocation_keys):
                        lane.lost()
                        return None
                    lane.popped()
                    task.__dict__["_vt_dequeued"] = raw  # see app.dispatch.dequeued_bytes
                    return task
                lane.popped()
                self._claim_rows(heads)
        return heads

    def _read_heads(self, cursor: Any, limit: int, skip: int = 0) -> list[tuple[int, bytes]]:
        """Up to ``limit`` head rows no thread of this process has claimed, past
        the first ``skip`` of them (the caller holds the storage's lock)."""
        with self._claims_lock:
            past = tuple(self._claimed)
        cursor.execute(self._heads_past(len(past)), (self._queue, *past, limit, skip))
        return _bytes(cursor.fetchall())

    def _claim_rows(self, heads: list[tuple[int, bytes]]) -> None:
        with self._claims_lock:
            self._claimed.update(row_id for row_id, _ in heads)

    def _heads_past(self, count: int) -> str:
        query = self._select_heads_past.get(count)
        if query is None:
            p = self._placeholder
            query = (
                f"select id, data from {self._task_table} where queue = {p} "
                f"and id not in ({', '.join([p] * count)}) "
                f"order by priority desc, id limit {p} offset {p}"
            )
            self._select_heads_past[count] = query
        return query

    def _release(self, heads: list[tuple[int, bytes]]) -> None:
        with self._claims_lock:
            self._claimed.difference_update(row_id for row_id, _ in heads)

    def _forget_claims(self) -> None:
        """In a forked child: the threads that held the parent's claims are not here."""
        self._claimed.clear()

    @staticmethod
    def _decide_run(heads: list[tuple[int, bytes]], decide: Decide) -> list[_Decided]:
        """The head rows up to and including the first one that needs this worker."""
        run: list[_Decided] = []
        for row_id, raw in heads:
            decision = decide(raw, from_schedule=False)
            run.append((row_id, raw, decision))
            if isinstance(decision, Task | HandlerAction):
                break
        return run

    def _take_run(self, run: list[_Decided], written: _Written) -> list[bool] | None:
        """Delete the rows and settle them in one transaction; None if it failed."""
        mine: _Written = []
        try:
            self._backend.ensure_table()
            with self._storage.db(commit=True) as cursor:
                taken = [self._take_row(cursor, row_id, raw, d, mine) for row_id, raw, d in run]
        except Exception:
            logger.warning("Settling %d messages at once failed; one at a time.", len(run))
            return None
        written.extend(mine)
        return taken

    def _take_row(
        self, cursor: Any, row_id: int, raw: bytes, decision: Any, written: _Written
    ) -> bool:
        cursor.execute(self._delete_task, self._row(row_id, raw))
        if cursor.rowcount != 1:
            return False  # another worker took it first
        if not isinstance(decision, Task | HandlerAction):
            self._apply(cursor, raw, decision, written)
        return True

    def _after_commit(
        self, run: list[_Decided], taken: list[bool], act: Act, rescue: Rescue
    ) -> Task | None:
        """What is left to do once the run's transaction committed."""
        for (_, raw, decision), took in zip(run, taken, strict=True):
            if not took:
                continue  # another worker took it first
            if isinstance(decision, Task):
                decision.__dict__["_vt_dequeued"] = raw  # see app.dispatch.dequeued_bytes
                return decision
            if isinstance(decision, HandlerAction):
                self._run_handler(raw, decision, act, rescue)
            elif isinstance(decision, DeferAction):
                decision.done()  # committed: count it and send the signal
        return None

    def _take(
        self,
        row_id: int,
        raw: bytes,
        decision: Any,
        written: _Written,
        revocation_keys: RevocationKeys | None = None,
    ) -> bool:
        """Delete the row and settle the decision in one transaction; False if gone."""
        if isinstance(decision, Task | HandlerAction):
            # One statement is a transaction of its own: no begin/commit.
            keys_of = revocation_keys if isinstance(decision, Task) else None
            with self._storage.db() as cursor:
                return self._delete_runnable(cursor, row_id, raw, decision, keys_of)
        try:
            self._backend.ensure_table()
            mine: _Written = []
            with self._storage.db(commit=True) as cursor:
                took = self._take_row(cursor, row_id, raw, decision, mine)
            written.extend(mine)
            return took
        except Exception:
            # Rolled back (or never begun), so the message is still queued.
            # Move it behind the others, as the generic path does, so that a
            # broken dead-letter table does not keep it at the head.
            self._to_tail(row_id, raw)
            raise

    def _delete_runnable(
        self, cursor: Any, row_id: int, raw: bytes, task: Any, keys_of: RevocationKeys | None
    ) -> bool:
        """Delete the row of a task (or a handled message) that runs after its pop,
        with its revocation records when ``keys_of`` is given; whether it was ours."""
        if keys_of is not None:
            return self._delete_looking_up(cursor, row_id, raw, task, keys_of)
        cursor.execute(self._delete_task, self._row(row_id, raw))
        return bool(cursor.rowcount == 1)

    def _delete_looking_up(
        self, cursor: Any, row_id: int, raw: bytes, task: Task, keys_of: RevocationKeys
    ) -> bool:
        """Delete a runnable task's row; if it was ours, read its revocation records."""
        cursor.execute(self._delete_task, self._row(row_id, raw))
        took = bool(cursor.rowcount == 1)
        if took:
            self._look_up_records(cursor, task, keys_of)
        return took

    def _look_up_records(self, cursor: Any, task: Task, keys_of: RevocationKeys) -> None:
        """Read the task's revocation records while this pop holds the storage.

        Huey looks them up when it executes the task, a few microseconds later
        in the same thread; reading them here spares the worker taking the
        storage's lock once more per task, which with thread workers is a
        hand-over between threads. The records go on the task as ``(keys,
        {key: value})``, for the app's ``is_revoked``, which takes them once. The
        row is already deleted: a failure here only leaves the look-up to Huey.
        """
        try:
            keys = keys_of(task)
            query = self._lookup_records(len(keys))
            if query is None:
                return
            cursor.execute(query, (self._queue, *keys))
            task.__dict__["_vt_revocations"] = (keys, dict(cursor.fetchall()))
        except Exception:
            logger.debug(
                "Revocation records not read with the pop; Huey reads them.", exc_info=True
            )

    def _to_tail(self, row_id: int, raw: bytes) -> None:
        try:
            with self._storage.db(commit=True) as cursor:
                cursor.execute(self._delete_task, self._row(row_id, raw))
                if cursor.rowcount == 1:
                    cursor.execute(self._insert_task, (self._queue, self._blob(raw), 0))
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

    def read_schedule(
        self, timestamp: Any, decide: Decide, *, settled: Settled | None = None
    ) -> list[Task]:
        """Pop the due messages; each one that cannot run is settled in the same transaction.

        ``settled(raw, decision)`` is called for each row this scheduler took.

        A message whose dead-letter write fails stays on the schedule, untouched,
        and the others go ahead.
        """
        rows = self._storage.sql(
            self._select_due, (self._queue, timestamp.timestamp()), results=True
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
        written: _Written = []
        took: list[tuple[bytes, Any]] = []
        with self._storage.db(commit=True) as cursor:
            held = self._claim(cursor, decided)
            runnable = [(row_id, raw) for row_id, raw, d in held if isinstance(d, Task)]
            taken = self._take_due(cursor, runnable)
            for row_id, raw, decision in held:
                if isinstance(decision, Task):
                    if row_id in taken:
                        tasks.append(decision)
                        took.append((raw, decision))
                elif self._settle(cursor, row_id, raw, decision, written):
                    took.append((raw, decision))
                    if isinstance(decision, DeferAction):
                        deferred.append(decision)
        _announce(written)
        if settled is not None:
            for raw, decision in took:
                settled(raw, decision)
        for action in deferred:
            action.done()  # committed, and the storage's lock released
        return tasks

    def _claim(self, cursor: Any, decided: list[_Decided]) -> list[_Decided]:
        """The due rows this transaction may take (all of them, unless a subclass locks)."""
        return decided

    def _take_due(self, cursor: Any, rows: list[tuple[int, bytes]]) -> set[int]:
        """Delete the runnable due rows; the ids of those this transaction deleted."""
        taken = set()
        for row_id, raw in rows:
            cursor.execute(self._delete_scheduled, self._row(row_id, raw))
            if cursor.rowcount == 1:
                taken.add(row_id)
        return taken

    def _settle(
        self, cursor: Any, row_id: int, raw: bytes, action: Action, written: _Written
    ) -> bool:
        cursor.execute("savepoint vt_settle")
        try:
            cursor.execute(self._delete_scheduled, self._row(row_id, raw))
            if cursor.rowcount == 1:
                mine: _Written = []
                self._apply(cursor, raw, action, mine)
                written.extend(mine)  # kept unless rolled back to the savepoint
                return True
        except Exception:
            cursor.execute("rollback to savepoint vt_settle")
            logger.exception("Could not settle a scheduled message; it stays on the schedule.")
        finally:
            cursor.execute("release savepoint vt_settle")
        return False

    # -- both --------------------------------------------------------------------

    def _apply(self, cursor: Any, raw: bytes, action: Action, written: _Written) -> None:
        if isinstance(action, DeadLetterAction):
            entry = self._backend.insert(cursor, raw, action)
            written.append((action, entry.id))  # announced once committed
        elif isinstance(action, DeferAction):
            cursor.execute(
                self._insert_scheduled, (self._queue, self._blob(raw), action.eta.timestamp())
            )
            action.log()
        elif isinstance(action, RequeueAction):
            cursor.execute(self._insert_task, (self._queue, self._blob(raw), action.priority or 0))
            self._requeued(cursor)


_SQLITE_LOOKUPS: dict[int, str] = {}


class AtomicSqlite(AtomicSql):
    """On a SqliteStorage: its ``task`` and ``schedule`` tables."""

    def __init__(self, storage: SqliteStorage, backend: SqliteBackend) -> None:
        super().__init__(storage, backend, task="task", schedule="schedule", placeholder="?")

    @staticmethod
    def _this_row(p: str) -> str:
        # By id AND bytes: SQLite reuses a freed rowid, so the id alone could
        # name a message enqueued after another worker took ours.
        return f"id = {p} and data = {p}"

    @staticmethod
    def _row(row_id: int, raw: bytes) -> tuple[Any, ...]:
        return (row_id, raw)

    def _blob(self, raw: bytes) -> Any:
        return self._storage.to_blob(raw)

    def _lookup_records(self, count: int) -> str | None:
        # As SqliteStorage.peek_many reads them (its kv table); one text per count.
        query = _SQLITE_LOOKUPS.get(count)
        if query is None:
            marks = ", ".join("?" * count)
            query = _SQLITE_LOOKUPS[count] = (
                f"select key, value from kv where queue = ? and key in ({marks})"
            )
        return query


class AtomicPostgres(AtomicSql):
    """On a PostgresStorage: its ``<prefix>_task`` and ``<prefix>_schedule`` tables.

    An empty queue blocks as the storage's own ``dequeue()`` does: with
    ``blocking=True`` the worker waits on the queue's LISTEN channel for up to
    ``read_timeout`` seconds rather than polling.

    The head is read without ``for update skip locked``: a row lock is written
    to the row and makes the read a transaction to flush at commit, which a
    runnable task would pay for every time. Without it, a worker that reads a
    head another worker is taking only loses the delete and reads the next one.
    """

    def __init__(self, storage: PostgresStorage, backend: PostgresBackend) -> None:
        super().__init__(
            storage,
            backend,
            task=storage.table_task,
            schedule=storage.table_schedule,
            placeholder="%s",
        )
        import psycopg  # the storage needs it: present

        self._connection_lost: type[Exception] = psycopg.OperationalError
        # Every row of the result carries how many task rows were deleted (0 or
        # 1); the left join gives one row when there is no record.
        self._delete_and_look_up = (
            f"with taken as (delete from {storage.table_task} where id = %s returning 1) "
            f"select (select count(*) from taken), kv.key, kv.value from (select 1) as one "
            f"left join {storage.table_kv} as kv on kv.queue = %s and kv.key = any(%s)"
        )

    @staticmethod
    def _this_row(p: str) -> str:
        # A bigserial id is never reused: the id alone names the row.
        return f"id = {p}"

    @staticmethod
    def _row(row_id: int, raw: bytes) -> tuple[Any, ...]:
        return (row_id,)

    def _delete_looking_up(
        self, cursor: Any, row_id: int, raw: bytes, task: Task, keys_of: RevocationKeys
    ) -> bool:
        """The delete and the revocation records' read in one statement: one round
        trip to the server, as Huey's own pop makes (its ``delete ... returning``).

        A statement the server or the driver refuses changed nothing (it is a
        transaction of its own): then the row is deleted alone and Huey reads the
        records, as it would. A lost connection is raised, as for any delete.
        """
        try:
            keys = keys_of(task)
            cursor.execute(self._delete_and_look_up, (row_id, self._queue, keys))
            rows = cursor.fetchall()
        except self._connection_lost:
            raise
        except Exception:
            logger.debug("Revocation records not read with the pop.", exc_info=True)
            cursor.execute(self._delete_task, self._row(row_id, raw))
            return bool(cursor.rowcount == 1)
        took = bool(rows and rows[0][0])
        if took:
            found = {key: bytes(value) for _, key, value in rows if key is not None}
            task.__dict__["_vt_revocations"] = (keys, found)
        return took

    def _wait(self, since: float) -> bool:
        storage = self._storage
        if not storage.blocking:
            return False
        timeout = since + storage.read_timeout - time.monotonic()
        if timeout <= 0:
            return False
        # The storage's per-thread LISTEN connection, as its dequeue() uses.
        conn = storage._listen_conn()
        return bool(list(conn.notifies(timeout=timeout, stop_after=1)))

    def _claim(self, cursor: Any, decided: list[_Decided]) -> list[_Decided]:
        # Lock the batch up front, skipping rows another scheduler holds (it
        # takes them): schedulers never wait for each other, and never lock
        # rows in orders that could deadlock.
        cursor.execute(
            f"select id from {self._storage.table_schedule} "
            "where id = any(%s) for update skip locked",
            ([row_id for row_id, _, _ in decided],),
        )
        held = {row_id for (row_id,) in cursor.fetchall()}
        return [row for row in decided if row[0] in held]

    def _take_due(self, cursor: Any, rows: list[tuple[int, bytes]]) -> set[int]:
        if not rows:
            return set()
        cursor.execute(
            f"delete from {self._storage.table_schedule} where id = any(%s) returning id",
            ([row_id for row_id, _ in rows],),
        )
        return {row_id for (row_id,) in cursor.fetchall()}

    def _requeued(self, cursor: Any) -> None:
        # Wake the waiting workers, as Huey's enqueue does; sent at commit.
        cursor.execute("select pg_notify(%s, %s)", (self._storage.channel, ""))


def _announce(written: _Written) -> None:
    """Log each dead letter of a committed transaction and send its signal."""
    for action, entry_id in written:
        action.done(entry_id)


def _bytes(rows: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    return [(row_id, bytes(data)) for row_id, data in rows]
