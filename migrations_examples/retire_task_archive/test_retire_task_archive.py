"""The retire_task_archive migration, played as two releases sharing one queue."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huey.storage import MemoryStorage

from versioned_tasks import VersionedMemoryHuey
from versioned_tasks.testing import check_corpus

from . import after, before

PAYLOADS = Path(__file__).parent / "payloads"


@pytest.fixture(autouse=True)
def shared_queue() -> Iterator[None]:
    """Both releases on one fresh queue, as they would share one SQLite or Redis queue."""
    before.huey.storage = MemoryStorage(before.huey.name)
    after.huey.storage = before.huey.storage
    yield
    before.huey.storage.flush_all()


@pytest.fixture(autouse=True)
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The archive file of this test."""
    path = tmp_path / "retired-exports.jsonl"
    monkeypatch.setattr(after, "ARCHIVE", path)
    return path


def archived(path: Path) -> list[dict[str, Any]]:
    """The records in the archive, oldest first."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_schemas_of_the_new_code_check() -> None:
    """The tombstone names a task that is no longer declared."""
    after.huey.check_schemas()


def test_queued_export_is_archived_and_not_run(archive: Path) -> None:
    """The new worker hands the old message to the handler, which writes it to the archive."""
    result = before.export_xls(7301, "finance@example.com", sheet_name="Q3 revenue")

    assert after.huey.dequeue() is None

    assert archived(archive) == [
        {
            "id": result.id,
            "task": "reports.export_xls",
            "version": 1,
            "payload": {
                "report_id": 7301,
                "recipient_email": "finance@example.com",
                "sheet_name": "Q3 revenue",
            },
        }
    ]
    assert len(after.huey.dead_letters) == 0


def test_export_scheduled_for_later_is_archived_when_it_comes_due(archive: Path) -> None:
    """A month-end export already on the schedule: the scheduler moves it to the queue
    when it is due, and a worker archives it."""
    before.export_xls.schedule((7302, "ops@example.com"), delay=3600)
    task = before.huey.dequeue()  # the old worker finds it not yet due...
    assert task is not None
    before.huey.add_schedule(task)  # ...and puts it on the schedule

    due = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    due += datetime.timedelta(hours=2)
    assert after.huey.read_schedule(due) == []  # retired: back on the queue, for a worker
    assert after.huey.dequeue() is None

    (record,) = archived(archive)
    assert record["payload"]["report_id"] == 7302


def test_every_stored_payload_is_archived_whole(archive: Path) -> None:
    """check_corpus passes a retired task's cases without running its handler: run it here."""
    assert check_corpus(after.huey, PAYLOADS) == 2

    cases = sorted(PAYLOADS.glob("reports.export_xls/v1/*.json"))
    payloads = [json.loads(case.read_text(encoding="utf-8")) for case in cases]
    for payload in payloads:
        before.export_xls(**payload)
        assert after.huey.dequeue() is None

    assert [record["payload"] for record in archived(archive)] == payloads


def test_a_tombstone_without_a_handler_dead_letters_and_the_corpus_says_so() -> None:
    """Retired without a handler, the messages are dead-lettered as retired: check_corpus
    fails, so that choice is made on purpose."""
    bare = VersionedMemoryHuey("reports")
    bare.tombstone("reports.export_xls")

    with pytest.raises(AssertionError, match="retired by a tombstone without a handler"):
        check_corpus(bare, PAYLOADS)


def test_archive_that_cannot_be_written_keeps_the_message_for_a_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the handler raises (here: the archive's folder is missing), the message is
    dead-lettered as retired; once the folder exists, a replay archives it."""
    archive = tmp_path / "missing" / "retired-exports.jsonl"
    monkeypatch.setattr(after, "ARCHIVE", archive)
    before.export_xls(7303, "hr@example.com")

    assert after.huey.dequeue() is None
    (entry,) = after.huey.dead_letters
    assert (entry.reason, entry.task) == ("retired", "reports.export_xls")
    assert "FileNotFoundError" in entry.error

    archive.parent.mkdir()
    after.huey.dead_letters.replay(entry.id)
    assert after.huey.dequeue() is None
    assert [record["payload"]["report_id"] for record in archived(archive)] == [7303]
    assert len(after.huey.dead_letters) == 0
