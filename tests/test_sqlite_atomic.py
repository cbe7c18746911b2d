"""On SQLite a crash between the pop and the dead-letter write loses nothing.

Each test runs a worker in a child process that dies (``os._exit``) inside the
dead-letter insert, through a trigger calling a function registered on the
storage's own connection, as a killed worker would: mid-transaction.
"""

from __future__ import annotations

import datetime
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Recorder,
    pop_on_many_storages_concurrently,
    pop_with_user_code_using_the_storage,
    running_consumer,
    wait_for,
)

from versioned_tasks import VersionedSqliteHuey

JUNK = b"junk-not-an-envelope"

CHILD = textwrap.dedent(
    """
    import datetime, os, sys
    from versioned_tasks import VersionedSqliteHuey

    app = VersionedSqliteHuey("crash", filename=sys.argv[1])
    app.dead_letters.list()  # creates the table
    conn = app.storage.conn
    conn.create_function("die", 0, lambda: os._exit(17))
    conn.execute(
        "create trigger die_on_dead_letter before insert on vt_dead_letters "
        "begin select die(); end"
    )
    if sys.argv[2] == "queue":
        app.dequeue()
    else:
        app.read_schedule(datetime.datetime(2100, 1, 1))
    os._exit(0)  # not reached: the trigger ends the process first
    """
)


def crash_while_dead_lettering(path: Path, where: str) -> int:
    """Run a worker that dies inside the dead-letter insert; returns its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), where], capture_output=True, timeout=60
    )
    return done.returncode


def test_a_worker_killed_while_dead_lettering_leaves_the_message_on_the_queue(
    tmp_path: Path,
) -> None:
    """The pop is rolled back with the dead-letter insert: the bytes are still queued."""
    path = tmp_path / "queue.db"
    app = VersionedSqliteHuey("crash", filename=str(path))
    app.storage.enqueue(JUNK)

    assert crash_while_dead_lettering(path, "queue") == 17

    assert app.storage.enqueued_items() == [JUNK]
    assert len(app.dead_letters) == 0
    app.storage.sql("drop trigger die_on_dead_letter", commit=True)
    assert app.dequeue() is None
    assert [entry.raw for entry in app.dead_letters] == [JUNK]


def test_a_scheduler_killed_while_dead_lettering_leaves_the_message_on_the_schedule(
    tmp_path: Path,
) -> None:
    """The due batch is rolled back with the dead-letter insert: nothing leaves the schedule."""
    path = tmp_path / "queue.db"
    app = VersionedSqliteHuey("crash", filename=str(path))

    @app.versioned_task(version=1, name="crash.good")
    def good(x: int) -> int:
        return x

    app.storage.add_to_schedule(JUNK, datetime.datetime(2000, 1, 1))
    app.add_schedule(good.s(1, eta=datetime.datetime(2000, 1, 2)))

    assert crash_while_dead_lettering(path, "schedule") == 17

    assert app.scheduled_count() == 2
    assert len(app.dead_letters) == 0
    app.storage.sql("drop trigger die_on_dead_letter", commit=True)
    tasks = app.read_schedule(datetime.datetime(2100, 1, 1))
    assert [task.kwargs for task in tasks] == [{"x": 1}]
    assert app.scheduled_count() == 0
    assert [entry.raw for entry in app.dead_letters] == [JUNK]


def test_a_reused_rowid_never_takes_a_newer_message(tmp_path: Path) -> None:
    """SQLite reuses a freed rowid: a worker whose head row was taken by another
    worker, and refilled by a producer under the same id, must not delete the new
    message and run the old one twice."""
    path = str(tmp_path / "q.db")
    producer = VersionedSqliteHuey("q", filename=path)

    @producer.versioned_task(version=1, name="t.job")
    def job_v1(n: int) -> None: ...

    def worker(on_upcast: Callable[[], None]) -> VersionedSqliteHuey:
        app = VersionedSqliteHuey("q", filename=path)

        @app.versioned_task(version=2, name="t.job")
        def job(n: int, m: int) -> int:
            return n

        @app.upcaster("t.job", from_version=1)
        def up(payload: dict[str, Any]) -> dict[str, Any]:
            on_upcast()
            return {**payload, "m": 0}

        return app

    other = worker(lambda: None)
    taken: list[int] = []

    def meanwhile() -> None:
        # While worker A's pipeline runs: worker B takes the same head row, and
        # a producer enqueues a new message, which gets the freed rowid.
        if not taken:
            task = other.dequeue()
            assert task is not None
            taken.append(task.kwargs["n"])
            job_v1(2)

    first = worker(meanwhile)
    job_v1(1)
    task = first.dequeue()
    assert task is not None
    taken.append(task.kwargs["n"])
    assert taken == [1, 2]
    assert producer.pending_count() == 0
    assert len(producer.dead_letters) == 0


def _count_transactions(app: VersionedSqliteHuey) -> list[str]:
    """The transactions the app's connection begins from now on (sqlite3's trace hook)."""
    begun: list[str] = []
    app.storage.conn.set_trace_callback(
        lambda sql: begun.append(sql) if sql.lower().startswith("begin") else None
    )
    return begun


def test_a_run_of_bad_messages_is_settled_in_one_transaction_in_order(tmp_path: Path) -> None:
    """Once the head cannot run, the worker reads ahead: the rest of the run of bad
    messages and the task that ends it are settled in one transaction, in order."""
    app = VersionedSqliteHuey("batch", filename=str(tmp_path / "q.db"))

    @app.versioned_task(version=1, name="batch.good")
    def good(n: int) -> int:
        return n

    junk = [f"junk {i}".encode() for i in range(15)]
    for raw in junk[:10]:
        app.storage.enqueue(raw)
    good(1)
    for raw in junk[10:]:
        app.storage.enqueue(raw)
    len(app.dead_letters)  # creates the table
    begun = _count_transactions(app)

    task = app.dequeue()

    assert task is not None
    assert task.kwargs == {"n": 1}
    assert len(begun) == 2  # the head alone, then the other nine and the task
    assert [entry.raw for entry in app.dead_letters][::-1] == junk[:10]
    assert app.dequeue() is None
    assert len(begun) == 4
    assert [entry.raw for entry in app.dead_letters][::-1] == junk
    assert app.pending_count() == 0


def test_a_run_whose_dead_letter_write_fails_is_settled_one_by_one(tmp_path: Path) -> None:
    """A message whose dead-letter write fails rolls back its whole run; the
    worker settles the messages before it one at a time, moves it to the tail
    and raises, as for a single message."""
    app = VersionedSqliteHuey("batch", filename=str(tmp_path / "q.db"))
    messages = [b"junk 1", b"junk 2", b"poison", b"junk 3"]
    for raw in messages:
        app.storage.enqueue(raw)
    len(app.dead_letters)  # creates the table
    app.storage.sql(
        "create trigger refuse_poison before insert on vt_dead_letters "
        "when new.raw = cast('poison' as blob) begin select raise(abort, 'refused'); end",
        commit=True,
    )

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        app.dequeue()

    assert [entry.raw for entry in app.dead_letters][::-1] == [b"junk 1", b"junk 2"]
    assert app.storage.enqueued_items() == [b"junk 3", b"poison"]
    app.storage.sql("drop trigger refuse_poison", commit=True)
    assert app.dequeue() is None
    assert [entry.raw for entry in app.dead_letters][::-1] == [
        b"junk 1",
        b"junk 2",
        b"junk 3",
        b"poison",
    ]


@pytest.mark.parametrize("plain", [True, False], ids=["plain-json", "datetime"])
def test_thread_workers_of_one_consumer_never_race_for_the_same_row(
    tmp_path: Path, plain: bool
) -> None:
    """Thread workers share the storage's connection: a plain task is read and
    deleted in one hold of it, and a task read outside it (a datetime argument
    is validated by pydantic, not read as plain JSON) is claimed, so the others
    read past it. Every message costs one delete and runs once."""
    app = VersionedSqliteHuey("threads", filename=str(tmp_path / "q.db"))
    ran = Recorder()
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    if plain:

        @app.versioned_task(version=1, name="threads.job")
        def job(n: int) -> None:
            ran(n)

        for n in range(200):
            job(n)
    else:

        @app.versioned_task(version=1, name="threads.job")
        def dated(n: int, at: datetime.datetime) -> None:
            ran(n)

        for n in range(200):
            dated(n, when)
    deletes: list[str] = []
    app.storage.conn.set_trace_callback(
        lambda sql: deletes.append(sql) if sql.startswith("delete from task") else None
    )

    with running_consumer(app, workers=4):
        wait_for(lambda: len(ran) == 200)

    assert sorted(n for (n,) in ran.calls) == list(range(200))
    assert len(deletes) == 200
    assert app.pending_count() == 0


def test_a_task_revoked_once_while_queued_is_skipped_once_with_records_read_at_the_pop(
    tmp_path: Path,
) -> None:
    """The pop reads the task's revocation records with the delete; the worker
    uses them once: a task revoked once is skipped and its record cleared, and
    the same call enqueued again runs."""
    app = VersionedSqliteHuey("revoked", filename=str(tmp_path / "q.db"))

    @app.versioned_task(version=1, name="revoked.job")
    def job(n: int) -> int:
        return n

    skipped = job(1)
    skipped.revoke(revoke_once=True)
    lookups: list[str] = []
    app.storage.conn.set_trace_callback(
        lambda sql: lookups.append(sql) if sql.startswith("select key, value from kv") else None
    )

    task = app.dequeue()
    assert task is not None
    assert len(lookups) == 1  # read with the pop
    assert app.execute(task) is None
    assert len(lookups) == 1  # not again by Huey's execute
    assert not skipped.is_revoked()
    ran = job(2)
    task = app.dequeue()
    assert task is not None
    app.execute(task)
    assert ran.get() == 2


def test_a_revocation_made_between_the_pop_and_execute_is_honoured(tmp_path: Path) -> None:
    """Records read with the pop are not used once this process revoked or
    restored since: a task revoked after it was dequeued is skipped, and one
    restored after it was dequeued runs, as with Huey's own lookup."""
    app = VersionedSqliteHuey("late", filename=str(tmp_path / "q.db"))

    @app.versioned_task(version=1, name="late.job")
    def job(n: int) -> int:
        return n

    revoked_late = job(1)
    task = app.dequeue()
    assert task is not None
    revoked_late.revoke()
    assert app.execute(task) is None
    assert revoked_late.get() is None

    restored_late = job(2)
    restored_late.revoke()
    task = app.dequeue()
    assert task is not None
    restored_late.restore()
    assert app.execute(task) == 2


def test_validators_and_upcasters_that_use_the_storage_run_outside_its_lock(
    tmp_path: Path,
) -> None:
    """A plain task is read and deleted in one hold of the storage's lock; a task
    whose read runs user code is read outside it, so that code may use the storage."""
    path = str(tmp_path / "q.db")
    pop_with_user_code_using_the_storage(
        VersionedSqliteHuey("user-code", filename=path),
        VersionedSqliteHuey("user-code", filename=path),
    )


def test_pops_on_separate_connections_take_each_task_once(tmp_path: Path) -> None:
    """As on PostgreSQL: storages with a connection each, popping one queue at once."""
    path = str(tmp_path / "q.db")
    pop_on_many_storages_concurrently(
        [VersionedSqliteHuey("many", filename=path) for _ in range(4)]
    )


@pytest.mark.parametrize("plain", [True, False], ids=["plain-json", "datetime"])
def test_a_pop_reading_past_the_head_after_a_lost_delete_comes_back_to_it(
    tmp_path: Path, plain: bool
) -> None:
    """After deletes lost to other processes a pop reads a few rows on; it reads
    the head again within 16 pops, whichever path takes the rows it reads."""
    app = VersionedSqliteHuey("lane", filename=str(tmp_path / "q.db"))
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    @app.versioned_task(version=1, name="lane.first")
    def first() -> None: ...

    @app.versioned_task(version=1, name="lane.job")
    def job(n: int) -> None: ...

    @app.versioned_task(version=1, name="lane.dated")
    def dated(n: int, at: datetime.datetime) -> None: ...

    more = (lambda n: job(n)) if plain else (lambda n: dated(n, when))
    first()
    for n in range(40):
        more(n)
    # As pops that lost deletes to other processes leave it: reading rows on.
    lane = app._atomic._lane
    for _ in range(10):
        lane.lost()
        if lane.skip:
            break
    assert lane.skip > 0
    popped = []
    for n in range(40, 57):
        task = app.dequeue()
        assert task is not None
        popped.append(task.name)
        more(n)  # a producer keeps the queue long
    assert "lane.first" in popped
