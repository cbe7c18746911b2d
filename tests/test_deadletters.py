"""The dead-letter store: every reason the worker produces, the store API, and replay.

Every test runs on Memory, SQLite, Redis, PostgreSQL and files through the
``make_huey`` fixture; two apps made in one test share one queue, so one plays
the old deploy and the other the new one. The tests at the end pin what is
particular to PostgreSQL: where its table lives and when it is created.
"""

import datetime
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import PG_DSN, queued, require_postgres, running_consumer, wait_for
from huey.api import Result
from huey.registry import Message

from versioned_tasks import (
    DeadLetter,
    DeadLetterNotFound,
    ReplayFailed,
    RetiredMessage,
    VersionedHuey,
    VersionedPostgresHuey,
)

MakeHuey = Callable[..., VersionedHuey]


def only_queued(app: VersionedHuey) -> bytes:
    [raw] = queued(app)
    return raw


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def assert_entry(
    entry: DeadLetter,
    *,
    reason: str,
    task: str | None,
    version: int | None,
    raw: bytes,
    error: str,
    since: datetime.datetime,
) -> None:
    assert entry.reason == reason
    assert entry.task == task
    assert entry.version == version
    assert entry.raw == raw
    assert isinstance(entry.raw, bytes)
    assert re.search(error, entry.error), entry.error
    assert entry.created_at.tzinfo is not None
    assert since - datetime.timedelta(seconds=1) <= entry.created_at <= utcnow()


def declare_refund_v1(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id * 2

    return refund


def declare_refund_v2(app: VersionedHuey) -> Any:
    @app.versioned_task(version=2, name="billing.refund")
    def refund(order_id: int, reason: str) -> str:
        return f"{order_id}:{reason}"

    return refund


def dead_letter_one(make_huey: MakeHuey) -> tuple[DeadLetter, bytes]:
    """An old deploy enqueues billing.refund v1; a new one without it dead-letters it."""
    old = make_huey()
    declare_refund_v1(old)(7)
    raw = only_queued(old)
    new = make_huey()
    assert new.dequeue() is None
    [entry] = new.dead_letters
    return entry, raw


# -- one test per reason ------------------------------------------------------


def test_junk_bytes_are_dead_lettered_as_undecodable(make_huey: MakeHuey) -> None:
    app = make_huey()
    since = utcnow()
    app.storage.enqueue(b"\x00\x01 not an envelope")
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert_entry(
        entry,
        reason="undecodable",
        task=None,
        version=None,
        raw=b"\x00\x01 not an envelope",
        error="Not an envelope",
        since=since,
    )


def test_a_pickled_huey_message_is_dead_lettered_as_undecodable_and_never_unpickled(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()
    declare_refund_v1(app)
    raw = pickle.dumps(Message(uuid.uuid4().hex, "billing.refund", args=(7,), kwargs={}))
    since = utcnow()
    app.storage.enqueue(raw)
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert_entry(
        entry,
        reason="undecodable",
        task=None,
        version=None,
        raw=raw,
        error="Legacy pickle data",
        since=since,
    )


def test_a_message_of_a_task_the_new_app_does_not_declare_is_unknown_task(
    make_huey: MakeHuey,
) -> None:
    since = utcnow()
    entry, raw = dead_letter_one(make_huey)
    assert_entry(
        entry,
        reason="unknown_task",
        task="billing.refund",
        version=1,
        raw=raw,
        error=re.escape("Task 'billing.refund' is not declared in this app"),
        since=since,
    )


def _no_upcaster(app: VersionedHuey) -> None:
    pass


def _raising_upcaster(app: VersionedHuey) -> None:
    @app.upcaster("billing.refund", from_version=1)
    def add_reason(payload: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("ledger offline")


def _list_upcaster(app: VersionedHuey) -> None:
    @app.upcaster("billing.refund", from_version=1)
    def add_reason(payload: dict[str, Any]) -> Any:
        return [payload]


@pytest.mark.parametrize(
    ("deploy", "error"),
    [
        pytest.param(
            _no_upcaster,
            re.escape("has no upcaster chain from version 1 to 2"),
            id="missing-upcaster",
        ),
        pytest.param(
            _raising_upcaster,
            re.escape("from version 1 to 2 raised RuntimeError: ledger offline"),
            id="upcaster-raises",
        ),
        pytest.param(
            _list_upcaster,
            re.escape("from version 1 to 2 returned list, not a dict"),
            id="upcaster-returns-non-dict",
        ),
    ],
)
def test_an_old_message_that_cannot_be_upcast_is_upcast_failed(
    make_huey: MakeHuey, deploy: Callable[[VersionedHuey], None], error: str
) -> None:
    old = make_huey()
    declare_refund_v1(old)(7)
    raw = only_queued(old)
    new = make_huey()
    declare_refund_v2(new)
    deploy(new)
    since = utcnow()
    assert new.dequeue() is None
    [entry] = new.dead_letters
    assert_entry(
        entry,
        reason="upcast_failed",
        task="billing.refund",
        version=1,
        raw=raw,
        error=error,
        since=since,
    )


def test_an_upcaster_producing_the_wrong_shape_is_invalid_payload(make_huey: MakeHuey) -> None:
    old = make_huey()
    declare_refund_v1(old)(7)
    raw = only_queued(old)
    new = make_huey()
    declare_refund_v2(new)

    @new.upcaster("billing.refund", from_version=1)
    def add_reason(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order": payload["order_id"], "reason": "legacy"}

    since = utcnow()
    assert new.dequeue() is None
    [entry] = new.dead_letters
    assert_entry(
        entry,
        reason="invalid_payload",
        task="billing.refund",
        version=1,
        raw=raw,
        error=r"does not fit today's model: .*order_id",
        since=since,
    )


def test_a_newer_message_goes_back_on_the_schedule_with_its_exact_bytes(
    make_huey: MakeHuey,
) -> None:
    newer = make_huey()
    declare_refund_v2(newer)(7, "late")
    raw = only_queued(newer)
    old = make_huey(newer_version_delay=5)
    declare_refund_v1(old)

    assert old.dequeue() is None

    assert len(old.dead_letters) == 0
    assert old.pending_count() == 0
    assert [bytes(item) for item in old.storage.scheduled_items()] == [raw]
    now = utcnow().replace(tzinfo=None)
    assert old.storage.read_schedule(now + datetime.timedelta(seconds=3)) == []
    due = old.storage.read_schedule(now + datetime.timedelta(seconds=7))
    assert [bytes(item) for item in due] == [raw]


def test_a_deferred_newer_message_runs_once_the_newer_code_reads_the_schedule(
    make_huey: MakeHuey,
) -> None:
    newer = make_huey()
    result = declare_refund_v2(newer)(7, "late")
    old = make_huey(newer_version_delay=5)
    declare_refund_v1(old)
    assert old.dequeue() is None

    [task] = newer.read_schedule(datetime.datetime(2100, 1, 1))
    newer.execute(task)

    assert result.get() == "7:late"
    assert len(newer.dead_letters) == 0


def test_a_newer_message_older_than_newer_version_max_age_is_dead_lettered(
    make_huey: MakeHuey,
) -> None:
    newer = make_huey()
    declare_refund_v2(newer)(7, "late")
    raw = only_queued(newer)
    old = make_huey(newer_version_max_age=0)
    declare_refund_v1(old)
    since = utcnow()

    assert old.dequeue() is None

    assert old.scheduled_count() == 0
    [entry] = old.dead_letters
    assert_entry(
        entry,
        reason="newer_version",
        task="billing.refund",
        version=2,
        raw=raw,
        error=re.escape("version 2 is newer than this worker knows (version 1)"),
        since=since,
    )


def test_a_message_of_a_task_retired_by_a_plain_tombstone_call_is_dead_lettered_as_retired(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_refund_v1(old)(7)
    raw = only_queued(old)
    new = make_huey()
    new.tombstone("billing.refund")
    since = utcnow()

    assert new.dequeue() is None

    [entry] = new.dead_letters
    assert_entry(
        entry,
        reason="retired",
        task="billing.refund",
        version=1,
        raw=raw,
        error=re.escape("Task 'billing.refund' is retired (tombstoned) and has no handler."),
        since=since,
    )


# -- the store API --------------------------------------------------------------


def fill_with_junk(app: VersionedHuey, *payloads: bytes) -> list[DeadLetter]:
    for raw in payloads:
        app.storage.enqueue(raw)
    assert app.dequeue() is None
    return list(app.dead_letters)


def test_the_store_counts_and_iterates_newest_first(make_huey: MakeHuey) -> None:
    app = make_huey()
    entries = fill_with_junk(app, b"!one", b"!two", b"!three")
    assert len(app.dead_letters) == 3
    assert [entry.raw for entry in entries] == [b"!three", b"!two", b"!one"]
    assert len({entry.id for entry in entries}) == 3


def test_list_returns_the_newest_entries_up_to_the_limit(make_huey: MakeHuey) -> None:
    app = make_huey()
    fill_with_junk(app, b"!one", b"!two", b"!three")
    assert [entry.raw for entry in app.dead_letters.list(limit=2)] == [b"!three", b"!two"]
    assert [entry.raw for entry in app.dead_letters.list()] == [b"!three", b"!two", b"!one"]


def test_list_with_limit_zero_returns_no_entries(make_huey: MakeHuey) -> None:
    app = make_huey()
    fill_with_junk(app, b"!one", b"!two", b"!three")
    assert app.dead_letters.list(limit=0) == []


def test_get_returns_the_entry_with_that_id(make_huey: MakeHuey) -> None:
    app = make_huey()
    entries = fill_with_junk(app, b"!one", b"!two")
    for entry in entries:
        assert app.dead_letters.get(entry.id) == entry


def test_get_of_an_unknown_id_raises_dead_letter_not_found(make_huey: MakeHuey) -> None:
    app = make_huey()
    with pytest.raises(DeadLetterNotFound, match="No dead-letter entry with id 'nope'") as info:
        app.dead_letters.get("nope")
    assert info.value.id == "nope"
    assert isinstance(info.value, KeyError)


def test_delete_removes_one_entry_and_reports_whether_it_existed(make_huey: MakeHuey) -> None:
    app = make_huey()
    first, second = fill_with_junk(app, b"!one", b"!two")
    assert app.dead_letters.delete(first.id) is True
    assert app.dead_letters.delete(first.id) is False
    assert list(app.dead_letters) == [second]
    with pytest.raises(DeadLetterNotFound):
        app.dead_letters.get(first.id)


def test_purge_removes_every_entry_and_returns_the_count(make_huey: MakeHuey) -> None:
    app = make_huey()
    fill_with_junk(app, b"!one", b"!two", b"!three")
    assert app.dead_letters.purge() == 3
    assert len(app.dead_letters) == 0
    assert list(app.dead_letters) == []
    assert app.dead_letters.purge() == 0


def test_an_entry_repr_names_id_reason_task_and_version(make_huey: MakeHuey) -> None:
    entry, _ = dead_letter_one(make_huey)
    assert repr(entry) == f"<DeadLetter id={entry.id} reason=unknown_task task=billing.refund v1>"


def test_an_entry_repr_without_task_or_version_says_so(make_huey: MakeHuey) -> None:
    app = make_huey()
    [entry] = fill_with_junk(app, b"!junk")
    assert repr(entry) == f"<DeadLetter id={entry.id} reason=undecodable task=?>"


def test_the_store_survives_a_restart_on_the_same_storage(make_huey: MakeHuey) -> None:
    entry, _ = dead_letter_one(make_huey)
    restarted = make_huey()
    assert len(restarted.dead_letters) == 1
    assert restarted.dead_letters.get(entry.id) == entry


def test_the_store_is_shared_by_every_instance_on_the_same_queue(make_huey: MakeHuey) -> None:
    first = make_huey()
    second = make_huey()
    [entry] = fill_with_junk(first, b"!junk")
    assert list(second.dead_letters) == [entry]
    assert second.dead_letters.delete(entry.id) is True
    assert len(first.dead_letters) == 0


def test_flushing_huey_results_keeps_the_dead_letters(make_huey: MakeHuey) -> None:
    app = make_huey()
    refund = declare_refund_v1(app)
    result = refund(7)
    app.execute(app.dequeue())
    [entry] = fill_with_junk(app, b"!junk")

    app.storage.flush_results()

    assert result.get() is None
    assert list(app.dead_letters) == [entry]


def test_flushing_the_whole_huey_storage_keeps_the_dead_letters(make_huey: MakeHuey) -> None:
    app = make_huey()
    [entry] = fill_with_junk(app, b"!junk")
    app.storage.enqueue(b"!still queued")

    app.flush()

    assert app.pending_count() == 0
    assert list(app.dead_letters) == [entry]


# -- replay ---------------------------------------------------------------------


def _declare(app: VersionedHuey) -> None:
    declare_refund_v1(app)


def _rename(app: VersionedHuey) -> None:
    @app.versioned_task(version=1, name="billing.refund_order")
    def refund_order(order_id: int) -> int:
        return order_id * 2

    app.rename("billing.refund", "billing.refund_order")


def _upcast(app: VersionedHuey) -> None:
    @app.versioned_task(version=2, name="billing.refund")
    def refund(order_id: int, factor: int) -> int:
        return order_id * factor

    @app.upcaster("billing.refund", from_version=1)
    def add_factor(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "factor": 2}


@pytest.mark.parametrize(
    "deploy_fix",
    [
        pytest.param(_declare, id="declaration"),
        pytest.param(_rename, id="rename"),
        pytest.param(_upcast, id="upcaster"),
    ],
)
def test_replay_after_a_fix_enqueues_the_task_returns_its_result_and_removes_the_entry(
    make_huey: MakeHuey, deploy_fix: Callable[[VersionedHuey], None]
) -> None:
    entry, _ = dead_letter_one(make_huey)
    fixed = make_huey()
    deploy_fix(fixed)

    result = fixed.dead_letters.replay(entry.id)

    assert isinstance(result, Result)
    assert len(fixed.dead_letters) == 0
    with pytest.raises(DeadLetterNotFound):
        fixed.dead_letters.get(entry.id)
    task = fixed.dequeue()
    assert task is not None
    fixed.execute(task)
    assert result.get() == 14
    assert fixed.dequeue() is None


def test_replay_of_an_upcast_failure_after_deploying_the_upcaster_runs_the_upcast_payload(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_refund_v1(old)(7)
    broken = make_huey()
    declare_refund_v2(broken)
    assert broken.dequeue() is None
    [entry] = broken.dead_letters
    assert entry.reason == "upcast_failed"

    fixed = make_huey()
    declare_refund_v2(fixed)

    @fixed.upcaster("billing.refund", from_version=1)
    def add_reason(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "reason": "legacy"}

    result = fixed.dead_letters.replay(entry.id)
    fixed.execute(fixed.dequeue())
    assert result.get() == "7:legacy"
    assert len(fixed.dead_letters) == 0


def test_replay_of_a_retired_message_after_deploying_a_handler_runs_the_handler(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_refund_v1(old)(7)
    retired_app = make_huey()
    retired_app.tombstone("billing.refund")
    assert retired_app.dequeue() is None
    [entry] = retired_app.dead_letters

    fixed = make_huey()
    seen: list[RetiredMessage] = []
    fixed.tombstone("billing.refund", seen.append)

    fixed.dead_letters.replay(entry.id)

    assert len(fixed.dead_letters) == 0
    assert fixed.dequeue() is None
    assert [(m.task, m.version, m.payload) for m in seen] == [
        ("billing.refund", 1, {"order_id": 7})
    ]


def test_replay_that_still_fails_raises_replay_failed_and_keeps_the_entry_with_the_new_reason(
    make_huey: MakeHuey,
) -> None:
    entry, raw = dead_letter_one(make_huey)
    still_broken = make_huey()
    declare_refund_v2(still_broken)

    with pytest.raises(ReplayFailed, match="failed again with reason 'upcast_failed'") as info:
        still_broken.dead_letters.replay(entry.id)

    assert info.value.reason == "upcast_failed"
    assert info.value.id == entry.id
    assert info.value.task == "billing.refund"
    assert info.value.version == 1
    kept = still_broken.dead_letters.get(entry.id)
    assert kept.reason == "upcast_failed"
    assert "no upcaster chain from version 1 to 2" in kept.error
    assert kept.raw == raw
    assert len(still_broken.dead_letters) == 1
    assert still_broken.pending_count() == 0


def test_replay_with_nothing_fixed_raises_replay_failed_with_the_same_reason(
    make_huey: MakeHuey,
) -> None:
    entry, _ = dead_letter_one(make_huey)
    unchanged = make_huey()
    with pytest.raises(ReplayFailed, match="failed again with reason 'unknown_task'") as info:
        unchanged.dead_letters.replay(entry.id)
    assert info.value.reason == "unknown_task"
    assert unchanged.dead_letters.get(entry.id).reason == "unknown_task"
    assert unchanged.pending_count() == 0


def test_replay_of_undecodable_bytes_raises_replay_failed(make_huey: MakeHuey) -> None:
    app = make_huey()
    [entry] = fill_with_junk(app, b"!junk")
    with pytest.raises(ReplayFailed, match="failed again with reason 'undecodable'") as info:
        app.dead_letters.replay(entry.id)
    assert info.value.reason == "undecodable"
    assert app.dead_letters.get(entry.id) == entry


def test_replay_of_an_unknown_id_raises_dead_letter_not_found(make_huey: MakeHuey) -> None:
    app = make_huey()
    with pytest.raises(DeadLetterNotFound, match="No dead-letter entry with id 'nope'"):
        app.dead_letters.replay("nope")


def test_replay_from_a_restarted_instance_uses_the_shared_store(make_huey: MakeHuey) -> None:
    entry, _ = dead_letter_one(make_huey)
    fixed = make_huey()
    declare_refund_v1(fixed)
    result = fixed.dead_letters.replay(entry.id)
    fixed.execute(fixed.dequeue())
    assert result.get() == 14
    assert len(make_huey().dead_letters) == 0


# -- PostgreSQL: the table ----------------------------------------------------------


PostgresApp = Callable[..., VersionedPostgresHuey]


@pytest.fixture
def postgres_app(queue_name: str) -> Iterator[PostgresApp]:
    """VersionedPostgresHuey apps on tables of their own (a fresh ``table_prefix``),
    dropped afterwards."""
    require_postgres()
    import psycopg

    prefixes: set[str] = set()
    apps: list[VersionedPostgresHuey] = []

    def factory(prefix: str = queue_name, **options: Any) -> VersionedPostgresHuey:
        prefixes.add(prefix)
        app = VersionedPostgresHuey(
            queue_name, dsn=PG_DSN, blocking=False, table_prefix=prefix, **options
        )
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.storage.close()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for prefix in prefixes:
            for table in ("task", "schedule", "kv", "counter", "vt_dead_letters"):
                conn.execute(f"drop table if exists {prefix}_{table}")


def pg_table_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute("select to_regclass(%s)", (name,)).fetchone()
    return row is not None and row[0] is not None


def test_postgres_dead_letters_go_to_a_table_beside_hueys_created_on_first_use(
    postgres_app: PostgresApp, queue_name: str
) -> None:
    """The table is ``<table_prefix>_vt_dead_letters``; neither constructing the app
    nor running good messages creates it, the first dead letter does."""
    app = postgres_app()
    table = f"{queue_name}_vt_dead_letters"
    refund = declare_refund_v1(app)
    refund(7)
    app.execute(app.dequeue())
    assert not pg_table_exists(table)

    app.storage.enqueue(b"!junk")
    assert app.dequeue() is None

    assert pg_table_exists(table)
    [entry] = app.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", b"!junk")


def test_postgres_apps_with_different_table_prefixes_have_separate_stores(
    postgres_app: PostgresApp, queue_name: str
) -> None:
    """Like Huey's own tables, the store follows ``table_prefix``: same queue name,
    other prefix, other entries."""
    first = postgres_app()
    second = postgres_app(prefix=f"{queue_name}_other")
    [entry] = fill_with_junk(first, b"!first")

    assert list(first.dead_letters) == [entry]
    assert len(second.dead_letters) == 0
    assert len(postgres_app().dead_letters) == 1  # same prefix, same store


def test_postgres_keeps_the_exact_bytes_including_nul_and_non_utf8(
    postgres_app: PostgresApp,
) -> None:
    """Raw bytes are stored as bytea: every byte value comes back unchanged."""
    app = postgres_app()
    raw = bytes(range(256)) * 3
    app.storage.enqueue(raw)
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert entry.raw == raw


def test_postgres_dequeue_puts_the_bytes_back_when_the_dead_letter_write_fails(
    postgres_app: PostgresApp, queue_name: str
) -> None:
    """A dead-letter write that fails (here: a foreign table under the store's name)
    raises from dequeue(), and the message goes back on the queue."""
    import psycopg

    app = postgres_app()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"create table {queue_name}_vt_dead_letters (unrelated integer)")
    app.storage.enqueue(b"!junk")

    with pytest.raises(psycopg.errors.UndefinedColumn):
        app.dequeue()

    assert queued(app) == [b"!junk"]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"drop table {queue_name}_vt_dead_letters")
    restarted = postgres_app()
    assert restarted.dequeue() is None
    assert [entry.raw for entry in restarted.dead_letters] == [b"!junk"]


def test_an_upcast_failed_dead_letter_names_the_upcaster_and_carries_its_traceback(
    make_huey: MakeHuey,
) -> None:
    """Through a real consumer: the error text says which function failed, and where."""
    old = make_huey()

    @old.versioned_task(version=1, name="shop.ship")
    def ship_v1(order: int) -> None: ...

    new = make_huey()

    @new.versioned_task(version=2, name="shop.ship")
    def ship(order: int, carrier: str) -> None: ...

    @new.upcaster("shop.ship", from_version=1)
    def pick_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        carriers = {"eu": "dhl"}
        return {**payload, "carrier": carriers[payload["region"]]}

    ship_v1(5)
    with running_consumer(new):
        wait_for(lambda: len(new.dead_letters) == 1)
    (entry,) = new.dead_letters
    assert entry.reason == "upcast_failed"
    first, *trace = entry.error.splitlines()
    assert first == (
        f"Upcaster {__name__}.test_an_upcast_failed_dead_letter_names_the_upcaster_and_"
        f"carries_its_traceback.<locals>.pick_carrier of 'shop.ship' from version 1 to 2 "
        f"raised KeyError: 'region'; fix it and replay."
    )
    assert trace[0] == "Traceback (most recent call last):"
    assert any('carriers[payload["region"]]' in line for line in trace)
    assert trace[-1] == "KeyError: 'region'"
