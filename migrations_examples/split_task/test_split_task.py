"""The split_task migration, played as two releases sharing one queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from huey.storage import MemoryStorage

from versioned_tasks import VersionedMemoryHuey
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


def drain() -> list[str]:
    """What the new worker does with the queue: the results of every task it runs."""
    results = []
    while (task := after.huey.dequeue()) is not None:
        results.append(after.huey.execute(task))
    return results


def test_schemas_of_the_new_code_check() -> None:
    """The tombstone names a task that is no longer declared."""
    after.huey.check_schemas()


def test_queued_fulfil_becomes_a_shipment_and_a_confirmation() -> None:
    """The handler forwards an old message to both new tasks, which then run."""
    before.fulfil(30501, "ada@example.com")

    assert drain() == [
        "order 30501 shipped",
        "confirmation of order 30501 sent to ada@example.com",
    ]
    assert len(after.huey.dead_letters) == 0


def test_every_stored_payload_is_forwarded_to_both_new_tasks() -> None:
    """check_corpus passes a retired task's cases without running its handler: run it here."""
    assert check_corpus(after.huey, PAYLOADS) == 2

    for case in sorted(PAYLOADS.glob("orders.fulfil/v1/*.json")):
        payload = json.loads(case.read_text(encoding="utf-8"))
        before.fulfil(**payload)
        order_id, email = payload["order_id"], payload["email"]
        assert drain() == [
            f"order {order_id} shipped",
            f"confirmation of order {order_id} sent to {email}",
        ], case.name


def test_assert_upcasts_says_where_a_retired_tasks_payload_goes() -> None:
    """A retired task has no current payload: the helper says its messages go to the handler."""
    with pytest.raises(AssertionError, match="goes to the tombstone handler"):
        assert_upcasts(
            after.huey,
            "orders.fulfil",
            {"order_id": 30501, "email": "ada@example.com"},
            from_version=1,
        )


def test_a_new_task_on_an_old_worker_is_dead_lettered_until_replayed() -> None:
    """During a rolling deploy, an old worker does not know orders.ship: the message waits
    in the dead-letter store, and a replay on the new code runs it."""
    after.ship(30504)

    assert before.huey.dequeue() is None
    (entry,) = before.huey.dead_letters
    assert (entry.reason, entry.task) == ("unknown_task", "orders.ship")

    after.huey.dead_letters.replay(entry.id)
    assert drain() == ["order 30504 shipped"]


def test_a_payload_the_new_tasks_refuse_is_dead_lettered_and_nothing_is_forwarded() -> None:
    """The handler raises on an order id the new tasks refuse: neither task is enqueued,
    and the old message is kept as a dead letter."""
    legacy = VersionedMemoryHuey("orders")
    legacy.storage = before.huey.storage

    @legacy.versioned_task(version=1, name="orders.fulfil")
    def fulfil(order_id: str, email: str) -> None: ...

    fulfil("A-30505", "ada@example.com")

    assert drain() == []
    (entry,) = after.huey.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("retired", "orders.fulfil", 1)
    assert "InvalidArguments" in entry.error
