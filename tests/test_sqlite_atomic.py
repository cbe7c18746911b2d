"""On SQLite a crash between the pop and the dead-letter write loses nothing.

Each test runs a worker in a child process that dies (``os._exit``) inside the
dead-letter insert, through a trigger calling a function registered on the
storage's own connection, as a killed worker would: mid-transaction.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
