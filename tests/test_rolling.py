"""Rolling deploys: the newer-version policy (defer or dead-letter, a delay that
grows with the message's age, a bounded age, a signal and a count per
deferral), downcasters, and producers pinned to an older version.

Most tests run on every backend through ``make_huey``: two apps made in one
test share one queue, one playing the old release (version 2 of
``shop.charge``) and the other the new one (version 3).
"""

from __future__ import annotations

import datetime
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import REDIS_URL, queued, require_redis, running_consumer, wait_for
from huey.signals import SIGNAL_ENQUEUED

from versioned_tasks import (
    SIGNAL_DEFERRED,
    ConfigurationError,
    DeferredMessage,
    DowncastFailed,
    InvalidArguments,
    SchemaError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedRedisHuey,
    VersionedSerializer,
    VersionedTaskError,
)
from versioned_tasks.messages.rolling import HandOffs
from versioned_tasks.ops.lock import build_lock, write_lock

MakeHuey = Callable[..., VersionedHuey]
TASK = "shop.charge"
ENV = "VERSIONED_TASKS_EMIT_VERSIONS"
SERIALIZER = VersionedSerializer()


# -- two releases of one task ----------------------------------------------------------


def declare_v2(app: VersionedHuey, **options: Any) -> Any:
    """The old release: amounts in whole euros."""

    @app.versioned_task(version=2, name=TASK, **options)
    def charge(order_id: int, amount: int) -> str:
        return f"v2 {order_id}:{amount}"

    return charge


def declare_v3(app: VersionedHuey, *, downcaster: bool = True, **options: Any) -> Any:
    """The new release: amounts in cents with a currency; reads version 2 and, with
    ``downcaster``, writes it."""

    @app.versioned_task(version=3, name=TASK, **options)
    def charge(order_id: int, amount_cents: int, currency: str = "EUR") -> str:
        return f"v3 {order_id}:{amount_cents} {currency}"

    @app.upcaster(TASK, from_version=2)
    def to_cents(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "amount_cents": payload["amount"] * 100}

    if downcaster:

        @app.downcaster(TASK, from_version=3)
        def to_euros(payload: dict[str, Any]) -> dict[str, Any]:
            if payload["currency"] != "EUR":
                raise ValueError(f"version 2 charges in EUR only, not {payload['currency']}")
            euros, cents = divmod(payload["amount_cents"], 100)
            if cents:
                raise ValueError(f"version 2 has whole euros only, not {cents} cents")
            return {"order_id": payload["order_id"], "amount": euros}

    return charge


def scheduled(app: VersionedHuey) -> list[bytes]:
    return [bytes(raw) for raw in app.storage.scheduled_items()]


def header_of(raw: bytes) -> dict[str, Any]:
    header, _ = SERIALIZER.unpack(raw)
    return header


def body_of(raw: bytes) -> Any:
    _, body = SERIALIZER.unpack(raw)
    return orjson.loads(body)


def aged(raw: bytes, seconds: float) -> bytes:
    """The same message as if it had been enqueued ``seconds`` ago."""
    header, body = SERIALIZER.unpack(raw)
    header["at"] = time.time() - seconds
    return SERIALIZER.pack(header, body)


def app_now() -> datetime.datetime:
    """Now, as Huey's clock keeps it (naive UTC)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def far_future() -> datetime.datetime:
    return datetime.datetime(2100, 1, 1)


def deferrals(app: VersionedHuey) -> list[DeferredMessage]:
    """Collect what SIGNAL_DEFERRED receivers of ``app`` get."""
    got: list[DeferredMessage] = []

    @app.signal(SIGNAL_DEFERRED)
    def on_deferred(signal: str, message: DeferredMessage) -> None:
        assert signal == SIGNAL_DEFERRED
        got.append(message)

    return got


def newer_message(make_huey: MakeHuey) -> bytes:
    """The bytes of a version 3 message, written by the new release (not enqueued)."""
    new = make_huey()
    charge = declare_v3(new)
    return new.serialize_task(charge.s(7, 1250, "EUR"))


# -- the newer-version policy ------------------------------------------------------------


def test_by_default_a_newer_message_is_deferred_with_its_exact_bytes(
    make_huey: MakeHuey,
) -> None:
    """The default policy is ``defer``: the old worker puts the bytes on the schedule."""
    raw = newer_message(make_huey)
    old = make_huey()
    declare_v2(old)
    old.storage.enqueue(raw)

    assert old.dequeue() is None

    assert old.newer_version == "defer"
    assert scheduled(old) == [raw]
    assert len(old.dead_letters) == 0


# FileStorage orders its queue by the millisecond: bytes put back within the
# millisecond they were enqueued in may come out before what followed them.
@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis", "postgres"], indirect=True)
def test_an_old_worker_first_hands_a_newer_message_back_to_the_queue(
    make_huey: MakeHuey,
) -> None:
    """At the first meeting the worker puts the bytes back on the queue, behind the
    others, for another worker; it defers them only when they come back to it."""
    raw = newer_message(make_huey)
    old = make_huey()
    charge_v2 = declare_v2(old)
    got = deferrals(old)
    old.storage.enqueue(raw)
    charge_v2(8, 12)

    task = old.dequeue()  # hands the newer message back, then takes the next one

    assert task is not None
    assert old.execute(task) == "v2 8:12"
    assert queued(old) == [raw]
    assert got == []
    assert old.dequeue() is None  # the same message again: now deferred
    assert scheduled(old) == [raw]
    assert [m.task for m in got] == [TASK]
    assert old.dequeue() is None
    assert scheduled(old) == [raw]


def test_the_dead_letter_policy_of_the_app_dead_letters_a_newer_message_at_once(
    make_huey: MakeHuey,
) -> None:
    """``newer_version="dead_letter"``: no deferral, the exact bytes go to the store."""
    raw = newer_message(make_huey)
    old = make_huey(newer_version="dead_letter")
    declare_v2(old)
    got = deferrals(old)
    old.storage.enqueue(raw)

    assert old.dequeue() is None

    [entry] = old.dead_letters
    assert (entry.reason, entry.task, entry.version, entry.raw) == ("newer_version", TASK, 3, raw)
    assert "the newer-version policy of this task is 'dead_letter'" in entry.error
    assert scheduled(old) == []
    assert got == []
    assert old.deferral_counts() == {}


def test_a_task_policy_overrides_the_app_policy_both_ways(make_huey: MakeHuey) -> None:
    """A task's ``newer_version=`` wins over the app's, in either direction."""
    new = make_huey()
    charge = declare_v3(new)

    @new.versioned_task(version=2, name="shop.refund")
    def refund(order_id: int, reason: str) -> None: ...

    charge_raw = new.serialize_task(charge.s(1, 100))
    refund_raw = new.serialize_task(refund.s(1, "late"))

    # An app that dead-letters, with one task that defers.
    old = make_huey(newer_version="dead_letter")
    declare_v2(old, newer_version="defer")

    @old.versioned_task(version=1, name="shop.refund")
    def refund_v1(order_id: int) -> None: ...

    old.storage.enqueue(charge_raw)
    old.storage.enqueue(refund_raw)
    assert old.dequeue() is None
    assert scheduled(old) == [charge_raw]
    assert [(e.task, e.reason) for e in old.dead_letters] == [("shop.refund", "newer_version")]

    # An app that defers, with one task that dead-letters.
    other = make_huey()
    declare_v2(other, newer_version="dead_letter")

    @other.versioned_task(version=1, name="shop.refund")
    def refund_other(order_id: int) -> None: ...

    assert other.read_schedule(far_future()) == []
    other.storage.enqueue(refund_raw)
    assert other.dequeue() is None
    assert scheduled(other) == [refund_raw]
    # One store for the queue: the first app's entry and the second app's.
    assert sorted((e.task, e.raw) for e in other.dead_letters) == sorted(
        [("shop.refund", refund_raw), (TASK, charge_raw)]
    )


def test_the_policy_follows_renames_to_the_task_that_runs_the_message(
    make_huey: MakeHuey,
) -> None:
    """A message under an old name gets the policy of the task it is renamed to."""
    new = make_huey()

    @new.versioned_task(version=3, name="shop.bill")
    def bill(order_id: int) -> None: ...

    raw = new.serialize_task(bill.s(1))
    old = make_huey()

    @old.versioned_task(version=2, name="shop.invoice", newer_version="dead_letter")
    def invoice(order_id: int) -> None: ...

    old.rename("shop.bill", "shop.invoice")
    old.storage.enqueue(raw)

    assert old.dequeue() is None

    [entry] = old.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("newer_version", "shop.bill", 3)


def test_the_delay_grows_with_the_message_age_and_is_capped(make_huey: MakeHuey) -> None:
    """delay = min(max(age / 2, newer_version_delay), newer_version_max_delay) plus up to a
    second of jitter, with the age taken from the envelope's ``at``, so the bytes need not
    change."""
    raw = newer_message(make_huey)
    old = make_huey(newer_version_delay=2, newer_version_max_delay=600)
    declare_v2(old)
    got = deferrals(old)

    for age, expected in [(0, 2), (3, 2), (10, 5), (100, 50), (1000, 500), (5000, 600)]:
        message = aged(raw, age)
        old.storage.enqueue(message)
        assert old.dequeue() is None
        assert scheduled(old) == [message]
        deferred = got[-1]
        assert deferred.age == pytest.approx(age, abs=30)
        base = min(max(deferred.age / 2, 2.0), 600.0)
        assert base <= deferred.delay < base + 1
        assert base == pytest.approx(expected, abs=15)
        old.storage.read_schedule(far_future())  # clear it for the next age

    assert len(old.dead_letters) == 0


def test_a_deferred_message_is_due_after_its_delay_and_not_before(make_huey: MakeHuey) -> None:
    """The schedule holds the message until now + delay."""
    raw = aged(newer_message(make_huey), 100)
    old = make_huey(newer_version_delay=5)
    declare_v2(old)
    old.storage.enqueue(raw)
    before = app_now()

    assert old.dequeue() is None

    assert old.storage.read_schedule(before + datetime.timedelta(seconds=40)) == []
    due = old.storage.read_schedule(before + datetime.timedelta(seconds=60))
    assert [bytes(item) for item in due] == [raw]


def test_one_message_deferred_again_and_again_keeps_its_bytes_and_waits_longer(
    make_huey: MakeHuey,
) -> None:
    """Each time the message comes due and an old worker reads it again, it is deferred
    again, with the same bytes and a delay that never shrinks and grows with age."""
    raw = newer_message(make_huey)
    old = make_huey(newer_version_delay=0.05, newer_version_max_delay=60)
    declare_v2(old)
    got = deferrals(old)
    old.storage.enqueue(raw)

    assert old.dequeue() is None
    for _ in range(5):
        time.sleep(0.1)
        assert scheduled(old) == [raw]
        assert old.read_schedule(far_future()) == []  # due: back on the queue
        assert queued(old) == [raw]
        assert old.dequeue() is None  # deferred again

    assert scheduled(old) == [raw]
    bases = [min(max(m.age / 2, 0.05), 60.0) for m in got]
    assert len(bases) == 6
    assert bases == sorted(bases)
    assert bases[-1] >= 0.25  # at least 0.5 s old by then
    assert all(0 <= m.delay - base < 1 for m, base in zip(got, bases, strict=True))
    assert old.deferral_counts() == {TASK: 6}


def test_an_old_scheduler_puts_a_due_newer_message_back_on_the_queue(
    make_huey: MakeHuey,
) -> None:
    """The scheduler moves the exact bytes to the queue, where any worker (a newer one
    first, with luck) can take them; only workers defer."""
    raw = newer_message(make_huey)
    old = make_huey()
    declare_v2(old)
    got = deferrals(old)
    old.storage.add_to_schedule(raw, app_now())

    assert old.read_schedule(far_future()) == []

    assert queued(old) == [raw]
    assert scheduled(old) == []
    assert got == []
    new = make_huey()
    declare_v3(new)
    task = new.dequeue()
    assert task is not None
    assert new.execute(task) == "v3 7:1250 EUR"


def test_a_message_older_than_the_max_age_is_dead_lettered_not_deferred(
    make_huey: MakeHuey,
) -> None:
    """Deferral is bounded: past ``newer_version_max_age`` the message is dead-lettered."""
    raw = aged(newer_message(make_huey), 3600)
    old = make_huey(newer_version_max_age=600)
    declare_v2(old)
    got = deferrals(old)
    old.storage.add_to_schedule(raw, app_now())

    assert old.read_schedule(far_future()) == []

    [entry] = old.dead_letters
    assert (entry.reason, entry.raw) == ("newer_version", raw)
    assert "was deferred until it was 600s old" in entry.error
    assert scheduled(old) == []
    assert got == []


def test_a_scheduled_message_ages_from_when_it_came_due(make_huey: MakeHuey) -> None:
    """A message scheduled weeks ahead is not past max age the moment it comes due:
    its age counts from its eta, so an old worker hands it on instead."""
    header, body = SERIALIZER.unpack(aged(newer_message(make_huey), 3600))
    due = app_now()
    header["eta"] = due.isoformat()
    raw = SERIALIZER.pack(header, body)
    old = make_huey(newer_version_max_age=600)
    declare_v2(old)
    old.storage.add_to_schedule(raw, due)

    assert old.read_schedule(far_future()) == []

    assert len(old.dead_letters) == 0
    assert [bytes(item) for item in old.storage.enqueued_items()] == [raw]


def test_a_full_hand_off_memory_defers_at_once_and_never_spins() -> None:
    """With its memory full of recent hand-offs, a worker defers a newer message at
    once instead of forgetting an id that may still come round (which would hand
    the same messages back forever)."""
    hand_offs = HandOffs(size=2)
    assert hand_offs.first_meeting("a") is True
    assert hand_offs.first_meeting("b") is True
    assert hand_offs.first_meeting("c") is False  # full: defer "c" now
    assert hand_offs.first_meeting("a") is False  # "a" came round: defer it
    assert hand_offs.first_meeting("c") is True  # room again
    stale = HandOffs(size=1, ttl=-1.0)  # every hand-off is already old
    assert stale.first_meeting("x") is True
    assert stale.first_meeting("y") is True  # "x" is old enough to forget


def test_a_newer_message_without_an_enqueue_time_is_dead_lettered(make_huey: MakeHuey) -> None:
    """With no ``at`` nothing bounds the deferral, so the message is dead-lettered."""
    header, body = SERIALIZER.unpack(newer_message(make_huey))
    del header["at"]
    raw = SERIALIZER.pack(header, body)
    old = make_huey()
    declare_v2(old)
    old.storage.enqueue(raw)

    assert old.dequeue() is None

    [entry] = old.dead_letters
    assert (entry.reason, entry.raw) == ("newer_version", raw)
    assert "no enqueue time" in entry.error


def test_every_deferral_sends_the_signal_logs_and_counts(
    make_huey: MakeHuey, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGNAL_DEFERRED receivers get the task, versions, id and eta; receivers of every
    signal get it too; the app counts deferrals by task and logs each at INFO."""
    new = make_huey()
    charge = declare_v3(new)
    raw = new.serialize_task(charge.s(7, 1250))
    ident = header_of(raw)["id"]
    old = make_huey(newer_version_delay=30)
    declare_v2(old)
    got = deferrals(old)
    seen: list[tuple[str, Any]] = []

    @old.signal()
    def on_any(signal: str, task: Any, *args: Any) -> None:
        seen.append((signal, task))

    old.storage.enqueue(raw)
    before = app_now()
    with caplog.at_level(logging.INFO, logger="versioned_tasks"):
        assert old.dequeue() is None
        assert old.read_schedule(far_future()) == []  # due: back on the queue
        assert old.dequeue() is None  # deferred again

    assert len(got) == 2
    first = got[0]
    assert (first.task, first.name, first.version, first.known_version, first.id) == (
        TASK,
        TASK,
        3,
        2,
        ident,
    )
    assert 30.0 <= first.delay < 31.0
    assert before + datetime.timedelta(seconds=29) <= first.eta
    assert first.eta <= app_now() + datetime.timedelta(seconds=32)
    assert "newer than this worker knows (version 2)" in first.detail
    assert [(s, t.id) for s, t in seen] == [(SIGNAL_DEFERRED, ident)] * 2
    assert old.deferral_counts() == {TASK: 2}
    assert new.deferral_counts() == {}
    logged = [r for r in caplog.records if r.getMessage().startswith("Deferred task")]
    assert len(logged) == 2
    assert all(r.levelno == logging.INFO for r in logged)
    assert re.search(
        rf"'shop\.charge' version 3, id {ident} \(this worker knows version 2\) for 3[01]\.\ds",
        logged[0].getMessage(),
    )


def test_a_deferral_receiver_may_use_the_queue(make_huey: MakeHuey) -> None:
    """The signal is sent once the deferral is stored (after the commit on SQLite), so
    a receiver can enqueue a task of its own without waiting on the storage."""
    raw = newer_message(make_huey)
    old = make_huey()
    declare_v2(old)

    @old.versioned_task(version=1, name="ops.alert")
    def alert(text: str) -> None: ...

    @old.signal(SIGNAL_DEFERRED)
    def on_deferred(signal: str, message: DeferredMessage) -> None:
        alert(f"deferred {message.task} v{message.version}")

    old.storage.enqueue(raw)
    # dequeue() defers the newer message, then returns the alert its receiver enqueued.
    for _ in range(2):
        first = old.dequeue()
        assert first is not None
        assert first.kwargs == {"text": "deferred shop.charge v3"}
        assert old.read_schedule(far_future()) == []  # due: back on the queue

    assert queued(old) == [raw]
    assert scheduled(old) == []


@pytest.mark.parametrize("backend", ["sqlite", "redis", "file"], indirect=True)
def test_a_deferred_message_survives_a_restart_and_runs_once_the_new_code_reads_it(
    make_huey: MakeHuey,
) -> None:
    """The deferral lives on the storage's schedule: a restarted old worker defers it
    again (same bytes), and the new release then runs it."""
    raw = newer_message(make_huey)
    first = make_huey(newer_version_delay=1)
    declare_v2(first)
    first.storage.enqueue(raw)
    assert first.dequeue() is None
    del first  # the old worker stops

    restarted = make_huey(newer_version_delay=1)
    declare_v2(restarted)
    assert restarted.read_schedule(far_future()) == []
    assert restarted.dequeue() is None
    assert scheduled(restarted) == [raw]
    assert restarted.deferral_counts() == {TASK: 1}

    new = make_huey()
    declare_v3(new)
    [task] = new.read_schedule(far_future())
    assert new.execute(task) == "v3 7:1250 EUR"
    assert scheduled(new) == []
    assert len(new.dead_letters) == 0


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"newer_version": "sometimes"},
            "newer_version='sometimes' is not a newer-version policy",
        ),
        ({"newer_version_delay": 0}, "newer_version_delay must be positive, not 0"),
        ({"newer_version_delay": -1}, "newer_version_delay must be positive, not -1"),
        ({"newer_version_delay": math.nan}, "newer_version_delay must be a finite number"),
        ({"newer_version_delay": "30"}, "newer_version_delay must be a finite number"),
        ({"newer_version_max_delay": 0}, "newer_version_max_delay must be positive, not 0"),
        (
            {"newer_version_delay": 60, "newer_version_max_delay": 10},
            "newer_version_max_delay (10s) is shorter than newer_version_delay (60s)",
        ),
        ({"newer_version_max_age": -1}, "newer_version_max_age must be zero or more, not -1"),
        ({"newer_version_max_age": math.inf}, "newer_version_max_age must be a finite number"),
        ({"emit_versions": "sometimes"}, "emit_versions must be a mapping"),
        ({"emit_versions": {TASK: 0}}, f"emit_versions: the version of {TASK!r} must be"),
        ({"emit_versions": {TASK: True}}, f"emit_versions: the version of {TASK!r} must be"),
        ({"emit_versions": {"": 2}}, "emit_versions: task names must be non-empty strings"),
    ],
)
def test_bad_options_raise_a_configuration_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    """Each bad option is refused when the app is created, by name."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        VersionedMemoryHuey("rolling-config", **options)


def test_defaults_and_a_max_delay_below_a_long_first_delay() -> None:
    """Defaults: defer, 30 s, at most one hour, 24 hours; a first delay above an hour
    raises the default maximum with it."""
    app = VersionedMemoryHuey("rolling-defaults")
    assert (app.newer_version, app.newer_version_delay) == ("defer", 30.0)
    assert (app.newer_version_max_delay, app.newer_version_max_age) == (3600.0, 86400.0)
    assert (
        VersionedMemoryHuey("rolling-long", newer_version_delay=7200).newer_version_max_delay
        == 7200
    )


def test_an_unknown_task_policy_is_refused_and_the_task_is_not_declared() -> None:
    """``@huey.versioned_task(newer_version=...)`` takes the same two policies."""
    app = VersionedMemoryHuey("rolling-task-policy")
    with pytest.raises(ConfigurationError, match=re.escape("newer_version='later'")):

        @app.versioned_task(version=1, name="shop.late", newer_version="later")
        def late() -> None: ...

    assert "shop.late" not in app.schema.specs


# -- downcasters and their checks --------------------------------------------------------


def test_a_pinned_producer_writes_the_older_version_through_the_downcasters(
    make_huey: MakeHuey,
) -> None:
    """The header names the pinned version, the body is the downcast payload, an old
    worker runs it, and a new worker reads it back through the upcaster."""
    producer = make_huey(emit_versions={TASK: 2})
    charge = declare_v3(producer)

    charge(7, 1200)

    [raw] = queued(producer)
    assert header_of(raw)["v"] == 2
    assert body_of(raw) == {"order_id": 7, "amount": 12}
    old = make_huey()
    declare_v2(old)
    task = old.dequeue()
    assert task is not None
    assert old.execute(task) == "v2 7:12"

    charge(8, 300)
    new = make_huey()
    declare_v3(new)
    task = new.dequeue()
    assert task is not None
    assert new.execute(task) == "v3 8:300 EUR"
    assert producer.emit_versions == {TASK: 2}


def test_a_message_rewritten_after_it_was_read_keeps_todays_version_if_it_cannot_go_down(
    make_huey: MakeHuey, caplog: pytest.LogCaptureFixture
) -> None:
    """A pinned app re-writes messages it read (the scheduler's enqueue, retries): one
    the downcaster refuses keeps version 3 with a warning instead of being lost."""
    producer = make_huey()
    charge = declare_v3(producer)
    raw = producer.serialize_task(charge.s(7, 1250, "USD"))
    pinned = make_huey(emit_versions={TASK: 2})
    declare_v3(pinned)
    pinned.storage.add_to_schedule(raw, app_now())

    [task] = pinned.read_schedule(far_future())
    with caplog.at_level(logging.WARNING, logger="versioned_tasks"):
        pinned.enqueue(task)

    [written] = queued(pinned)
    assert (header_of(written)["v"], body_of(written)) == (
        3,
        {"order_id": 7, "amount_cents": 1250, "currency": "USD"},
    )
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot be written at version 2" in warning
    assert warning.endswith("It was written at version 3 instead.")
    [eur] = [producer.serialize_task(charge.s(8, 1200))]
    pinned.storage.add_to_schedule(eur, app_now())
    [task] = pinned.read_schedule(far_future())
    pinned.enqueue(task)
    assert [header_of(r)["v"] for r in queued(pinned)] == [3, 2]


def test_a_chain_of_downcasters_runs_from_the_current_version_down_to_the_pin(
    make_huey: MakeHuey,
) -> None:
    """Version 4 pinned to 2 runs the step 4 -> 3 and then 3 -> 2."""
    producer = make_huey(emit_versions={"shop.ship": 2})
    steps: list[int] = []

    @producer.versioned_task(version=4, name="shop.ship")
    def ship(order_id: int, carrier: str, express: bool = False) -> None: ...

    @producer.downcaster("shop.ship", from_version=4)
    def drop_express(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append(4)
        return {k: v for k, v in payload.items() if k != "express"}

    @producer.downcaster("shop.ship", from_version=3)
    def drop_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append(3)
        return {"order_id": payload["order_id"]}

    @producer.upcaster("shop.ship", from_version=2)
    def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "carrier": "post"}

    @producer.upcaster("shop.ship", from_version=3)
    def add_express(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    producer.check_schemas()
    ship(5, "dhl", express=True)

    assert steps == [4, 3]
    [raw] = queued(producer)
    assert (header_of(raw)["v"], body_of(raw)) == (2, {"order_id": 5})


def test_tasks_that_are_not_pinned_keep_todays_version(make_huey: MakeHuey) -> None:
    """Only the pinned task takes the downcast path; a pin at today's version is no pin."""
    producer = make_huey(emit_versions={TASK: 3})
    charge = declare_v3(producer)

    @producer.versioned_task(version=5, name="shop.audit")
    def audit(order_id: int) -> None: ...

    charge(1, 100)
    audit(1)

    assert [(header_of(r)["task"], header_of(r)["v"]) for r in queued(producer)] == [
        (TASK, 3),
        ("shop.audit", 5),
    ]


def test_a_failing_downcast_raises_at_enqueue_and_writes_nothing(make_huey: MakeHuey) -> None:
    """A value the old version cannot express raises DowncastFailed (an InvalidArguments)
    naming the task, the versions and the step, before SIGNAL_ENQUEUED fires."""
    producer = make_huey(emit_versions={TASK: 2})
    charge = declare_v3(producer)
    fired: list[str] = []

    @producer.signal(SIGNAL_ENQUEUED)
    def on_enqueued(signal: str, task: Any) -> None:
        fired.append(task.id)

    with pytest.raises(DowncastFailed) as caught:
        charge(7, 1250, "USD")

    error = caught.value
    assert isinstance(error, InvalidArguments)
    assert isinstance(error, VersionedTaskError)
    assert (error.task, error.version, error.target, error.step) == (TASK, 3, 2, (3, 2))
    assert str(error) == (
        "Task 'shop.charge' version 3 cannot be written at version 2 (pinned by "
        "emit_versions): the downcaster from version 3 to 2 failed: ValueError: version 2 "
        "charges in EUR only, not USD. Nothing was enqueued; fix the downcaster with "
        "@huey.downcaster('shop.charge', from_version=3), or unpin the task once every "
        "worker reads version 3."
    )
    with pytest.raises(DowncastFailed, match=re.escape("not 50 cents")):
        charge(7, 1250)
    assert queued(producer) == []
    assert fired == []


def test_a_downcaster_must_return_a_dict_with_string_keys(make_huey: MakeHuey) -> None:
    """Anything else is a failed downcast at enqueue, naming what came back."""
    producer = make_huey(emit_versions={"shop.tag": 1})

    @producer.versioned_task(version=2, name="shop.tag")
    def tag(order_id: int, label: str) -> None: ...

    @producer.upcaster("shop.tag", from_version=1)
    def add_label(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "label": ""}

    results: list[Any] = [[1, 2], {1: "one"}, {"when": object()}]

    @producer.downcaster("shop.tag", from_version=2)
    def broken(payload: dict[str, Any]) -> Any:
        return results.pop(0)

    with pytest.raises(DowncastFailed, match=re.escape("returned list, not a dict")):
        tag(1, "x")
    with pytest.raises(DowncastFailed, match=re.escape("returned dict, not a dict with string")):
        tag(1, "x")
    with pytest.raises(DowncastFailed, match=re.escape("its result is not JSON")):
        tag(1, "x")
    assert queued(producer) == []


def test_a_downcast_payload_is_checked_against_the_lock_schema_of_the_old_version(
    make_huey: MakeHuey, tmp_path: Path
) -> None:
    """With ``schema_lock=``, a downcast that does not fit version 2's recorded schema
    raises at enqueue, naming the field."""
    old = make_huey()
    declare_v2(old)
    lock_path = tmp_path / "versioned-tasks.lock"
    write_lock(lock_path, build_lock(old))
    producer = make_huey(emit_versions={TASK: 2}, schema_lock=str(lock_path))

    @producer.versioned_task(version=3, name=TASK)
    def charge(order_id: int, amount_cents: int, currency: str = "EUR") -> None: ...

    @producer.upcaster(TASK, from_version=2)
    def to_cents(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "amount_cents": payload["amount"] * 100}

    @producer.downcaster(TASK, from_version=3)
    def sloppy(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "amount": payload["amount_cents"] / 100}

    with pytest.raises(DowncastFailed) as caught:
        charge(7, 1250)

    assert caught.value.step == (2, 2)
    assert str(caught.value).startswith(
        "Task 'shop.charge' version 3 cannot be written at version 2 (pinned by "
        "emit_versions): the downcast payload, checked against the lock's schema of "
        "version 2, failed: amount: 12.5 is not of type 'integer' (the lock's schema of "
        "version 2)."
    )
    assert queued(producer) == []
    charge(7, 1200)  # 12.0 is a whole number: it fits, and version 2 reads it
    task = old.dequeue()
    assert task is not None
    assert old.execute(task) == "v2 7:12"


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (
            "gap",
            "Task 'shop.ship' has no downcaster from version 3 to 2 (the chain must start at "
            "the current version 4); register one with @huey.downcaster('shop.ship', "
            "from_version=3).",
        ),
        (
            "above",
            "Task 'shop.ship': downcaster from version 5 to 4 starts above the current "
            "version 4; remove it, or raise the task's version to 5.",
        ),
        (
            "undeclared",
            "Downcasters for 'shop.gone' (from versions [2]) name a task that is not "
            "declared; declare it with @huey.versioned_task(version=N, name='shop.gone') "
            "or remove them.",
        ),
    ],
)
def test_the_downcaster_chain_is_checked_like_the_upcasters(declare: str, message: str) -> None:
    """Gaps, steps past the current version and steps of unknown tasks are schema errors."""
    app = VersionedMemoryHuey("rolling-chain")

    @app.versioned_task(version=4, name="shop.ship")
    def ship(order_id: int) -> None: ...

    def step(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    if declare == "gap":
        app.downcaster("shop.ship", from_version=4)(step)
        app.downcaster("shop.ship", from_version=2)(step)
    elif declare == "above":
        app.downcaster("shop.ship", from_version=5)(step)
    else:
        app.downcaster("shop.gone", from_version=2)(step)

    with pytest.raises(SchemaError, match=re.escape(message)):
        app.check_schemas()
    with pytest.raises(SchemaError, match=re.escape(message)):
        app.create_consumer()


def test_a_downcaster_declaration_is_checked_at_once() -> None:
    """from_version below 2, not an integer, or twice for one step: refused when declared."""
    app = VersionedMemoryHuey("rolling-declare")

    def step(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    with pytest.raises(SchemaError, match=re.escape("from_version must be 2 or more")):
        app.downcaster(TASK, from_version=1)(step)
    with pytest.raises(SchemaError, match=re.escape("from_version must be an integer")):
        app.downcaster(TASK, from_version=True)(step)
    app.downcaster(TASK, from_version=3)(step)
    with pytest.raises(SchemaError, match=re.escape("has two downcasters from version 3 to 2")):
        app.downcaster(TASK, from_version=3)(step)


@pytest.mark.parametrize(
    ("pins", "downcaster", "message"),
    [
        (
            {TASK: 2},
            False,
            "emit_versions pins 'shop.charge' to version 2, but it has no downcaster from "
            "version 3 to 2; register one with @huey.downcaster('shop.charge', "
            "from_version=3).",
        ),
        (
            {TASK: 4},
            True,
            "emit_versions pins 'shop.charge' to version 4, above its current version 3; "
            "a producer cannot write a version it does not know. Pin 3 or lower.",
        ),
        (
            {TASK: 1},
            True,
            "emit_versions pins 'shop.charge' to version 1, but it has no upcaster from "
            "version 1 to 2, so this app's own workers could not read what it writes; "
            "register one with @huey.upcaster('shop.charge', from_version=1).",
        ),
    ],
)
def test_a_pin_the_chains_cannot_reach_fails_the_check_and_the_enqueue(
    pins: dict[str, int], downcaster: bool, message: str
) -> None:
    """A pinned version needs downcasters from today's version down to it and upcasters
    back; without them check_schemas() and the enqueue raise SchemaError."""
    app = VersionedMemoryHuey("rolling-pins", emit_versions=pins)
    charge = declare_v3(app, downcaster=downcaster)
    if 1 in pins.values():
        app.downcaster(TASK, from_version=2)(lambda payload: payload)

    with pytest.raises(SchemaError, match=re.escape(message)):
        app.check_schemas()
    with pytest.raises(SchemaError, match=re.escape(message)):
        charge(1, 100)


def test_a_pin_for_an_undeclared_task_fails_the_check() -> None:
    """A typo in emit_versions is caught when the schemas are checked."""
    app = VersionedMemoryHuey("rolling-typo", emit_versions={"shop.chrage": 2})
    declare_v3(app)
    with pytest.raises(
        SchemaError,
        match=re.escape(
            "emit_versions pins 'shop.chrage' to version 2, but no task of that name is declared"
        ),
    ):
        app.check_schemas()


# -- the environment variable -------------------------------------------------------------


def test_the_environment_variable_pins_tasks(
    make_huey: MakeHuey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``VERSIONED_TASKS_EMIT_VERSIONS="task=2,other=1"`` pins like the option does."""
    monkeypatch.setenv(ENV, f" {TASK} = 2 , shop.audit=1 ,")
    producer = make_huey()
    charge = declare_v3(producer)

    @producer.versioned_task(version=1, name="shop.audit")
    def audit(order_id: int) -> None: ...

    producer.check_schemas()
    charge(3, 500)
    audit(3)

    assert [(header_of(r)["v"], body_of(r)) for r in queued(producer)] == [
        (2, {"order_id": 3, "amount": 5}),
        (1, {"order_id": 3}),
    ]
    assert producer.emit_versions == {TASK: 2, "shop.audit": 1}


def test_an_explicit_emit_versions_wins_over_the_environment(
    make_huey: MakeHuey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``emit_versions={}`` turns pinning off whatever the environment says."""
    monkeypatch.setenv(ENV, f"{TASK}=2")
    producer = make_huey(emit_versions={})
    charge = declare_v3(producer)
    charge(3, 500)
    [raw] = queued(producer)
    assert header_of(raw)["v"] == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shop.charge", "'shop.charge' is not 'task=version'"),
        ("shop.charge=two", "'shop.charge=two' is not 'task=version'"),
        ("=2", "'=2' is not 'task=version'"),
        ("shop.charge=0", "the version of 'shop.charge' must be an integer of 1 or more"),
        ("a=1,a=2", "names 'a' twice"),
    ],
)
def test_a_malformed_environment_variable_is_a_configuration_error(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error names the variable and the item."""
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ConfigurationError, match=re.escape(f"{ENV}")) as caught:
        VersionedMemoryHuey("rolling-env")
    assert message in str(caught.value)


def test_auto_from_the_environment_without_live_workers_writes_todays_version(
    make_huey: MakeHuey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` with no worker publishing a heartbeat writes today's version."""
    monkeypatch.setenv(ENV, "auto")
    producer = make_huey()
    charge = declare_v3(producer)
    charge(3, 500)
    assert producer.emit_versions == "auto"
    [raw] = queued(producer)
    assert header_of(raw)["v"] == 3


# -- "auto": what the live workers read ------------------------------------------------------


@pytest.fixture
def redis_queue(queue_name: str) -> Iterator[str]:
    require_redis()
    yield queue_name
    import redis

    with redis.Redis.from_url(REDIS_URL) as conn:
        for key in conn.scan_iter(match=f"*{queue_name}*"):
            conn.delete(key)


def test_auto_writes_the_version_every_live_worker_reads(redis_queue: str) -> None:
    """With an old worker publishing its heartbeat, an ``auto`` producer writes version 2
    through the downcaster, and the old worker runs it without deferring; once no live
    worker lists the task, a producer writes today's version."""
    old = VersionedRedisHuey(redis_queue, url=REDIS_URL, blocking=False)
    ran: list[tuple[int, int]] = []
    done = threading.Event()

    @old.versioned_task(version=2, name=TASK)
    def charge_v2(order_id: int, amount: int) -> None:
        ran.append((order_id, amount))
        done.set()

    producer = VersionedRedisHuey(redis_queue, url=REDIS_URL, emit_versions="auto")
    charge = declare_v3(producer)

    with running_consumer(old, workers=1):
        wait_for(lambda: len(producer.fleet()) == 1)
        charge(7, 1200)
        assert done.wait(10)

    assert ran == [(7, 12)]
    assert old.deferral_counts() == {}
    assert len(old.dead_letters) == 0

    later = VersionedRedisHuey(redis_queue, url=REDIS_URL, emit_versions="auto")
    charge_later = declare_v3(later)
    charge_later(8, 1200)
    [raw] = queued(later)
    assert header_of(raw)["v"] == 3


def test_auto_never_writes_above_todays_version_nor_where_the_chain_stops(
    redis_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker newer than the producer changes nothing; a worker older than the
    downcasters reach gets today's version (which it defers) and a warning."""
    newer = VersionedRedisHuey(redis_queue, url=REDIS_URL, blocking=False)

    @newer.versioned_task(version=4, name=TASK)
    def charge_v4(order_id: int) -> None: ...

    @newer.versioned_task(version=1, name="shop.refund")
    def refund_v1(order_id: int) -> None: ...

    producer = VersionedRedisHuey(redis_queue, url=REDIS_URL, emit_versions="auto")
    charge = declare_v3(producer)

    @producer.versioned_task(version=3, name="shop.refund")
    def refund(order_id: int, reason: str) -> None: ...

    @producer.upcaster("shop.refund", from_version=2)
    def add_reason(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "reason": ""}

    @producer.downcaster("shop.refund", from_version=3)
    def drop_reason(payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"]}

    with (
        caplog.at_level(logging.WARNING, logger="versioned_tasks"),
        running_consumer(newer, workers=1),
    ):
        wait_for(lambda: len(producer.fleet()) == 1)
        # Written, not enqueued: the running consumer must not take them.
        data = [
            producer.serialize_task(charge.s(1, 100)),
            producer.serialize_task(refund.s(1, "late")),
        ]

    assert [(header_of(r)["task"], header_of(r)["v"]) for r in data] == [
        (TASK, 3),
        ("shop.refund", 3),
    ]
    warned = [r.getMessage() for r in caplog.records if "emit_versions='auto'" in r.getMessage()]
    assert len(warned) == 1
    assert "reads task 'shop.refund' only up to version 1" in warned[0]
