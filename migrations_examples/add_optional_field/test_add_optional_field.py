"""The add_optional_field migration, played as two releases sharing one queue."""

from __future__ import annotations

import datetime
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


def test_schemas_of_the_new_code_check() -> None:
    """The upcaster chain of the new code is complete."""
    after.huey.check_schemas()


def test_version_1_message_runs_on_the_new_code_with_the_default_locale() -> None:
    """A message enqueued by the old code is upcast to version 2 and runs."""
    result = before.send_receipt(7, "ada@example.com")

    task = after.huey.dequeue()

    assert task is not None
    assert task.kwargs == {"order_id": 7, "email": "ada@example.com", "locale": "en"}
    assert after.huey.execute(task) == "[en] receipt for order 7 to ada@example.com"
    assert result() == "[en] receipt for order 7 to ada@example.com"
    assert len(after.huey.dead_letters) == 0


def test_upcaster_fills_in_the_english_locale() -> None:
    """A version-1 payload upcasts to version 2 with locale "en"."""
    assert_upcasts(
        after.huey,
        "orders.send_receipt",
        {"order_id": 7, "email": "ada@example.com"},
        from_version=1,
        expected={"order_id": 7, "email": "ada@example.com", "locale": "en"},
    )


def test_every_stored_version_1_payload_upcasts_and_validates() -> None:
    """The payload corpus of this example runs through today's chain and model."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_version_2_message_waits_on_an_old_worker_until_the_new_code_reads_it() -> None:
    """During a rolling deploy, an old worker defers a version-2 message instead of failing it."""
    after.send_receipt(8, "grace@example.com", locale="fr")

    assert before.huey.dequeue() is None
    assert before.huey.scheduled_count() == 1
    assert len(before.huey.dead_letters) == 0

    later = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    later += datetime.timedelta(seconds=after.huey.newer_version_delay + 1)
    (task,) = after.huey.read_schedule(later)
    assert after.huey.execute(task) == "[fr] receipt for order 8 to grace@example.com"


def test_without_a_new_version_an_old_worker_would_dead_letter_the_new_field() -> None:
    """Why the version changes: an unknown field is refused as invalid_payload, not deferred."""
    unversioned = VersionedMemoryHuey("orders")
    unversioned.storage = before.huey.storage

    @unversioned.versioned_task(version=1, name="orders.send_receipt")
    def send_receipt(order_id: int, email: str, locale: str = "en") -> str:
        return f"[{locale}] receipt for order {order_id} to {email}"

    send_receipt(9, "alan@example.com", locale="de")

    assert before.huey.dequeue() is None
    (entry,) = before.huey.dead_letters
    assert entry.reason == "invalid_payload"
    assert "locale: Extra inputs are not permitted" in entry.error
