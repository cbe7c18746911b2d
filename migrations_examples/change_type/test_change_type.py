"""The change_type migration, played as two releases sharing one queue."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
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


def test_version_1_message_runs_with_an_exact_decimal_amount() -> None:
    """Cents enqueued by the old code reach the new code as a Decimal, not a float."""
    before.refund(20711, 1999)

    task = after.huey.dequeue()

    assert task is not None
    assert task.kwargs == {"order_id": 20711, "amount": Decimal("19.99"), "currency": "EUR"}
    assert type(task.kwargs["amount"]) is Decimal
    assert after.huey.execute(task) == "refunded 19.99 EUR on order 20711"


@pytest.mark.parametrize(
    ("cents", "amount"),
    [(1999, "19.99"), (5, "0.05"), (120000, "1200.00"), (10, "0.10")],
)
def test_upcaster_writes_the_amount_as_a_decimal_string(cents: int, amount: str) -> None:
    """The upcast payload is in JSON form: the Decimal is a string with two places."""
    assert_upcasts(
        after.huey,
        "billing.refund",
        {"order_id": 20711, "amount_cents": cents, "currency": "EUR"},
        from_version=1,
        expected={"order_id": 20711, "amount": amount, "currency": "EUR"},
    )


def test_every_stored_version_1_payload_upcasts_and_validates() -> None:
    """The payload corpus of this example runs through today's chain and model."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_a_zero_refund_the_old_code_allowed_is_dead_lettered() -> None:
    """Version 2 refuses a zero amount: that old message is kept as invalid_payload, not run."""
    before.refund(20713, 0)

    assert after.huey.dequeue() is None

    (entry,) = after.huey.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("invalid_payload", "billing.refund", 1)
    assert "amount: Input should be greater than 0" in entry.error
