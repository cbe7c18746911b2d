"""Every Huey feature through a real threaded consumer, on Memory, SQLite, Redis and
PostgreSQL, for versioned tasks and plain ``@huey.task()`` tasks alike.

Each test enqueues from an app, runs Huey's own ``Consumer`` (thread workers and
its scheduler) on that queue, and checks what the workers did through results,
signals and records the tasks keep. Waits poll with a timeout; nothing asserts
on timing.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from helpers import (
    PG_DSN,
    REDIS_URL,
    MakeHuey,
    require_postgres,
    require_redis,
    running_consumer,
    wait_for,
)
from huey import crontab
from huey.api import Task, chord, group
from huey.exceptions import ResultTimeout, TaskException
from huey.signals import (
    SIGNAL_COMPLETE,
    SIGNAL_ENQUEUED,
    SIGNAL_ERROR,
    SIGNAL_EXECUTING,
    SIGNAL_EXPIRED,
    SIGNAL_LOCKED,
    SIGNAL_RETRYING,
    SIGNAL_REVOKED,
    SIGNAL_SCHEDULED,
    SIGNAL_TIMEOUT,
)

from versioned_tasks import (
    InvalidArguments,
    RemoteException,
    SchemaError,
    VersionedHuey,
    VersionedPostgresHuey,
    VersionedPriorityRedisHuey,
)

FEATURE_BACKENDS = ("memory", "sqlite", "redis", "postgres")
KINDS = ("versioned", "plain")

WAIT = 15.0  # seconds: generous, only reached when something is broken


class PaymentDeclined(Exception):
    """An exception of the app's own, raised by a task and handed to ``on_error``."""


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(params=FEATURE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The storages under test here (the shared fixture also covers files)."""
    if request.param == "redis":
        require_redis()
    elif request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """``versioned``: ``@huey.versioned_task(version=1)``; ``plain``: ``@huey.task()``."""
    return str(request.param)


def declare(app: VersionedHuey, kind: str, name: str, **options: Any) -> Any:
    """A decorator declaring a task of this kind under ``name`` with Huey's options."""
    if kind == "versioned":
        return app.versioned_task(version=1, name=name, **options)
    return app.task(name=name.replace(".", "_"), **options)


class Recorder:
    """A thread-safe list of what the workers did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []

    def __call__(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items)


def record_signals(app: VersionedHuey, *names: str) -> Recorder:
    """Record ``(signal, task id)`` for each of these signals that ``app`` sends."""
    seen = Recorder()

    @app.signal(*names)
    def on_signal(name: str, task: Task, *args: Any) -> None:
        seen((name, task.id))

    return seen


def signals_of(seen: Recorder, task_id: str) -> list[str]:
    return [name for name, id in seen.items if id == task_id]


def get(result: Any) -> Any:
    """Block for a result as a caller would, with a timeout."""
    return result.get(blocking=True, timeout=WAIT)


def declare_add(app: VersionedHuey, kind: str, **options: Any) -> Any:
    @declare(app, kind, "feat.add", **options)
    def add(a: int, b: int) -> int:
        return a + b

    return add


def priority_app(make_huey: MakeHuey, backend: str, queue_name: str) -> VersionedHuey:
    """An app whose storage orders by priority: Huey's plain RedisStorage has none,
    so Redis uses PriorityRedisStorage."""
    if backend == "redis":
        return VersionedPriorityRedisHuey(queue_name, url=REDIS_URL, blocking=False)
    return make_huey()


# -- results ------------------------------------------------------------------------


def test_a_result_is_none_until_the_worker_stores_it_then_get_returns_it(
    make_huey: MakeHuey, kind: str
) -> None:
    """``get()`` does not block and returns None until the result is there; then it
    returns the value, of its own type, once (``preserve=True`` keeps it)."""
    app = make_huey()

    @declare(app, kind, "feat.stats")
    def stats(values: list[int]) -> tuple[int, datetime.date, dict[str, float]]:
        return sum(values), datetime.date(2024, 2, 29), {"mean": sum(values) / len(values)}

    result = stats([1, 2, 3])
    assert result.get() is None

    with running_consumer(app):
        wait_for(lambda: app.get(result.id, peek=True) is not None)

    expected = (6, datetime.date(2024, 2, 29), {"mean": 2.0})
    assert result.get(preserve=True) == expected
    assert type(result.get(preserve=True)) is tuple
    result.reset()  # forget the value read, and read the store again
    assert result() == expected
    result.reset()
    assert result.get() is None  # read once without preserve, then gone


def test_get_blocking_waits_for_the_worker_and_times_out_without_one(
    make_huey: MakeHuey, kind: str
) -> None:
    """``get(blocking=True, timeout=...)`` raises ResultTimeout while no worker runs,
    and returns the value once one does."""
    app = make_huey()
    add = declare_add(app, kind)
    result = add(2, 3)

    with pytest.raises(ResultTimeout):
        result.get(blocking=True, timeout=0.1)

    with running_consumer(app):
        assert result.get(blocking=True, timeout=WAIT) == 5


def test_store_none_keeps_a_none_result_that_is_otherwise_not_stored(
    make_huey: MakeHuey, kind: str
) -> None:
    """With ``store_none=True`` a task returning None leaves a result; without, none."""
    app = make_huey(store_none=True)
    done = Recorder()

    @declare(app, kind, "feat.touch")
    def touch(n: int) -> None:
        done(n)

    kept = touch(1)
    with running_consumer(app):
        wait_for(lambda: len(done) == 1)
        assert kept.get(blocking=True, timeout=WAIT) is None  # stored, so no timeout

    plain = make_huey()  # same queue and storage, store_none off
    declare(plain, kind, "feat.touch")(touch.func)
    dropped = touch(2)  # enqueued by the store_none app; run by the other one
    with running_consumer(plain):
        wait_for(lambda: len(done) == 2)
    assert plain.result_count() == 0
    with pytest.raises(ResultTimeout):
        dropped.get(blocking=True, timeout=0.1)


def test_map_and_group_return_result_groups(make_huey: MakeHuey, kind: str) -> None:
    """``.map()`` and ``huey.enqueue(group([...]))`` give ResultGroups in call order."""
    app = make_huey()
    add = declare_add(app, kind)

    mapped = add.map([(1, 2), (3, 4), (5, 6)])
    grouped = app.enqueue(group([add.s(10, 1), add.s(20, 2)]))

    with running_consumer(app):
        assert mapped.get(blocking=True, timeout=WAIT) == [3, 7, 11]
        assert grouped.get(blocking=True, timeout=WAIT) == [11, 22]
    assert len(mapped) == 3
    assert mapped[1] == 7  # indexing blocks for that one result


def test_as_completed_yields_every_result_of_a_group(make_huey: MakeHuey, kind: str) -> None:
    """``ResultGroup.as_completed()`` yields each value as its task finishes."""
    app = make_huey()
    add = declare_add(app, kind)
    results = add.map([(n, n) for n in range(5)])

    with running_consumer(app):
        values = list(results.as_completed(max_delay=0.05))

    assert sorted(values) == [0, 2, 4, 6, 8]


# -- pipelines ----------------------------------------------------------------------


def test_a_pipeline_passes_each_result_on_to_the_next_step(make_huey: MakeHuey, kind: str) -> None:
    """``.then()`` appends each step's result to the next step's arguments."""
    app = make_huey()
    add = declare_add(app, kind)

    @declare(app, kind, "feat.describe")
    def describe(label: str, total: int) -> str:
        return f"{label}={total}"

    pipeline = add.s(1, 2).then(add, 10).then(add, 100).then(describe, "total")
    results = app.enqueue(pipeline)

    with running_consumer(app):
        assert results.get(blocking=True, timeout=WAIT) == [3, 13, 113, "total=113"]


def test_a_pipeline_mixes_versioned_and_plain_steps(make_huey: MakeHuey) -> None:
    """A versioned step hands its result to a plain one and back."""
    app = make_huey()
    add_v = declare_add(app, "versioned")

    @app.task()
    def double(n: int) -> int:
        return n * 2

    @app.versioned_task(version=1, name="feat.label")
    def label(prefix: str, n: int) -> str:
        return f"{prefix}{n}"

    results = app.enqueue(add_v.s(2, 3).then(double).then(label, "#"))

    with running_consumer(app):
        assert results.get(blocking=True, timeout=WAIT) == [5, 10, "#10"]


def test_a_pipeline_step_written_at_an_older_version_is_upcast_when_it_runs(
    make_huey: MakeHuey,
) -> None:
    """A pipeline enqueued by code where a later step is version 1 runs that step
    through today's upcaster once its parent's result is appended."""
    old = make_huey()
    old_add = declare_add(old, "versioned")

    @old.versioned_task(version=1, name="feat.invoice")
    def invoice_v1(label: str, total: int) -> str:
        raise AssertionError("old code never runs")

    results = old.enqueue(old_add.s(40, 2).then(invoice_v1, "order-7"))

    new = make_huey()
    declare_add(new, "versioned")

    @new.versioned_task(version=2, name="feat.invoice")
    def invoice(label: str, total: int, currency: str) -> str:
        return f"{label}: {total} {currency}"

    @new.upcaster("feat.invoice", from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    with running_consumer(new):
        assert results.get(blocking=True, timeout=WAIT) == [42, "order-7: 42 EUR"]
    assert len(new.dead_letters) == 0


# -- on_error -----------------------------------------------------------------------


def test_on_error_hands_the_exception_to_the_handler(make_huey: MakeHuey, kind: str) -> None:
    """A failing task's ``on_error`` handler (of the same kind) runs with its own
    arguments plus a stand-in for the exception, named and shown as the original."""
    app = make_huey()
    handled = Recorder()

    @declare(app, kind, "feat.charge")
    def charge(order_id: int) -> None:
        raise PaymentDeclined(f"card declined for order {order_id}")

    @declare(app, kind, "feat.charge_failed")
    def charge_failed(order_id: int, exc: Exception) -> None:
        handled((order_id, exc))

    result = app.enqueue(charge.s(7).error(charge_failed, 7))

    with running_consumer(app):
        wait_for(lambda: len(handled) == 1)
        with pytest.raises(TaskException) as info:
            get(result)

    [(order_id, exc)] = handled.items
    assert order_id == 7
    assert isinstance(exc, RemoteException)
    assert isinstance(exc, PaymentDeclined)  # the class is importable in the worker
    assert type(exc).__name__ == "PaymentDeclined"
    assert repr(exc) == "PaymentDeclined('card declined for order 7')"
    assert "PaymentDeclined" in info.value.metadata["error"]


def test_on_error_does_not_run_when_the_task_succeeds(make_huey: MakeHuey, kind: str) -> None:
    """The handler runs only on failure; ``on_complete`` runs on success."""
    app = make_huey()
    add = declare_add(app, kind)
    handled = Recorder()

    @app.task()
    def failed(exc: Exception) -> None:
        handled(exc)

    results = app.enqueue(add.s(1, 1).error(failed).then(add, 1))

    with running_consumer(app):
        assert results.get(blocking=True, timeout=WAIT) == [2, 3]
    assert len(handled) == 0


# -- chords and groups --------------------------------------------------------------


def test_a_chord_callback_receives_the_results_of_every_member(
    make_huey: MakeHuey, kind: str
) -> None:
    """``group([...]).then(callback)`` and ``chord(...)`` hand the members' results,
    in member order, to the callback."""
    app = make_huey()
    add = declare_add(app, kind)

    @declare(app, kind, "feat.total")
    def total(values: list[int]) -> int:
        return sum(values)

    @declare(app, kind, "feat.listed")
    def listed(label: str, values: list[int]) -> str:
        return f"{label}:{values}"

    from_group = app.enqueue(group([add.s(1, 2), add.s(3, 4), add.s(5, 6)]).then(total))
    from_chord = app.enqueue(chord([add.s(1, 1), add.s(2, 2)], listed.s("sums")))

    with running_consumer(app):
        assert get(from_group) == 21
        assert get(from_chord) == "sums:[2, 4]"
    assert from_group.results.get(blocking=True, timeout=WAIT) == [3, 7, 11]


def test_a_chord_member_that_fails_hands_its_error_to_the_callback(
    make_huey: MakeHuey, kind: str
) -> None:
    """A failed member leaves Huey's Error in its slot of the callback's list."""
    app = make_huey()
    add = declare_add(app, kind)
    seen = Recorder()

    @declare(app, kind, "feat.fragile")
    def fragile(n: int) -> int:
        raise PaymentDeclined(f"no {n}")

    @app.task()
    def collect(values: list[Any]) -> int:
        seen(values)
        return len(values)

    result = app.enqueue(chord([add.s(1, 1), fragile.s(2)], collect.s()))

    with running_consumer(app):
        assert get(result) == 2

    [[first, second]] = seen.items
    assert first == 2
    assert "PaymentDeclined" in second.metadata["error"]


# -- retries ------------------------------------------------------------------------


def test_retries_wait_retry_delay_and_grow_it_by_retry_backoff(
    make_huey: MakeHuey, kind: str
) -> None:
    """A failing task is retried from the schedule; each retry carries the
    remaining retries and a delay multiplied by ``retry_backoff``."""
    app = make_huey(store_intermediate_errors=False)  # get() waits for the last attempt
    attempts = Recorder()

    @declare(app, kind, "feat.flaky", retries=2, retry_delay=0.1, retry_backoff=2, context=True)
    def flaky(n: int, task: Any = None) -> int:
        attempts((task.id, task.retries, task.retry_delay))
        if len(attempts) < 3:
            raise PaymentDeclined("not yet")
        return n

    seen = record_signals(app, SIGNAL_RETRYING, SIGNAL_SCHEDULED)
    result = flaky(5)

    with running_consumer(app):
        assert get(result) == 5

    assert attempts.items == [(result.id, 2, 0.1), (result.id, 1, 0.2), (result.id, 0, 0.4)]
    assert signals_of(seen, result.id) == [SIGNAL_RETRYING, SIGNAL_SCHEDULED] * 2


def test_a_task_that_keeps_failing_stops_after_its_retries(make_huey: MakeHuey, kind: str) -> None:
    """Retries without a delay go straight back on the queue; after the last one the
    result is Huey's error, with the retries used up; each failure before it is
    stored too (``store_intermediate_errors``, on by default)."""
    app = make_huey()
    attempts = Recorder()

    @declare(app, kind, "feat.broken", retries=2)
    def broken(n: int) -> int:
        attempts(n)
        raise PaymentDeclined("always")

    result = broken(3)

    with running_consumer(app):
        wait_for(lambda: len(attempts) == 3)
        wait_for(lambda: error_retries(app, result.id) == 0)

    assert attempts.items == [3, 3, 3]
    with pytest.raises(TaskException, match="PaymentDeclined"):
        result.get()


def error_retries(app: VersionedHuey, task_id: str) -> int | None:
    """The retries left recorded in a task's stored error, if there is one."""
    error = app.get(task_id, peek=True)
    return error.metadata["retries"] if error is not None else None


# -- eta and delay ------------------------------------------------------------------


def test_delay_and_eta_run_once_the_scheduler_finds_them_due(
    make_huey: MakeHuey, kind: str
) -> None:
    """``.schedule(delay=)``, ``.schedule(eta=)`` and ``.s(eta=)`` wait on the schedule
    and run once due; a far eta stays scheduled."""
    app = make_huey()
    add = declare_add(app, kind)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.3)
    later = datetime.datetime.now() + datetime.timedelta(days=1)  # naive local time

    by_delay = add.schedule(args=(1, 2), delay=0.3)
    by_eta = add.schedule(kwargs={"a": 3, "b": 4}, eta=soon)
    by_s = app.enqueue(add.s(5, 6, eta=soon))
    far = add.schedule(args=(7, 8), eta=later)

    with running_consumer(app):
        assert [get(by_delay), get(by_eta), get(by_s)] == [3, 7, 11]
        wait_for(lambda: app.scheduled_count() == 1)

    [waiting] = app.scheduled()
    assert waiting.id == far.id
    assert waiting.eta is not None
    assert far.get() is None


# -- periodic tasks -----------------------------------------------------------------


def test_a_periodic_task_runs_when_its_crontab_matches(make_huey: MakeHuey) -> None:
    """The consumer's scheduler enqueues the periodic tasks whose crontab (or
    validate function) matches now, and no others: plain and versioned."""
    app = make_huey()
    ran = Recorder()
    now = datetime.datetime.now(datetime.UTC)
    other_minute = str((now.minute + 30) % 60)

    @app.periodic_task(crontab(minute="*"))
    def every_minute() -> None:
        ran("every_minute")

    @app.periodic_task(crontab(minute=other_minute, hour="*"))
    def half_an_hour_away() -> None:
        ran("half_an_hour_away")

    @app.periodic_task(lambda ts: ts.year >= 2000, name="custom_check")
    def custom() -> str:
        ran("custom")
        return "periodic results are not stored"

    @app.versioned_periodic_task(crontab(minute="*"), version=2, name="features.tick")
    def tick(region: str = "eu") -> None:
        ran(f"tick {region}")

    @app.versioned_periodic_task(crontab(minute=other_minute, hour="*"), name="features.tock")
    def tock() -> None:
        ran("tock")

    with running_consumer(app, periodic=True):
        wait_for(lambda: len(ran) == 3)
        time.sleep(0.1)  # anything else enqueued at start-up would have run by now

    assert sorted(ran.items) == ["custom", "every_minute", "tick eu"]
    assert app.result_count() == 0
    assert len(app.dead_letters) == 0


def test_a_versioned_periodic_task_is_also_an_ordinary_versioned_task(
    make_huey: MakeHuey,
) -> None:
    """It can be called with arguments, which are validated as usual (Huey does
    not store a periodic task's result)."""
    app = make_huey()
    ran = Recorder()

    @app.versioned_periodic_task(crontab(minute="0"), version=1, name="features.report")
    def report(region: str = "eu") -> None:
        ran(region)

    assert report.version == 1
    with pytest.raises(InvalidArguments):
        report(region=3)
    report("us")
    task = app.dequeue()
    assert task is not None
    app.execute(task)
    assert ran.items == ["us"]


def test_periodic_task_on_a_versioned_task_is_refused(make_huey: MakeHuey) -> None:
    """Stacking @periodic_task on @versioned_task would register a second task."""
    app = make_huey()
    with pytest.raises(SchemaError, match="versioned_periodic_task"):

        @app.periodic_task(crontab(minute="*"))
        @app.versioned_task(version=1, name="features.stacked")
        def stacked() -> None:
            pass


def test_a_versioned_periodic_task_needs_defaults(make_huey: MakeHuey) -> None:
    """The scheduler calls it with no arguments: every parameter needs a default."""
    app = make_huey()
    with pytest.raises(SchemaError, match=r"'features\.needs' version 1 .*\(day\)"):

        @app.versioned_periodic_task(crontab(minute="*"), name="features.needs")
        def needs(day: str) -> None:
            pass

    assert "features.needs" not in app.schema.specs


# -- revocation ---------------------------------------------------------------------


def test_revoke_and_restore_by_id(make_huey: MakeHuey, kind: str) -> None:
    """A task revoked by id is skipped; one revoked and restored runs."""
    app = make_huey()
    add = declare_add(app, kind)
    seen = record_signals(app, SIGNAL_REVOKED, SIGNAL_COMPLETE)

    skipped = add(1, 1)
    app.revoke_by_id(skipped.id)
    restored = add(2, 2)
    restored.revoke()
    assert restored.is_revoked()
    assert app.restore_by_id(restored.id)
    revoked_result = add(3, 3)
    revoked_result.revoke()

    with running_consumer(app):
        assert get(restored) == 4
        wait_for(lambda: len(seen) == 3)

    assert signals_of(seen, skipped.id) == [SIGNAL_REVOKED]
    assert signals_of(seen, revoked_result.id) == [SIGNAL_REVOKED]
    assert signals_of(seen, restored.id) == [SIGNAL_COMPLETE]
    assert skipped.get() is None


def test_revoke_by_task_skips_every_call_until_restored(make_huey: MakeHuey, kind: str) -> None:
    """``task.revoke()`` skips every message of the task; ``task.restore()`` ends it."""
    app = make_huey()
    add = declare_add(app, kind)
    seen = record_signals(app, SIGNAL_REVOKED, SIGNAL_COMPLETE)

    add.revoke()
    assert add.is_revoked()
    skipped = [add(n, n) for n in range(3)]
    with running_consumer(app):
        wait_for(lambda: len(seen) == 3)
    assert all(signals_of(seen, r.id) == [SIGNAL_REVOKED] for r in skipped)

    assert add.restore()
    assert not add.is_revoked()
    with running_consumer(app):
        assert get(add(4, 4)) == 8


def test_revoke_once_skips_only_the_next_call(make_huey: MakeHuey, kind: str) -> None:
    """``revoke(revoke_once=True)`` skips one message of the task, then lifts itself."""
    app = make_huey()
    add = declare_add(app, kind)
    seen = record_signals(app, SIGNAL_REVOKED, SIGNAL_COMPLETE)

    add.revoke(revoke_once=True)
    results = [add(n, 1) for n in range(3)]

    with running_consumer(app, workers=1):
        wait_for(lambda: len(seen) == 3)

    assert [signals_of(seen, r.id) for r in results] == [
        [SIGNAL_REVOKED],
        [SIGNAL_COMPLETE],
        [SIGNAL_COMPLETE],
    ]
    assert not add.is_revoked()


def test_revoke_until_skips_calls_before_the_time_and_lifts_after_it(
    make_huey: MakeHuey, kind: str
) -> None:
    """``revoke_until`` (a datetime) holds while in the future and lifts once past."""
    app = make_huey()
    add = declare_add(app, kind)

    @declare(app, kind, "feat.sub")
    def sub(a: int, b: int) -> int:
        return a - b

    seen = record_signals(app, SIGNAL_REVOKED, SIGNAL_COMPLETE)
    in_an_hour = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    an_hour_ago = datetime.datetime.now() - datetime.timedelta(hours=1)  # naive local

    add.revoke(revoke_until=in_an_hour)
    held = add(1, 1)
    lifted = sub(5, 2)
    app.revoke_by_id(lifted.id, revoke_until=an_hour_ago)
    utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # Huey's clock
    assert add.is_revoked(timestamp=utc_now)
    assert not add.is_revoked(timestamp=utc_now + datetime.timedelta(hours=2))

    with running_consumer(app):
        assert get(lifted) == 3
        wait_for(lambda: len(seen) == 2)

    assert signals_of(seen, held.id) == [SIGNAL_REVOKED]
    assert signals_of(seen, lifted.id) == [SIGNAL_COMPLETE]
    assert not app.is_revoked(lifted.id)  # a lifted revocation is cleared
    assert add.is_revoked()


# -- locks --------------------------------------------------------------------------


def test_lock_task_refuses_a_second_holder_and_frees_on_exit(
    make_huey: MakeHuey, kind: str
) -> None:
    """A task inside ``huey.lock_task(name)`` fails with a locked error while the lock
    is held elsewhere, and runs once it is free."""
    app = make_huey()
    lock = app.lock_task("nightly-report")
    ran = Recorder()

    @declare(app, kind, "feat.report")
    @lock
    def report(day: int) -> int:
        ran(day)
        return day

    seen = record_signals(app, SIGNAL_LOCKED)
    with lock:  # another holder, e.g. a long run elsewhere
        assert app.is_locked("nightly-report")
        refused = report(1)
        with running_consumer(app):
            with pytest.raises(TaskException) as info:
                get(refused)
            assert "unable to acquire lock nightly-report" in info.value.metadata["error"]
    assert not app.is_locked("nightly-report")

    with running_consumer(app):
        assert get(report(2)) == 2
    assert ran.items == [2]
    assert signals_of(seen, refused.id) == [SIGNAL_LOCKED]


def test_flush_locks_releases_a_lock_left_behind(make_huey: MakeHuey, kind: str) -> None:
    """``huey.flush_locks()`` clears a lock a crashed holder never released."""
    app = make_huey()

    @declare(app, kind, "feat.guarded")
    def guarded(n: int) -> int:
        with app.lock_task("guard"):
            return n

    app.lock_task("guard").acquire()
    assert app.is_locked("guard")
    assert app.flush_locks() == {"guard"}
    assert not app.is_locked("guard")
    with running_consumer(app):
        assert get(guarded(3)) == 3


# -- priorities ---------------------------------------------------------------------


def test_higher_priority_messages_run_first(
    make_huey: MakeHuey, backend: str, queue_name: str, kind: str
) -> None:
    """Per-call and declared priorities order the queue, highest first."""
    app = priority_app(make_huey, backend, queue_name)
    order = Recorder()

    @declare(app, kind, "feat.job", priority=5)
    def job(label: str) -> None:
        order(label)

    app.enqueue(job.s("low", priority=1))
    job("declared")
    app.enqueue(job.s("high", priority=10))
    job.schedule(args=("none",), delay=0, priority=0)
    app.enqueue(job.s("mid", priority=3))

    with running_consumer(app, workers=1):
        wait_for(lambda: len(order) == 5)

    assert order.items == ["high", "declared", "mid", "low", "none"]


# -- expiry and timeouts ------------------------------------------------------------


def test_an_expired_message_is_skipped_and_a_fresh_one_runs(
    make_huey: MakeHuey, kind: str
) -> None:
    """A message past its ``expires`` is not run (SIGNAL_EXPIRED); one within runs."""
    app = make_huey()
    seen = record_signals(app, SIGNAL_EXPIRED, SIGNAL_COMPLETE)

    @declare(app, kind, "feat.quote", expires=3600)
    def quote(n: int) -> int:
        return n

    stale = app.enqueue(quote.s(1, expires=0.01))
    stale_by_date = app.enqueue(
        quote.s(2, expires=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    )
    time.sleep(0.05)  # past the first one's 10 ms
    fresh = quote(3)

    with running_consumer(app):
        assert get(fresh) == 3
        wait_for(lambda: len(seen) == 3)

    assert signals_of(seen, stale.id) == [SIGNAL_EXPIRED]
    assert signals_of(seen, stale_by_date.id) == [SIGNAL_EXPIRED]
    assert stale.get() is None


def test_a_task_past_its_timeout_stops_with_a_timeout_error(
    make_huey: MakeHuey, kind: str
) -> None:
    """A task that checks ``task.check_timeout()`` (thread workers cannot interrupt)
    stops with TaskTimeout once past its ``timeout``; SIGNAL_TIMEOUT fires."""
    app = make_huey()
    seen = record_signals(app, SIGNAL_TIMEOUT)

    @declare(app, kind, "feat.crunch", timeout=0.2, context=True)
    def crunch(n: int, task: Any = None) -> int:
        assert task.timeout in (0.2, 0.1)
        while True:
            task.check_timeout()
            time.sleep(0.01)

    declared = crunch(1)
    per_call = app.enqueue(crunch.s(2, timeout=0.1))

    with running_consumer(app):
        for result in (declared, per_call):
            with pytest.raises(TaskException) as info:
                get(result)
            assert "TaskTimeout" in info.value.metadata["error"]
    assert signals_of(seen, declared.id) == [SIGNAL_TIMEOUT]
    assert signals_of(seen, per_call.id) == [SIGNAL_TIMEOUT]


# -- context ------------------------------------------------------------------------


def test_context_true_hands_the_running_task_to_the_function(
    make_huey: MakeHuey, kind: str
) -> None:
    """With ``context=True`` the function gets the Task: its id, retries, priority."""
    app = make_huey()

    @declare(app, kind, "feat.introspect", context=True, retries=3, retry_delay=5)
    def introspect(n: int, task: Any = None) -> tuple[str, str, int, float, int]:
        return task.id, type(task).__name__, task.retries, task.retry_delay, n

    result = introspect(8)

    with running_consumer(app):
        assert get(result) == (result.id, type(result.task).__name__, 3, 5, 8)


# -- signals ------------------------------------------------------------------------


def test_signals_fire_in_order_for_a_success_and_a_failure(make_huey: MakeHuey, kind: str) -> None:
    """enqueued -> executing -> complete for a task that returns; error for one that
    raises (receiving the exception itself, in the worker)."""
    app = make_huey()
    add = declare_add(app, kind)
    seen = record_signals(app, SIGNAL_ENQUEUED, SIGNAL_EXECUTING, SIGNAL_COMPLETE, SIGNAL_ERROR)
    errors = Recorder()

    @app.signal(SIGNAL_ERROR)
    def on_error(name: str, task: Task, exc: Exception) -> None:
        errors(exc)

    @declare(app, kind, "feat.refuse")
    def refuse(n: int) -> None:
        raise PaymentDeclined(f"refused {n}")

    ok = add(1, 2)
    failed = refuse(3)

    with running_consumer(app):
        wait_for(lambda: len(seen) == 6)

    assert signals_of(seen, ok.id) == [SIGNAL_ENQUEUED, SIGNAL_EXECUTING, SIGNAL_COMPLETE]
    assert signals_of(seen, failed.id) == [SIGNAL_ENQUEUED, SIGNAL_EXECUTING, SIGNAL_ERROR]
    [exc] = errors.items
    assert isinstance(exc, PaymentDeclined)
    assert str(exc) == "refused 3"


def test_a_postgres_app_reads_its_connection_from_a_dsn_or_a_callable(
    queue_name: str,
) -> None:
    """VersionedPostgresHuey takes ``dsn=`` or a ``connection=`` callable, as Huey does."""
    require_postgres()
    import psycopg

    apps = [
        VersionedPostgresHuey(queue_name, dsn=PG_DSN, blocking=False),
        VersionedPostgresHuey(
            queue_name, connection=lambda: psycopg.connect(PG_DSN), blocking=True, read_timeout=0.1
        ),
    ]
    try:
        results = []
        for app in apps:
            add = declare_add(app, "versioned")
            results.append(add(len(results), 1))
        consumer_app = apps[1]

        @consumer_app.on_shutdown()
        def close_connections() -> None:
            # Huey leaves each worker thread's LISTEN connection to the garbage
            # collector; close it in the thread that opened it.
            consumer_app.storage.close()

        with running_consumer(consumer_app):
            assert [get(r) for r in results] == [1, 2]
        assert len(consumer_app.dead_letters) == 0
    finally:
        for app in apps:
            app.storage.flush_all()
            app.storage.close()
