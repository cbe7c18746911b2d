"""A real Huey consumer (thread workers) on Memory, SQLite and Redis: bad messages
are dead-lettered without stalling the workers, good ones run exactly once.
"""

import pickle
import re
import time
import uuid
from typing import Any

import pytest
from helpers import CONSUMER_OPTIONS, MakeHuey, Recorder, running_consumer, wait_for
from huey.registry import Message

from versioned_tasks import RetiredMessage, SchemaError


def test_a_mixed_queue_is_drained_good_messages_run_once_and_bad_ones_are_dead_lettered(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="shop.ship")
    def ship_v1(order_id: int) -> None: ...

    @old.versioned_task(version=1, name="billing.send_bill")
    def send_bill(invoice_id: int) -> None: ...

    @old.versioned_task(version=1, name="reports.legacy_export")
    def legacy_export(report_id: int) -> None: ...

    @old.versioned_task(version=1, name="shop.gone")
    def gone(order_id: int) -> None: ...

    for order_id in (1, 2, 3):
        ship_v1(order_id)
    old.storage.enqueue(b"\x00corrupt bytes")
    send_bill(10)
    old.storage.enqueue(pickle.dumps(Message(uuid.uuid4().hex, "shop.ship", args=(4,))))
    legacy_export(20)
    gone(30)
    send_bill(11)

    new = make_huey()
    ran = Recorder()

    @new.versioned_task(version=2, name="shop.ship")
    def ship(order_id: int, carrier: str) -> None:
        ran("ship", order_id, carrier)

    @new.upcaster("shop.ship", from_version=1)
    def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "carrier": "post"}

    @new.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> None:
        ran("send_invoice", invoice_id)

    new.rename("billing.send_bill", "billing.send_invoice")
    new.tombstone("reports.legacy_export")

    with running_consumer(new):
        wait_for(lambda: len(ran) == 5 and len(new.dead_letters) == 4)
        time.sleep(0.2)  # anything run twice would show up by now

    assert sorted(ran.calls) == [
        ("send_invoice", 10),
        ("send_invoice", 11),
        ("ship", 1, "post"),
        ("ship", 2, "post"),
        ("ship", 3, "post"),
    ]
    assert sorted((e.reason, e.task) for e in new.dead_letters) == [
        ("retired", "reports.legacy_export"),
        ("undecodable", None),
        ("undecodable", None),
        ("unknown_task", "shop.gone"),
    ]
    assert new.pending_count() == 0
    assert new.scheduled_count() == 0


def test_a_tombstone_handler_runs_once_per_message_in_the_consumer(make_huey: MakeHuey) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="reports.legacy_export")
    def legacy_export(report_id: int) -> None: ...

    ids = {legacy_export(report_id).id for report_id in range(5)}
    new = make_huey()
    seen = Recorder()

    @new.tombstone("reports.legacy_export")
    def retired(message: RetiredMessage) -> None:
        seen(message.id, message.payload["report_id"])

    with running_consumer(new):
        wait_for(lambda: len(seen) == 5)
        time.sleep(0.2)

    assert {call[0] for call in seen.calls} == ids
    assert sorted(call[1] for call in seen.calls) == [0, 1, 2, 3, 4]
    assert len(new.dead_letters) == 0
    assert new.pending_count() == 0


def test_poison_messages_do_not_make_the_worker_back_off(make_huey: MakeHuey) -> None:
    app = make_huey()

    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id * 2

    for n in range(20):
        app.storage.enqueue(b"\x00junk %d" % n)
    result = refund(21)

    started = time.monotonic()
    with running_consumer(app, workers=1, initial_delay=0.1, max_delay=5):
        wait_for(lambda: result.get(preserve=True) is not None, timeout=5)
        elapsed = time.monotonic() - started

    assert result.get() == 42
    assert elapsed < 1.0
    assert len(app.dead_letters) == 20


def test_create_consumer_raises_schema_error_for_a_broken_upcaster_chain(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()

    @app.versioned_task(version=3, name="billing.refund")
    def refund(order_id: int, reason: str, amount: int) -> None: ...

    @app.upcaster("billing.refund", from_version=1)
    def add_reason(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "reason": "legacy"}

    with pytest.raises(
        SchemaError,
        match=re.escape(
            "Task 'billing.refund' has no upcaster from version 2 to 3 (the chain must "
            "reach the current version 3); register one with "
            "@huey.upcaster('billing.refund', from_version=2)."
        ),
    ) as info:
        app.create_consumer(**CONSUMER_OPTIONS)
    assert info.value.task == "billing.refund"


def test_a_message_scheduled_with_a_delay_runs_after_its_eta_via_the_scheduler(
    make_huey: MakeHuey,
) -> None:
    old = make_huey()

    @old.versioned_task(version=1, name="shop.ship")
    def ship_v1(order_id: int) -> None: ...

    new = make_huey()
    ran_at: list[float] = []

    @new.versioned_task(version=2, name="shop.ship")
    def ship(order_id: int, carrier: str) -> str:
        ran_at.append(time.time())
        return f"{order_id} via {carrier}"

    @new.upcaster("shop.ship", from_version=1)
    def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "carrier": "post"}

    enqueued_at = time.time()
    result = ship_v1.schedule(args=(7,), delay=1)

    with running_consumer(new):
        wait_for(lambda: result.get(preserve=True) is not None, timeout=6)

    assert result.get() == "7 via post"
    assert len(ran_at) == 1
    assert ran_at[0] >= enqueued_at + 0.99
    assert len(new.dead_letters) == 0
    assert new.scheduled_count() == 0
