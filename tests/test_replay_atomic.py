"""Replay removes the entry and enqueues its message as one step, and a dead-letter
write on Redis is one script: nothing lost, nothing queued twice, under faults.

Faults are injected into real storages and connections: a redis-py connection
that loses the reply to a script after Redis ran it (with and without
redis-py's own retry), SQL storages whose commit goes through and then raises,
a SQLite trigger and a PostgreSQL trigger that make the enqueue fail inside the
replay's transaction, a MemoryStorage whose enqueue raises, a FileStorage whose
queue directory cannot be created.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from helpers import PG_DSN, REDIS_URL, MakeHuey, queued, require_postgres, require_redis
from huey.api import Result
from huey.signals import SIGNAL_ENQUEUED
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisStorage,
    RedisStorage,
    SqliteStorage,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from versioned_tasks import DeadLetterNotFound, VersionedHuey

# -- helpers ------------------------------------------------------------------------


def declare_refund(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id * 2

    return refund


def dead_letter_a_refund(old: VersionedHuey, new: VersionedHuey, order_id: int = 7) -> str:
    """``old`` enqueues billing.refund; ``new`` does not declare it and dead-letters it."""
    declare_refund(old)(order_id)
    assert new.dequeue() is None
    [entry] = new.dead_letters
    assert entry.reason == "unknown_task"
    return entry.id


def run_queue(app: VersionedHuey) -> list[Any]:
    """Run every queued task as a worker would; their return values."""
    results = []
    while (task := app.dequeue()) is not None:
        results.append(app.execute(task))
    return results


# -- every backend: the replay step is atomic -----------------------------------------


def test_a_replay_that_loses_the_race_to_another_replay_enqueues_nothing(
    make_huey: MakeHuey,
) -> None:
    """Two replays of one entry (here the second runs inside the first one's
    upcaster, after the first read the entry): one enqueues, the other raises
    DeadLetterNotFound, and the message is queued once."""
    old, new = make_huey(), make_huey()
    declare_refund(old)(7)
    assert new.dequeue() is None
    [entry] = new.dead_letters
    other = make_huey()
    declare_refund(other)
    racer = make_huey()

    @racer.versioned_task(version=2, name="billing.refund")
    def refund(order_id: int, factor: int) -> int:
        return order_id * factor

    raced: list[Any] = []

    @racer.upcaster("billing.refund", from_version=1)
    def add_factor(payload: dict[str, Any]) -> dict[str, Any]:
        if not raced:
            raced.append(other.dead_letters.replay(entry.id))
        return {**payload, "factor": 3}

    with pytest.raises(DeadLetterNotFound):
        racer.dead_letters.replay(entry.id)

    assert isinstance(raced[0], Result)
    assert len(queued(other)) == 1
    assert len(other.dead_letters) == 0
    assert run_queue(other) == [14]


def test_a_replay_fires_signal_enqueued_once_and_a_lost_race_fires_none(
    make_huey: MakeHuey,
) -> None:
    old, new = make_huey(), make_huey()
    entry_id = dead_letter_a_refund(old, new)
    fixed = make_huey()
    declare_refund(fixed)
    fired: list[str] = []

    @fixed.signal(SIGNAL_ENQUEUED)
    def enqueued(signal: str, task: Any) -> None:
        fired.append(task.id)

    result = fixed.dead_letters.replay(entry_id)
    with pytest.raises(DeadLetterNotFound):
        fixed.dead_letters.replay(entry_id)

    assert fired == [result.id]
    assert len(queued(fixed)) == 1


def test_a_replay_in_immediate_mode_runs_the_task_and_removes_the_entry(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_refund(old)(7)
    [raw] = queued(old)
    app = make_huey(immediate=True)
    declare_refund(app)
    entry = app.dead_letters.add(reason="unknown_task", raw=raw, error="test", task="x")

    result = app.dead_letters.replay(entry.id)

    assert result.get() == 14
    assert len(app.dead_letters) == 0
    assert app.pending_count() == 0


# -- Redis: a connection that loses replies ---------------------------------------


class LossyConnection(redis.Connection):
    """A real connection that can lose the reply to EVALSHA after Redis ran it,
    and counts the round trips it makes."""

    lose = 0  # EVALSHA replies still to lose
    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).round_trips += 1
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._vt_last = str(args[0]).upper()
        super().send_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().read_response(*args, **kwargs)
        if getattr(self, "_vt_last", None) == "EVALSHA" and type(self).lose:
            type(self).lose -= 1
            raise redis.ConnectionError("the reply was lost after Redis ran the script")
        return response


LossyApp = Callable[..., tuple[VersionedHuey, type[LossyConnection]]]


@pytest.fixture
def lossy_redis(queue_name: str) -> Iterator[LossyApp]:
    """Apps on one Redis queue whose connections are LossyConnections, with or
    without redis-py's own retry; returns the app and its connection class."""
    require_redis()
    from helpers import flush_redis_name

    def factory(
        *, retry: bool, storage_class: type[RedisStorage] = RedisStorage
    ) -> tuple[VersionedHuey, type[LossyConnection]]:
        connection_class = type("Lossy", (LossyConnection,), {})
        options: dict[str, Any] = {"connection_class": connection_class}
        if retry:
            options["retry"] = Retry(NoBackoff(), 2)
        pool = redis.ConnectionPool.from_url(REDIS_URL, **options)
        app = VersionedHuey(
            queue_name, storage_class=storage_class, connection_pool=pool, blocking=False
        )
        return app, connection_class

    yield factory
    flush_redis_name(queue_name)


@pytest.mark.parametrize("storage_class", [RedisStorage, PriorityRedisStorage])
def test_a_replay_whose_reply_redis_py_resends_enqueues_once_and_returns_the_result(
    lossy_redis: LossyApp, storage_class: type[RedisStorage]
) -> None:
    """redis-py re-sends a script whose reply was lost: the second run sees that
    this very replay already went through, so the caller gets its Result and the
    message is queued once."""
    old, _ = lossy_redis(retry=False, storage_class=storage_class)
    new, _ = lossy_redis(retry=False, storage_class=storage_class)
    entry_id = dead_letter_a_refund(old, new)
    fixed, lossy = lossy_redis(retry=True, storage_class=storage_class)
    declare_refund(fixed)
    lossy.lose = 1

    result = fixed.dead_letters.replay(entry_id)

    assert lossy.lose == 0  # the reply was lost, and the script re-sent
    assert isinstance(result, Result)
    assert len(queued(fixed)) == 1
    assert len(fixed.dead_letters) == 0
    assert run_queue(fixed) == [14]
    assert result.get() == 14


@pytest.mark.parametrize("storage_class", [RedisStorage, PriorityRedisStorage])
def test_a_replay_whose_reply_is_lost_raises_and_replaying_again_enqueues_nothing(
    lossy_redis: LossyApp, storage_class: type[RedisStorage]
) -> None:
    """Without redis-py's retry the lost reply raises ConnectionError; the caller
    replays again, which finds no entry and enqueues nothing."""
    old, _ = lossy_redis(retry=False, storage_class=storage_class)
    new, _ = lossy_redis(retry=False, storage_class=storage_class)
    entry_id = dead_letter_a_refund(old, new)
    fixed, lossy = lossy_redis(retry=False, storage_class=storage_class)
    declare_refund(fixed)
    lossy.lose = 1

    with pytest.raises(redis.ConnectionError):
        fixed.dead_letters.replay(entry_id)
    for _ in range(3):
        with pytest.raises(DeadLetterNotFound):
            fixed.dead_letters.replay(entry_id)

    assert len(queued(fixed)) == 1
    assert len(fixed.dead_letters) == 0
    assert run_queue(fixed) == [14]


def test_a_dead_letter_write_resent_after_a_lost_reply_stores_one_entry(
    lossy_redis: LossyApp,
) -> None:
    """redis-py re-sends the dead-letter script whose reply was lost: the second
    run finds the entry written and stores nothing more."""
    app, lossy = lossy_redis(retry=True)
    lossy.lose = 1

    app.dead_letters.add(reason="undecodable", raw=b"!junk", error="test")

    assert lossy.lose == 0
    assert [entry.raw for entry in app.dead_letters] == [b"!junk"]
    assert len(app.dead_letters) == 1


def test_a_dead_letter_write_on_redis_is_one_round_trip(lossy_redis: LossyApp) -> None:
    app, lossy = lossy_redis(retry=False)
    store = app.dead_letters
    store.add(reason="undecodable", raw=b"warm", error="loads the script")
    before = lossy.round_trips

    store.add(reason="undecodable", raw=b"!junk", error="test")

    assert lossy.round_trips - before == 1
    assert len(store) == 2


def test_a_dead_letter_write_with_inflight_removes_one_copy_from_that_list(
    lossy_redis: LossyApp, queue_name: str
) -> None:
    """``inflight`` (internal): the same script removes one copy of the raw bytes
    from the list that held the message while it was handled."""
    app, _ = lossy_redis(retry=False)
    inflight = f"huey.test.inflight.{queue_name}"
    conn = app.storage.conn
    conn.rpush(inflight, b"other", b"!junk", b"!junk")

    entry = app.dead_letters.add(reason="undecodable", raw=b"!junk", error="x", inflight=inflight)

    assert conn.lrange(inflight, 0, -1) == [b"other", b"!junk"]
    assert app.dead_letters.get(entry.id).raw == b"!junk"


def test_a_replay_on_a_priority_redis_storage_queues_by_priority_as_huey_does(
    lossy_redis: LossyApp,
) -> None:
    """The replayed message takes its place in the sorted set as Huey's own
    enqueue would put it: by priority, then by time."""
    old, _ = lossy_redis(retry=False, storage_class=PriorityRedisStorage)
    old.enqueue(declare_refund(old).s(1, priority=5))
    new, _ = lossy_redis(retry=False, storage_class=PriorityRedisStorage)
    assert new.dequeue() is None
    [entry] = new.dead_letters
    fixed, _ = lossy_redis(retry=False, storage_class=PriorityRedisStorage)
    refund = declare_refund(fixed)
    fixed.enqueue(refund.s(2, priority=1))
    fixed.enqueue(refund.s(3, priority=9))

    fixed.dead_letters.replay(entry.id)

    assert run_queue(fixed) == [6, 2, 4]


# -- SQL: a commit that goes through and then raises ---------------------------------


class _CommitThenFail:
    """Mixin for a real SQL storage: the next ``fail_after_commit`` committed
    transactions commit, then raise as if the reply to COMMIT was lost."""

    fail_after_commit = 0
    error: type[Exception] = Exception

    @contextlib.contextmanager
    def db(self, commit: bool = False, close: bool = False) -> Iterator[Any]:
        with super().db(commit=commit, close=close) as cursor:  # type: ignore[misc]
            yield cursor
        if commit and self.fail_after_commit:
            self.fail_after_commit -= 1
            raise self.error("the connection dropped after COMMIT")


class CommitThenFailSqlite(_CommitThenFail, SqliteStorage):
    error = sqlite3.OperationalError


class CommitThenFailPostgres(_CommitThenFail, PostgresStorage):
    error = psycopg.OperationalError


SqlApp = Callable[[], VersionedHuey]


@pytest.fixture(params=["sqlite", "postgres"])
def sql_app(request: pytest.FixtureRequest, queue_name: str, tmp_path: Path) -> Iterator[SqlApp]:
    """Apps on one queue of a CommitThenFail storage (SQLite file, or PostgreSQL
    tables of their own, dropped afterwards)."""
    made: list[VersionedHuey] = []
    if request.param == "postgres":
        require_postgres()

    def factory() -> VersionedHuey:
        if request.param == "sqlite":
            app = VersionedHuey(
                queue_name, storage_class=CommitThenFailSqlite, filename=str(tmp_path / "q.db")
            )
        else:
            app = VersionedHuey(
                queue_name,
                storage_class=CommitThenFailPostgres,
                dsn=PG_DSN,
                blocking=False,
                table_prefix=queue_name,
            )
        made.append(app)
        return app

    yield factory
    if request.param == "postgres":
        for app in made:
            app.storage.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for table in ("task", "schedule", "kv", "counter", "vt_dead_letters"):
                conn.execute(f"drop table if exists {queue_name}_{table}")


def test_a_sql_replay_whose_commit_reply_is_lost_enqueues_once(sql_app: SqlApp) -> None:
    """The replay's transaction commits and then raises; replaying again finds no
    entry and enqueues nothing: one message queued."""
    entry_id = dead_letter_a_refund(sql_app(), sql_app())
    fixed = sql_app()
    declare_refund(fixed)
    assert len(fixed.dead_letters) == 1  # the store is open: no DDL left to commit
    fixed.storage.fail_after_commit = 1

    with pytest.raises(fixed.storage.error):
        fixed.dead_letters.replay(entry_id)
    for _ in range(3):
        with pytest.raises(DeadLetterNotFound):
            fixed.dead_letters.replay(entry_id)

    assert fixed.storage.fail_after_commit == 0
    assert len(queued(fixed)) == 1
    assert len(fixed.dead_letters) == 0
    assert run_queue(fixed) == [14]


def _refuse_enqueues(app: VersionedHuey) -> Callable[[], None]:
    """A trigger that makes every insert into the app's task table fail; returns
    how to drop it."""
    storage = app.storage
    if isinstance(storage, SqliteStorage):
        storage.sql(
            "create trigger vt_refuse before insert on task "
            "begin select raise(abort, 'the queue refuses messages'); end",
            commit=True,
        )
        return lambda: storage.sql("drop trigger vt_refuse", commit=True)
    table = storage.table_task
    storage.sql(
        f"create function {table}_refuse() returns trigger language plpgsql as "
        f"$$ begin raise exception 'the queue refuses messages'; end $$"
    )
    storage.sql(
        f"create trigger {table}_refuse before insert on {table} "
        f"for each row execute function {table}_refuse()"
    )

    def drop() -> None:
        storage.sql(f"drop trigger {table}_refuse on {table}")
        storage.sql(f"drop function {table}_refuse()")

    return drop


def test_a_sql_replay_whose_enqueue_fails_keeps_the_entry_and_queues_nothing(
    sql_app: SqlApp,
) -> None:
    """The entry's removal is rolled back with the failed enqueue; once the
    queue accepts messages again, the replay goes through once."""
    entry_id = dead_letter_a_refund(sql_app(), sql_app())
    fixed = sql_app()
    declare_refund(fixed)
    allow = _refuse_enqueues(fixed)

    with pytest.raises(Exception, match="the queue refuses messages"):
        fixed.dead_letters.replay(entry_id)

    assert queued(fixed) == []
    assert [entry.id for entry in fixed.dead_letters] == [entry_id]
    allow()
    fixed.dead_letters.replay(entry_id)
    assert run_queue(fixed) == [14]
    assert len(fixed.dead_letters) == 0


# -- memory and files: under the storage's lock ---------------------------------------


class RefusingMemoryStorage(MemoryStorage):
    """A MemoryStorage whose next ``refuse`` enqueues raise."""

    refuse = 0

    def enqueue(self, data: bytes, priority: Any = None) -> None:
        if self.refuse:
            self.refuse -= 1
            raise MemoryError("the queue refuses messages")
        super().enqueue(data, priority)


def test_a_memory_replay_whose_enqueue_fails_keeps_the_entry_and_queues_nothing() -> None:
    name = f"vt_test_{uuid.uuid4().hex[:12]}"
    old = VersionedHuey(name, storage_class=RefusingMemoryStorage)
    new = VersionedHuey(name, storage_class=RefusingMemoryStorage)
    new.storage = old.storage
    entry_id = dead_letter_a_refund(old, new)
    declare_refund(new)
    new.storage.refuse = 1

    with pytest.raises(MemoryError):
        new.dead_letters.replay(entry_id)

    assert queued(new) == []
    assert [entry.id for entry in new.dead_letters] == [entry_id]
    new.dead_letters.replay(entry_id)
    assert run_queue(new) == [14]


def test_a_file_replay_whose_enqueue_fails_keeps_the_entry_and_queues_nothing(
    tmp_path: Path,
) -> None:
    """The queue directory cannot be created (a file stands in its place): the
    entry stays; once it can, the replay goes through once."""
    path = str(tmp_path / "queue")
    old = VersionedHuey("files", storage_class=FileStorage, path=path)
    new = VersionedHuey("files", storage_class=FileStorage, path=path)
    entry_id = dead_letter_a_refund(old, new)
    declare_refund(new)
    os.rmdir(new.storage.queue_path)
    Path(new.storage.queue_path).write_bytes(b"in the way")

    with pytest.raises(FileExistsError):
        new.dead_letters.replay(entry_id)

    assert [entry.id for entry in new.dead_letters] == [entry_id]
    os.remove(new.storage.queue_path)
    new.dead_letters.replay(entry_id)
    assert run_queue(new) == [14]
    assert len(new.dead_letters) == 0
