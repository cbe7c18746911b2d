"""On PostgreSQL a crash between the pop and the dead-letter write loses nothing.

Each test has its own ``table_prefix``, so its tables are private: a crash test
can lock its dead-letter table, and a fault test can put a trigger on it,
without touching anyone else's rows. The crash tests run a real consumer in a
child process, let its dead-letter insert block on that lock, and kill it with
SIGKILL while it waits: mid-transaction, as a lost machine would.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import (
    PG_DSN,
    Recorder,
    pop_on_many_storages_concurrently,
    pop_with_user_code_using_the_storage,
    require_postgres,
    running_consumer,
    wait_for,
)

from versioned_tasks import VersionedPostgresHuey

JUNK = b"junk-not-an-envelope"

CHILD = textwrap.dedent(
    """
    import sys
    from versioned_tasks import VersionedPostgresHuey

    dsn, prefix, name = sys.argv[1:4]
    app = VersionedPostgresHuey(name, dsn=dsn, table_prefix=prefix, results=False)

    @app.versioned_task(version=1, name="crash.good")
    def good(n: int) -> None: ...

    consumer = app.create_consumer(
        workers=1, worker_type="thread", periodic=False, scheduler_interval=1,
        check_worker_health=False,
    )
    consumer.run()
    """
)


class Tables:
    """One test's private PostgreSQL tables (``<prefix>_task``, ...), and every
    connection its apps opened, closed at the end (the workers' LISTEN
    connections included, which Huey leaves to the garbage collector)."""

    SUFFIXES = ("task", "schedule", "kv", "counter", "vt_dead_letters")

    def __init__(self) -> None:
        self.prefix = f"vtpg_{uuid.uuid4().hex[:10]}"
        self.name = "atomic"
        self.connections: list[Any] = []

    def connect(self, **options: Any) -> Any:
        import psycopg

        conn = psycopg.connect(PG_DSN, **options)
        self.connections.append(conn)
        return conn

    def app(self, **options: Any) -> VersionedPostgresHuey:
        options = {"connection": self.connect, "blocking": False, "results": False, **options}
        return VersionedPostgresHuey(self.name, table_prefix=self.prefix, **options)

    def table(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def drop(self) -> None:
        import psycopg

        for conn in self.connections:
            conn.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for suffix in self.SUFFIXES:
                conn.execute(f"drop table if exists {self.table(suffix)}")
            conn.execute(f"drop function if exists {self.prefix}_refuse()")


@pytest.fixture
def tables() -> Iterator[Tables]:
    require_postgres()
    made = Tables()
    try:
        yield made
    finally:
        made.drop()


def sql(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on a connection of the test's own."""
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def kill_while_dead_lettering(tables: Tables) -> int:
    """Run a consumer whose dead-letter insert waits on a lock, SIGKILL it while it waits.

    Returns the child's exit status once its server session is gone too (so
    that the server has rolled its transaction back).
    """
    import psycopg

    table = tables.table("vt_dead_letters")
    with psycopg.connect(PG_DSN) as holder:
        holder.execute(f"lock table {table} in share mode")  # inserts wait for it
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, PG_DSN, tables.prefix, tables.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            waiting: list[tuple[Any, ...]] = []

            def blocked() -> bool:
                waiting[:] = sql(
                    "select pid from pg_locks where relation = to_regclass(%s) and not granted",
                    (table,),
                )
                return bool(waiting)

            wait_for(blocked, timeout=60)
            os.kill(child.pid, signal.SIGKILL)
            status = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        holder.rollback()  # lets the orphaned insert go on, into a rollback
    session = waiting[0][0]
    wait_for(lambda: not sql("select 1 from pg_stat_activity where pid = %s", (session,)), 60)
    return status


def test_a_worker_killed_while_dead_lettering_leaves_the_message_on_the_queue(
    tables: Tables,
) -> None:
    """kill -9 inside the dead-letter insert: the pop is rolled back with it; after a
    restart the message is dead-lettered once, with its bytes, and the rest runs once."""
    app = tables.app()
    ran = Recorder()

    @app.versioned_task(version=1, name="crash.good")
    def good(n: int) -> None:
        ran(n)

    app.dead_letters.list()  # creates the table the test locks
    app.storage.enqueue(JUNK)
    for n in range(3):
        good(n)

    assert kill_while_dead_lettering(tables) == -signal.SIGKILL

    assert app.storage.enqueued_items()[0] == JUNK
    assert app.pending_count() == 4
    assert len(app.dead_letters) == 0
    with running_consumer(app):
        wait_for(lambda: len(ran) == 3 and len(app.dead_letters) == 1)
    assert sorted(ran.calls) == [(0,), (1,), (2,)]
    assert [entry.raw for entry in app.dead_letters] == [JUNK]
    assert app.pending_count() == 0


def test_a_scheduler_killed_while_dead_lettering_leaves_the_batch_on_the_schedule(
    tables: Tables,
) -> None:
    """kill -9 inside the dead-letter insert of a due batch: the whole batch is still
    scheduled; after a restart the good one runs once and the bad one is dead-lettered once."""
    app = tables.app()
    ran = Recorder()

    @app.versioned_task(version=1, name="crash.good")
    def good(n: int) -> None:
        ran(n)

    app.dead_letters.list()
    app.storage.add_to_schedule(JUNK, datetime.datetime(2000, 1, 1))
    app.add_schedule(good.s(7, eta=datetime.datetime(2000, 1, 2)))

    assert kill_while_dead_lettering(tables) == -signal.SIGKILL

    assert app.scheduled_count() == 2
    assert app.pending_count() == 0
    assert len(app.dead_letters) == 0
    with running_consumer(app):
        wait_for(lambda: len(ran) == 1 and len(app.dead_letters) == 1)
    assert ran.calls == [(7,)]
    assert [entry.raw for entry in app.dead_letters] == [JUNK]
    assert app.scheduled_count() == 0


def refuse_dead_letters_of(tables: Tables, raw: bytes) -> None:
    """A trigger on the test's own dead-letter table that fails the insert of ``raw``."""
    table, function = tables.table("vt_dead_letters"), f"{tables.prefix}_refuse"
    sql(
        f"create function {function}() returns trigger language plpgsql as "
        "$$ begin raise exception 'refused by the test'; end $$"
    )
    sql(
        f"create trigger refuse before insert on {table} for each row "
        f"when (new.raw = '\\x{raw.hex()}'::bytea) execute function {function}()"
    )


def test_a_scheduled_message_whose_dead_letter_write_fails_stays_and_the_others_go_ahead(
    tables: Tables,
) -> None:
    """One failed insert rolls back to its savepoint: that message stays scheduled,
    the other bad one is dead-lettered and the good one is returned."""
    app = tables.app()

    @app.versioned_task(version=1, name="crash.good")
    def good(n: int) -> None: ...

    app.dead_letters.list()
    refuse_dead_letters_of(tables, b"refused")
    app.storage.add_to_schedule(b"refused", datetime.datetime(2000, 1, 1))
    app.storage.add_to_schedule(JUNK, datetime.datetime(2000, 1, 2))
    app.add_schedule(good.s(1, eta=datetime.datetime(2000, 1, 3)))

    tasks = app.read_schedule(datetime.datetime(2100, 1, 1))

    assert [task.kwargs for task in tasks] == [{"n": 1}]
    assert app.storage.scheduled_items() == [b"refused"]
    assert [entry.raw for entry in app.dead_letters] == [JUNK]


def test_a_message_whose_dead_letter_write_fails_stays_queued_behind_the_others(
    tables: Tables,
) -> None:
    """The failed insert rolls the pop back and the error reaches the consumer; the
    message moves to the tail so the ones behind it still run."""
    app = tables.app()

    @app.versioned_task(version=1, name="crash.good")
    def good(n: int) -> None: ...

    app.dead_letters.list()
    refuse_dead_letters_of(tables, b"refused")
    app.storage.enqueue(b"refused")
    good(1)

    with pytest.raises(Exception, match="refused by the test"):
        app.dequeue()

    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"n": 1}
    assert app.storage.enqueued_items() == [b"refused"]
    assert len(app.dead_letters) == 0


def test_a_worker_that_loses_the_head_to_another_worker_takes_the_next_message(
    tables: Tables,
) -> None:
    """Two workers read the same head: the one whose delete comes second does not run
    it again, and takes the next message instead."""
    producer = tables.app()

    @producer.versioned_task(version=1, name="t.job")
    def job_v1(n: int) -> None: ...

    def worker(on_upcast: Any) -> VersionedPostgresHuey:
        app = tables.app()

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
        # While worker A's read pipeline runs on the head, worker B takes it.
        if not taken:
            task = other.dequeue()
            assert task is not None
            taken.append(task.kwargs["n"])

    first = worker(meanwhile)
    job_v1(1)
    job_v1(2)
    task = first.dequeue()
    assert task is not None
    taken.append(task.kwargs["n"])
    assert taken == [1, 2]
    assert producer.pending_count() == 0
    assert len(producer.dead_letters) == 0


def test_two_consumers_on_a_flood_run_every_good_task_once_and_dead_letter_every_bad_one_once(
    tables: Tables,
) -> None:
    """Two consumers (two connections, two workers and a scheduler each), good and bad
    messages interleaved on the queue and on the schedule: each good one runs once,
    each bad one is in the store once with its exact bytes."""
    apps = [tables.app(blocking=True, read_timeout=0.5) for _ in range(2)]
    ran = Recorder()
    for app in apps:

        @app.versioned_task(version=1, name="flood.good")
        def good(n: int) -> None:
            ran(n)

    producer = tables.app()

    @producer.versioned_task(version=1, name="flood.good")
    def send(n: int) -> None: ...

    bad = [b"\x00junk %d" % n for n in range(120)]
    due = datetime.datetime(2000, 1, 1)
    for n in range(120):
        if n % 4:
            producer.storage.enqueue(bad[n])
        else:
            producer.storage.add_to_schedule(bad[n], due)
        send(n)
        if n % 10 == 0:
            producer.add_schedule(send.s(1000 + n, eta=due))
    goods = [*range(120), *(1000 + n for n in range(0, 120, 10))]

    with running_consumer(apps[0]), running_consumer(apps[1]):
        wait_for(
            lambda: len(ran) >= len(goods) and len(producer.dead_letters) >= len(bad),
            timeout=120,
        )
        time.sleep(0.5)  # anything run or dead-lettered twice would show up by now

    assert Counter(call[0] for call in ran.calls) == Counter(goods)
    assert sorted(entry.raw for entry in producer.dead_letters) == sorted(bad)
    assert producer.pending_count() == 0
    assert producer.scheduled_count() == 0
    rows = sql(f"select count(*) from {tables.table('vt_dead_letters')}")
    assert rows == [(len(bad),)]


def counting_app(tables: Tables, read_timeout: float) -> tuple[VersionedPostgresHuey, list[str]]:
    """A blocking app, and the list of its reads of the queue's head."""
    import psycopg

    heads: list[str] = []

    class Cursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            if str(query).startswith(f"select id, data from {tables.table('task')} "):
                heads.append(str(query))
            return super().execute(query, *args, **kwargs)

    app = tables.app(
        connection=lambda: tables.connect(cursor_factory=Cursor),
        blocking=True,
        read_timeout=read_timeout,
    )
    return app, heads


def test_a_blocking_dequeue_on_an_empty_queue_waits_for_the_enqueue_notification(
    tables: Tables,
) -> None:
    """With blocking=True an empty queue is not polled: the worker reads the head once,
    waits on LISTEN, and reads it again when a producer enqueues."""
    app, heads = counting_app(tables, read_timeout=60)

    @app.versioned_task(version=1, name="wait.job")
    def job(n: int) -> None: ...

    def produce() -> None:
        # Once the worker listens on the queue's channel, which it does only
        # after finding the queue empty.
        listen = f'listen "{app.storage.channel}"'
        wait_for(lambda: bool(sql("select 1 from pg_stat_activity where query = %s", (listen,))))
        job(5)

    producer = threading.Thread(target=produce)
    producer.start()
    task = app.dequeue()
    producer.join()

    assert task is not None
    assert task.kwargs == {"n": 5}
    assert len(heads) == 2


def test_a_blocking_dequeue_on_a_queue_that_stays_empty_returns_none_after_one_read(
    tables: Tables,
) -> None:
    """read_timeout ends the wait with None, as Huey's own dequeue does, without polling."""
    app, heads = counting_app(tables, read_timeout=0.3)

    assert app.dequeue() is None
    assert len(heads) == 1


def test_a_scheduler_passes_over_due_rows_another_scheduler_holds(tables: Tables) -> None:
    """Rows locked by another scheduler's open transaction are left to it, not waited
    for; once that transaction ends without taking them, the next read takes them."""
    app = tables.app()

    @app.versioned_task(version=1, name="sched.job")
    def job(n: int) -> None: ...

    due = datetime.datetime(2000, 1, 1)
    app.add_schedule(job.s(1, eta=due))
    app.storage.add_to_schedule(JUNK, due)
    app.add_schedule(job.s(2, eta=due))
    held = tables.connect()
    held.execute(
        f"select id from {tables.table('schedule')} where data = %s or data = %s for update",
        (JUNK, app.storage.scheduled_items()[0]),
    )

    first = app.read_schedule(datetime.datetime(2100, 1, 1))
    held.rollback()
    second = app.read_schedule(datetime.datetime(2100, 1, 1))

    assert [task.kwargs for task in first] == [{"n": 2}]
    assert [task.kwargs for task in second] == [{"n": 1}]
    assert [entry.raw for entry in app.dead_letters] == [JUNK]
    assert app.scheduled_count() == 0


def test_a_message_whose_task_name_holds_a_nul_is_dead_lettered_with_its_exact_bytes(
    tables: Tables,
) -> None:
    """PostgreSQL text cannot hold NUL: the entry's task name shows U+FFFD instead,
    and the bytes, in a bytea column, stay exact."""
    app = tables.app()
    raw = (
        b'VTE1{"kind":"task","task":"a\\u0000b","v":1,"id":"x","at":0,'
        b'"by":"versioned_tasks/0.1.0"}\n{}'
    )
    app.storage.enqueue(raw)

    assert app.dequeue() is None

    (entry,) = app.dead_letters
    assert entry.raw == raw
    assert entry.task == "a\ufffdb"
    assert app.pending_count() == 0


class Statements:
    """Every statement the app's storage connection sends, recorded as sent."""

    def __init__(self, tables: Tables) -> None:
        import psycopg

        self.sent: list[str] = []
        sent = self.sent

        class Recording(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                sent.append(str(query))
                return super().execute(query, *args, **kwargs)

        self.connect = lambda: tables.connect(autocommit=True, cursor_factory=Recording)

    def reading_records(self) -> list[str]:
        return [query for query in self.sent if "_kv" in query and "select" in query]


def test_the_pop_reads_a_tasks_revocation_records_in_its_delete(tables: Tables) -> None:
    """One statement deletes the task's row and reads its revocation records, and
    the worker uses them: a task revoked once is skipped, its record cleared, and
    the same call enqueued again runs."""
    statements = Statements(tables)
    app = tables.app(connection=statements.connect, results=True)

    @app.versioned_task(version=1, name="revoked.job")
    def job(n: int) -> int:
        return n

    skipped = job(1)
    skipped.revoke(revoke_once=True)
    statements.sent.clear()

    task = app.dequeue()
    assert task is not None
    [read] = statements.reading_records()
    assert read.startswith("with taken as (delete from")
    assert app.execute(task) is None
    assert len(statements.reading_records()) == 1  # not read again by Huey's execute
    assert not skipped.is_revoked()
    ran = job(2)
    task = app.dequeue()
    assert task is not None
    app.execute(task)
    assert ran.get() == 2


def test_a_revocation_made_between_the_pop_and_execute_is_honoured(tables: Tables) -> None:
    """Records read with the pop are not used once this process revoked or
    restored since, as with Huey's own lookup at execute."""
    app = tables.app(results=True)

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


def test_thread_workers_run_every_task_once_with_records_read_at_the_pop(
    tables: Tables,
) -> None:
    """Four thread workers on one connection: every task runs once, the revoked
    ones do not run."""
    app = tables.app(results=True)
    ran = Recorder()

    @app.versioned_task(version=1, name="flood.job")
    def job(n: int) -> None:
        ran(n)

    results = [job(n) for n in range(120)]
    for result in results[::10]:
        result.revoke()
    with running_consumer(app, workers=4):
        wait_for(lambda: len(ran.calls) == 108, timeout=30)
        wait_for(lambda: app.pending_count() == 0)
    assert sorted(n for (n,) in ran.calls) == [n for n in range(120) if n % 10]


def test_validators_and_upcasters_that_use_the_storage_run_outside_its_lock(
    tables: Tables,
) -> None:
    """As on SQLite: user code in the read path may use the storage."""
    pop_with_user_code_using_the_storage(tables.app(), tables.app())


def test_pops_on_separate_connections_take_each_task_once(tables: Tables) -> None:
    """Consumer processes each have a connection and do not see each other's
    claims: a pop that loses a delete to another reads on and takes each task once."""
    pop_on_many_storages_concurrently([tables.app() for _ in range(4)])
