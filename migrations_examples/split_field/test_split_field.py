"""The split_field migration, played as two releases sharing one queue."""

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


def test_version_1_message_runs_addressed_by_first_name() -> None:
    """A message enqueued by the old code is split and runs on the new code."""
    before.send_welcome("ada@example.com", "Ada Lovelace")

    task = after.huey.dequeue()

    assert task is not None
    assert task.kwargs == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert after.huey.execute(task) == "Welcome, Ada! (to ada@example.com)"


@pytest.mark.parametrize(
    ("full_name", "first_name", "last_name"),
    [
        ("Ada Lovelace", "Ada", "Lovelace"),
        ("Teller", "Teller", ""),
        ("  Ludwig   van Beethoven ", "Ludwig", "van Beethoven"),
        # The rule cannot know a double first name: the upcaster's limit, written down.
        ("Mary Ann\tEvans", "Mary", "Ann Evans"),
        ("", "", ""),
    ],
)
def test_upcaster_splits_real_names(full_name: str, first_name: str, last_name: str) -> None:
    """One word, stray spaces, tabs and an empty name all give a valid version-2 payload."""
    assert_upcasts(
        after.huey,
        "crm.send_welcome",
        {"email": "someone@example.com", "full_name": full_name},
        from_version=1,
        expected={
            "email": "someone@example.com",
            "first_name": first_name,
            "last_name": last_name,
        },
    )


def test_every_stored_version_1_payload_upcasts_and_validates() -> None:
    """The payload corpus of this example runs through today's chain and model."""
    assert check_corpus(after.huey, PAYLOADS) == 3


def test_version_2_message_waits_on_an_old_worker() -> None:
    """During a rolling deploy, an old worker defers a split name instead of refusing it."""
    after.send_welcome("grace@example.com", first_name="Grace", last_name="Hopper")

    assert before.huey.dequeue() is None
    assert before.huey.scheduled_count() == 1
    assert len(before.huey.dead_letters) == 0
