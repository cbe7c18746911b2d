"""The rename_field migration, played as two releases sharing one queue."""

from __future__ import annotations

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


def test_version_1_message_runs_with_the_field_under_its_new_name() -> None:
    """A message enqueued by the old code reaches the new parameter."""
    before.send_password_reset(1815, "ada@example.com")

    task = after.huey.dequeue()

    assert task is not None
    assert task.kwargs == {"user_id": 1815, "recipient_email": "ada@example.com"}
    assert after.huey.execute(task) == "reset link for user 1815 sent to ada@example.com"


def test_upcaster_moves_the_value_and_leaves_no_old_field() -> None:
    """The old name is gone from the upcast payload: today's model refuses unknown fields."""
    assert_upcasts(
        after.huey,
        "accounts.send_password_reset",
        {"user_id": 1815, "email": "ada@example.com"},
        from_version=1,
        expected={"user_id": 1815, "recipient_email": "ada@example.com"},
    )


def test_every_stored_version_1_payload_upcasts_and_validates() -> None:
    """The payload corpus of this example runs through today's chain and model."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_version_2_message_waits_on_an_old_worker() -> None:
    """During a rolling deploy, an old worker defers the renamed field instead of refusing it."""
    after.send_password_reset(1906, recipient_email="grace@example.com")

    assert before.huey.dequeue() is None
    assert before.huey.scheduled_count() == 1
    assert len(before.huey.dead_letters) == 0


def test_renamed_without_a_new_version_the_queued_messages_are_dead_lettered() -> None:
    """Why the version changes: an unversioned rename makes every queued message invalid."""
    unversioned = VersionedMemoryHuey("accounts")
    unversioned.storage = before.huey.storage

    @unversioned.versioned_task(version=1, name="accounts.send_password_reset")
    def send_password_reset(user_id: int, recipient_email: str) -> None: ...

    before.send_password_reset(1815, "ada@example.com")

    assert unversioned.dequeue() is None
    (entry,) = unversioned.dead_letters
    assert entry.reason == "invalid_payload"
    assert "recipient_email: Field required" in entry.error
