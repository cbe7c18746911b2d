"""The worker's read path: dequeue, read_schedule, the listings, renames,
tombstone handlers, upcast chains, retries and pipelines.

Tasks run through ``huey.dequeue()`` and ``huey.execute()`` on Memory, SQLite
and Redis; two apps made in one test share one queue.
"""

import datetime
import pickle
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import queued
from huey.exceptions import TaskException
from huey.registry import Message

from versioned_tasks import RetiredMessage, VersionedHuey

MakeHuey = Callable[..., VersionedHuey]

PAST = datetime.datetime(2000, 1, 1)
FUTURE = datetime.datetime(2100, 1, 1)


def header_and_body(raw: bytes) -> tuple[dict[str, Any], Any]:
    """Split an envelope (``VTE1`` + header JSON + newline + body JSON)."""
    assert raw[:4] == b"VTE1"
    header, _, body = raw[4:].partition(b"\n")
    return orjson.loads(header), orjson.loads(body)


def pickled_message(name: str) -> bytes:
    return pickle.dumps(Message(uuid.uuid4().hex, name, args=(1,), kwargs={}))


def declare_refund_v1(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id * 2

    return refund


def declare_gone(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="shop.gone")
    def gone(order_id: int) -> None:
        return None

    return gone


def push_bad_messages(make_huey: MakeHuey) -> int:
    """Junk, a pickle and a message of a task nobody declares any more, in a row."""
    old = make_huey()
    old.storage.enqueue(b"!junk")
    old.storage.enqueue(pickled_message("billing.refund"))
    declare_gone(old)(1)
    old.storage.enqueue(b"VTE1{not json\n{}")
    return 4


# -- dequeue --------------------------------------------------------------------


def test_dequeue_skips_several_bad_messages_in_a_row_and_returns_the_next_good_task(
    make_huey: MakeHuey,
) -> None:
    bad = push_bad_messages(make_huey)
    app = make_huey()
    refund = declare_refund_v1(app)
    result = refund(21)

    task = app.dequeue()

    assert task is not None
    assert task.id == result.id
    assert len(app.dead_letters) == bad
    assert app.pending_count() == 0
    app.execute(task)
    assert result.get() == 42


def test_dequeue_of_only_bad_messages_returns_none_and_dead_letters_them_all(
    make_huey: MakeHuey,
) -> None:
    bad = push_bad_messages(make_huey)
    app = make_huey()
    assert app.dequeue() is None
    assert sorted(entry.reason for entry in app.dead_letters) == sorted(
        ["undecodable", "undecodable", "unknown_task", "undecodable"]
    )
    assert len(app.dead_letters) == bad
    assert app.dequeue() is None


# -- read_schedule ----------------------------------------------------------------


def test_read_schedule_dead_letters_bad_items_and_returns_the_good_ones(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_gone(old).schedule(args=(1,), delay=60)
    gone_raw = old.storage.dequeue()
    app = make_huey()
    refund = declare_refund_v1(app)
    result = refund.schedule(args=(21,), delay=60)
    good_raw = app.storage.dequeue()
    for raw in (b"!junk", gone_raw, good_raw, pickled_message("billing.refund")):
        app.storage.add_to_schedule(raw, PAST)

    tasks = app.read_schedule()

    assert [task.id for task in tasks] == [result.id]
    assert app.scheduled_count() == 0
    assert sorted(entry.reason for entry in app.dead_letters) == [
        "undecodable",
        "undecodable",
        "unknown_task",
    ]
    assert {bytes(entry.raw) for entry in app.dead_letters} >= {b"!junk", bytes(gone_raw)}
    app.execute(tasks[0], FUTURE)
    assert result.get() == 42


def test_read_schedule_leaves_items_that_are_not_due(make_huey: MakeHuey) -> None:
    app = make_huey()
    app.storage.add_to_schedule(b"!junk", FUTURE)
    assert app.read_schedule() == []
    assert app.scheduled_count() == 1
    assert len(app.dead_letters) == 0


# -- listings -----------------------------------------------------------------------


def test_pending_and_scheduled_skip_bad_messages_and_change_nothing(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()
    refund = declare_refund_v1(app)
    scheduled_result = refund.schedule(args=(2,), delay=60)
    app.storage.add_to_schedule(app.storage.dequeue(), FUTURE)
    bad = push_bad_messages(make_huey)
    queued_result = refund(1)
    app.storage.add_to_schedule(b"!junk", FUTURE)
    app.storage.add_to_schedule(pickled_message("billing.refund"), FUTURE)
    queue_before, schedule_before = queued(app), app.storage.scheduled_items()

    assert [task.id for task in app.pending()] == [queued_result.id]
    assert [task.id for task in app.scheduled()] == [scheduled_result.id]

    assert app.pending_count() == bad + 1
    assert app.scheduled_count() == 3
    assert queued(app) == queue_before
    assert app.storage.scheduled_items() == schedule_before
    assert len(app.dead_letters) == 0


# -- renames ------------------------------------------------------------------------


def test_a_message_under_the_old_name_runs_as_the_renamed_task(make_huey: MakeHuey) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="billing.send_bill")
    def send_bill(invoice_id: int) -> None:
        raise AssertionError("the old code never runs")

    result = send_bill(7)
    new = make_huey()

    @new.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> str:
        return f"invoice {invoice_id}"

    new.rename("billing.send_bill", "billing.send_invoice")

    task = new.dequeue()
    assert isinstance(task, send_invoice.task_class)
    new.execute(task)
    assert result.get() == "invoice 7"


def test_a_renamed_message_keeps_its_version_and_is_upcast_from_there(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()

    @old.versioned_task(version=2, name="billing.send_bill")
    def send_bill(invoice_id: int, currency: str) -> None:
        raise AssertionError("the old code never runs")

    result = send_bill(7, "USD")
    new = make_huey()

    @new.versioned_task(version=3, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str, copies: int) -> str:
        return f"{invoice_id} {currency} x{copies}"

    # The chain starts at 2: a message read as version 1 could not be upcast.
    @new.upcaster("billing.send_invoice", from_version=2)
    def add_copies(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "copies": 1}

    new.rename("billing.send_bill", "billing.send_invoice")

    new.execute(new.dequeue())

    assert result.get() == "7 USD x1"
    assert len(new.dead_letters) == 0


# -- tombstones with a handler ------------------------------------------------------


def declare_legacy_export(app: VersionedHuey) -> Any:
    @app.versioned_task(version=2, name="reports.legacy_export")
    def legacy_export(report_id: int, fmt: str = "csv") -> None:
        raise AssertionError("retired code never runs")

    return legacy_export


def test_a_tombstone_handler_receives_the_wire_payload_once_per_message(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    legacy_export = declare_legacy_export(old)
    first = legacy_export(5)
    second = legacy_export(6, fmt="pdf")
    new = make_huey()
    seen: list[RetiredMessage] = []

    @new.tombstone("reports.legacy_export")
    def retired(message: RetiredMessage) -> None:
        seen.append(message)

    assert new.dequeue() is None
    assert new.dequeue() is None

    assert seen == [
        RetiredMessage("reports.legacy_export", 2, {"report_id": 5, "fmt": "csv"}, first.id),
        RetiredMessage("reports.legacy_export", 2, {"report_id": 6, "fmt": "pdf"}, second.id),
    ]
    assert (seen[0].task, seen[0].version, seen[0].id) == ("reports.legacy_export", 2, first.id)
    assert seen[0].payload == {"report_id": 5, "fmt": "csv"}
    assert len(new.dead_letters) == 0
    assert new.pending_count() == 0


def test_a_tombstone_handler_runs_before_any_later_task_code(make_huey: MakeHuey) -> None:
    events: list[str] = []
    old = make_huey()
    declare_legacy_export(old)(5)
    new = make_huey()

    @new.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> None:
        events.append(f"refund {order_id}")

    refund(1)

    @new.tombstone("reports.legacy_export")
    def retired(message: RetiredMessage) -> None:
        events.append(f"retired {message.payload['report_id']}")

    task = new.dequeue()
    events.append("dequeued")
    new.execute(task)

    assert events == ["retired 5", "dequeued", "refund 1"]


def test_a_tombstone_handler_that_raises_dead_letters_the_message_as_retired(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_legacy_export(old)(5)
    [raw] = queued(old)
    new = make_huey()

    @new.tombstone("reports.legacy_export")
    def retired(message: RetiredMessage) -> None:
        raise RuntimeError("archive offline")

    assert new.dequeue() is None

    [entry] = new.dead_letters
    assert (entry.reason, entry.task, entry.version, entry.raw) == (
        "retired",
        "reports.legacy_export",
        2,
        raw,
    )
    assert "RuntimeError: archive offline" in entry.error


def test_the_scheduler_hands_retired_messages_to_the_worker_for_the_handler(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()
    declare_legacy_export(old).schedule(args=(5,), delay=60)
    raw = old.storage.dequeue()
    new = make_huey()
    seen: list[RetiredMessage] = []
    new.tombstone("reports.legacy_export", seen.append)
    new.storage.add_to_schedule(raw, PAST)

    assert new.read_schedule() == []
    assert seen == []
    assert queued(new) == [bytes(raw)]

    assert new.dequeue() is None
    assert [message.payload for message in seen] == [{"report_id": 5, "fmt": "csv"}]


# -- upcast chains --------------------------------------------------------------------


def declare_chain_v3(app: VersionedHuey, steps: list[int]) -> Any:
    @app.versioned_task(version=3, name="shop.ship")
    def ship(order_id: int, carrier: str, express: bool) -> str:
        return f"{order_id} via {carrier} express={express}"

    @app.upcaster("shop.ship", from_version=1)
    def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append(1)
        assert set(payload) == {"order_id"}
        return {**payload, "carrier": "post"}

    @app.upcaster("shop.ship", from_version=2)
    def add_express(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append(2)
        assert set(payload) == {"order_id", "carrier"}
        return {**payload, "express": payload["carrier"] != "post"}

    return ship


def test_a_v1_message_is_upcast_step_by_step_to_v3(make_huey: MakeHuey) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int) -> None:
        raise AssertionError("the old code never runs")

    result = ship(7)
    new = make_huey()
    steps: list[int] = []
    declare_chain_v3(new, steps)

    new.execute(new.dequeue())

    assert steps == [1, 2]
    assert result.get() == "7 via post express=False"


def test_a_v2_message_runs_only_the_remaining_upcast_step(make_huey: MakeHuey) -> None:
    old = make_huey()

    @old.versioned_task(version=2, name="shop.ship")
    def ship(order_id: int, carrier: str) -> None:
        raise AssertionError("the old code never runs")

    result = ship(7, "courier")
    new = make_huey()
    steps: list[int] = []
    declare_chain_v3(new, steps)

    new.execute(new.dequeue())

    assert steps == [2]
    assert result.get() == "7 via courier express=True"


# -- retries --------------------------------------------------------------------------


def test_a_failing_task_with_retries_runs_three_times_keeping_its_version_and_shape(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="billing.charge", retries=2)
    def charge_v1(order_id: int) -> None:
        raise AssertionError("the old code never runs")

    result = charge_v1(7)
    new = make_huey()
    calls: list[dict[str, Any]] = []

    @new.versioned_task(version=2, name="billing.charge", retries=2)
    def charge(order_id: int, amount: int) -> None:
        calls.append({"order_id": order_id, "amount": amount})
        raise RuntimeError("card declined")

    @new.upcaster("billing.charge", from_version=1)
    def add_amount(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "amount": 5}

    retries_seen = []
    while (task := new.dequeue()) is not None:
        retries_seen.append(task.retries)
        new.execute(task)
        for raw in queued(new):
            header, body = header_and_body(raw)
            assert (header["task"], header["v"]) == ("billing.charge", 2)
            assert body == {"order_id": 7, "amount": 5}

    assert retries_seen == [2, 1, 0]
    assert calls == [{"order_id": 7, "amount": 5}] * 3
    assert len(new.dead_letters) == 0
    with pytest.raises(TaskException, match="card declined"):
        result.get()


def test_a_retry_with_retry_delay_goes_to_the_schedule_and_runs_from_there(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()
    calls: list[int] = []

    @app.versioned_task(version=2, name="billing.charge", retries=1, retry_delay=60)
    def charge(order_id: int) -> None:
        calls.append(order_id)
        raise RuntimeError("card declined")

    charge(7)
    app.execute(app.dequeue())

    assert app.pending_count() == 0
    assert app.scheduled_count() == 1
    [raw] = [bytes(item) for item in app.storage.scheduled_items()]
    header, body = header_and_body(raw)
    assert (header["task"], header["v"], body) == ("billing.charge", 2, {"order_id": 7})

    [task] = app.read_schedule(FUTURE)
    assert task.retries == 0
    app.execute(task, FUTURE)

    assert calls == [7, 7]
    assert app.pending_count() == 0
    assert app.scheduled_count() == 0
    assert len(app.dead_letters) == 0


# -- pipelines ------------------------------------------------------------------------


def test_a_pipeline_of_versioned_tasks_passes_the_result_on(make_huey: MakeHuey) -> None:
    app = make_huey()

    @app.versioned_task(version=1, name="math.add_one")
    def add_one(x: int) -> int:
        return x + 1

    @app.versioned_task(version=2, name="math.times_ten")
    def times_ten(y: int) -> int:
        return y * 10

    results = app.enqueue(add_one.s(1).then(times_ten))
    app.execute(app.dequeue())
    app.execute(app.dequeue())

    assert app.dequeue() is None
    assert results.get() == [2, 20]


def test_a_pipeline_step_invalid_at_run_time_is_dead_lettered_not_lost_or_raised(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()

    @app.versioned_task(version=1, name="text.shout")
    def shout(word: str) -> str:
        return word.upper() + "!"

    @app.versioned_task(version=2, name="math.times_ten")
    def times_ten(y: int) -> int:
        return y * 10

    results = app.enqueue(shout.s("abc").then(times_ten))

    assert app.execute(app.dequeue()) == "ABC!"

    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("invalid_payload", "math.times_ten", 2)
    assert re.search(r"\by\b", entry.error)
    assert results.get() == ["ABC!", None]

    fixed = make_huey()

    @fixed.versioned_task(version=2, name="math.times_ten")
    def times_ten_fixed(y: str) -> str:
        return y * 2

    replayed = fixed.dead_letters.replay(entry.id)
    fixed.execute(fixed.dequeue())
    assert replayed.get() == "ABC!ABC!"
