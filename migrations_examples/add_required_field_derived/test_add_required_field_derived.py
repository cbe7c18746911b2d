"""The add_required_field_derived migration, played as two releases sharing one queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huey.storage import MemoryStorage

from versioned_tasks.testing import assert_upcasts, check_corpus

from . import after, before

PAYLOADS = Path(__file__).parent / "payloads"


@pytest.fixture(autouse=True)
def shared_queue() -> Iterator[None]:
    """Both releases on one fresh queue, as they would share one SQLite or Redis queue."""
    before.huey.storage = MemoryStorage(before.huey.name)
    after.huey.storage = before.huey.storage
    yield
    before.huey.storage.flush_all()


def test_schemas_of_the_new_code_check() -> None:
    """The upcaster chain of the new code is complete."""
    after.huey.check_schemas()


def test_version_1_message_is_charged_quantity_times_unit_price() -> None:
    """A charge enqueued by the old code runs on the new code with the derived total."""
    before.charge_order(42, quantity=3, unit_price_cents=1250)

    task = after.huey.dequeue()

    assert task is not None
    assert task.kwargs == {
        "order_id": 42,
        "quantity": 3,
        "unit_price_cents": 1250,
        "total_cents": 3750,
    }
    assert after.huey.execute(task) == "charged 3750 cents for order 42"


def test_upcaster_derives_the_total_from_quantity_and_unit_price() -> None:
    """The upcaster fills in the one total a version-1 message could have meant."""
    assert_upcasts(
        after.huey,
        "billing.charge_order",
        {"order_id": 42, "quantity": 3, "unit_price_cents": 1250},
        from_version=1,
        expected={"order_id": 42, "quantity": 3, "unit_price_cents": 1250, "total_cents": 3750},
    )


def test_every_stored_version_1_payload_upcasts_and_validates() -> None:
    """The payload corpus of this example runs through today's chain and model."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_version_2_message_waits_on_an_old_worker() -> None:
    """During a rolling deploy, an old worker defers a discounted charge, not recomputes it."""
    after.charge_order(43, quantity=3, unit_price_cents=1250, total_cents=3000)

    assert before.huey.dequeue() is None
    assert before.huey.scheduled_count() == 1
    assert len(before.huey.dead_letters) == 0
