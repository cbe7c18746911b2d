"""The move_task_to_module migration, played as two releases sharing one queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huey.storage import MemoryStorage

from versioned_tasks import VersionedMemoryHuey
from versioned_tasks.testing import assert_upcasts, check_corpus

from . import after, before, images

PAYLOADS = Path(__file__).parent / "payloads"
OLD_NAME = f"{__package__}.before.purge_cdn"


@pytest.fixture(autouse=True)
def shared_queue() -> Iterator[None]:
    """Both releases on one fresh queue, as they would share one SQLite or Redis queue."""
    before.huey.storage = MemoryStorage(before.huey.name)
    after.huey.storage = before.huey.storage
    yield
    before.huey.storage.flush_all()


def test_schemas_of_the_new_code_check() -> None:
    """The rename points at the plain task in its new module."""
    after.huey.check_schemas()


def test_versioned_task_with_a_logical_name_runs_from_its_new_module() -> None:
    """The logical name on the wire did not move, so the old message runs as it is."""
    before.resize_image(88120, 320)

    task = after.huey.dequeue()

    assert task is not None
    assert isinstance(task, images.resize_image.task_class)
    assert after.huey.execute(task) == "image 88120 resized to 320px"


def test_plain_task_message_under_its_old_module_runs_through_the_rename() -> None:
    """A plain task's name is its module path: the rename leads the old one to the new module."""
    before.purge_cdn("/img/88120/320.webp")

    task = after.huey.dequeue()

    assert task is not None
    assert isinstance(task, images.purge_cdn.task_class)
    assert after.huey.execute(task) == "purged /img/88120/320.webp"


def test_without_the_rename_the_moved_plain_task_is_unknown_until_replayed() -> None:
    """Moved without a rename, its messages are dead-lettered as unknown_task, not lost;
    once the rename is deployed, a replay runs them."""
    forgetful = VersionedMemoryHuey("media")
    forgetful.storage = before.huey.storage

    @forgetful.task()
    def purge_cdn(path: str) -> str:
        return f"purged {path}"

    before.purge_cdn("/img/88121/2048.webp")

    assert forgetful.dequeue() is None
    (entry,) = forgetful.dead_letters
    assert (entry.reason, entry.task) == ("unknown_task", OLD_NAME)

    after.huey.dead_letters.replay(entry.id)
    task = after.huey.dequeue()
    assert task is not None
    assert after.huey.execute(task) == "purged /img/88121/2048.webp"


def test_logical_name_upcasts_unchanged() -> None:
    """The versioned task's payloads need nothing: same name, same version."""
    payload = {"image_id": 88120, "width": 320}
    assert_upcasts(after.huey, "media.resize_image", payload, from_version=1, expected=payload)


def test_every_stored_payload_validates() -> None:
    """The payload corpus of this example runs through today's model."""
    assert check_corpus(after.huey, PAYLOADS) == 2


def test_new_module_name_on_an_old_worker_is_dead_lettered() -> None:
    """During a rolling deploy, an old worker does not know the plain task's new name."""
    images.purge_cdn("/img/88122/640.webp")

    assert before.huey.dequeue() is None
    (entry,) = before.huey.dead_letters
    assert (entry.reason, entry.task) == ("unknown_task", f"{__package__}.images.purge_cdn")


def test_a_revocation_of_every_call_does_not_follow_the_move() -> None:
    """Huey keys a task-wide revocation by module path: the moved task is not revoked."""
    before.resize_image.revoke()
    before.resize_image(88123, 64)

    task = after.huey.dequeue()

    assert task is not None
    assert not after.huey.is_revoked(task)
