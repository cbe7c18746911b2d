"""The rename_task migration, played as two releases sharing one queue."""

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
    """The rename points at a declared task."""
    after.huey.check_schemas()


def test_message_under_the_old_name_runs_as_the_new_task() -> None:
    """A message enqueued as notifications.send_sms runs messaging.send_text."""
    before.send_sms("+447700900123", "Your code is 482913")

    task = after.huey.dequeue()

    assert task is not None
    assert after.huey.execute(task) == "text to +447700900123: Your code is 482913"
    assert len(after.huey.dead_letters) == 0


def test_old_name_upcasts_through_the_new_tasks_chain() -> None:
    """The corpus and assert_upcasts take the name as it was on the wire."""
    assert_upcasts(
        after.huey,
        "notifications.send_sms",
        {"phone": "+447700900123", "text": "Your code is 482913"},
        from_version=1,
        expected={"phone": "+447700900123", "text": "Your code is 482913"},
    )


def test_every_stored_payload_of_the_old_name_validates() -> None:
    """The payload corpus keeps the old name's folder: that is the name in the queue."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_new_name_on_an_old_worker_is_dead_lettered_then_replayed_after_the_deploy() -> None:
    """During a rolling deploy an old worker does not know the new name: the message waits
    in the dead-letter store, and a replay on the new code runs it."""
    after.send_text("+15555550142", "Your parcel arrives today")

    assert before.huey.dequeue() is None
    (entry,) = before.huey.dead_letters
    assert (entry.reason, entry.task) == ("unknown_task", "messaging.send_text")

    after.huey.dead_letters.replay(entry.id)
    task = after.huey.dequeue()
    assert task is not None
    assert after.huey.execute(task) == "text to +15555550142: Your parcel arrives today"
    assert len(after.huey.dead_letters) == 0
