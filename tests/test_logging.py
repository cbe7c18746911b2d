"""Log records of the ``versioned_tasks`` logger: one INFO line per dead letter,
rename, tombstone and replay, DEBUG per upcast, each with structured fields,
on every storage, from a real consumer."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MakeHuey, wait_for
from observability_support import (
    HANDLED,
    NEW_NAME,
    OLD_NAME,
    UNHANDLED,
    declare_new,
    declare_old,
    run_migration,
    write_old_messages,
)

from versioned_tasks import VersionedSqliteHuey

FIELDS = ("task", "version", "from_version", "reason", "task_id", "dead_letter_id")


def ours(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The records of one kind of event, from the library's logger."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("versioned_tasks") and getattr(r, "event", None) == event
    ]


def test_a_migration_is_logged_as_it_happens(
    make_huey: MakeHuey, caplog: pytest.LogCaptureFixture
) -> None:
    """The rename (INFO), the upcast (DEBUG), the tombstone handler (INFO) and each
    dead letter (INFO, once) are logged with the fields a JSON formatter reads."""
    sent = write_old_messages(make_huey())
    new = declare_new(make_huey())
    with caplog.at_level(logging.DEBUG, logger="versioned_tasks"):
        run_migration(new)

    (renamed,) = ours(caplog, "renamed")
    assert renamed.levelno == logging.INFO
    assert (renamed.task, renamed.version, renamed.task_id) == (NEW_NAME, 1, sent.bill)
    assert renamed.renamed_from == OLD_NAME
    assert (
        renamed.getMessage()
        == f"Renamed task {OLD_NAME!r} version 1, id {sent.bill}: runs as {NEW_NAME!r}."
    )

    (upcast,) = ours(caplog, "upcast")
    assert upcast.levelno == logging.DEBUG
    assert (upcast.task, upcast.from_version, upcast.version) == (NEW_NAME, 1, 2)
    assert upcast.task_id == sent.bill

    (retired,) = ours(caplog, "retired")
    assert retired.levelno == logging.INFO
    assert (retired.task, retired.version, retired.task_id) == (HANDLED, 1, sent.export)

    dead = ours(caplog, "dead_lettered")
    entries = {entry.id: entry for entry in new.app.dead_letters}
    assert sorted(r.dead_letter_id for r in dead) == sorted(entries)  # one line per entry
    for record in dead:
        entry = entries[record.dead_letter_id]
        assert record.levelno == logging.INFO
        assert (record.reason, record.task, record.version) == (
            entry.reason,
            entry.task,
            entry.version,
        )
    (legacy,) = [r for r in dead if r.reason == "retired"]
    assert (legacy.task, legacy.task_id) == (UNHANDLED, sent.legacy)

    for record in [renamed, upcast, retired, *dead]:
        assert all(hasattr(record, key) for key in FIELDS), record.__dict__


def test_a_replay_is_logged_with_the_entry_and_the_new_task_id(
    make_huey: MakeHuey, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line per replay, naming the dead letter and the task id queued."""
    send_bill = declare_old(make_huey())["send_bill"]
    before = make_huey()
    send_bill(5)
    assert before.dequeue() is None
    (entry,) = before.dead_letters

    today = declare_new(make_huey())
    with caplog.at_level(logging.INFO, logger="versioned_tasks"):
        today.app.dead_letters.replay(entry.id)
    (record,) = ours(caplog, "replayed")
    task = today.app.dequeue()
    assert task is not None
    assert record.levelno == logging.INFO
    assert (record.dead_letter_id, record.task, record.version, record.task_id) == (
        entry.id,
        OLD_NAME,
        1,
        task.id,
    )
    assert all(hasattr(record, key) for key in FIELDS)


def test_a_log_line_reads_as_a_sentence_for_people(
    make_huey: MakeHuey, caplog: pytest.LogCaptureFixture
) -> None:
    """The text of a dead-letter line names the reason, the task and the entry."""
    app = make_huey()
    app.storage.enqueue(b"junk")
    with caplog.at_level(logging.INFO, logger="versioned_tasks"):
        assert app.dequeue() is None
    (record,) = ours(caplog, "dead_lettered")
    (entry,) = app.dead_letters
    assert record.getMessage().startswith("Dead-lettered undecodable (task None, version None):")
    assert record.getMessage().endswith(f"[entry {entry.id}]")


CONSUMER_APP = """
from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("billing", filename="billing.db")


@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str) -> None:
    print("ran", invoice_id, currency, flush=True)


@huey.upcaster("billing.send_invoice", from_version=1)
def add_currency(payload: dict) -> dict:
    return {**payload, "currency": "EUR"}


huey.rename("billing.send_bill", "billing.send_invoice")
"""


def test_the_consumer_output_shows_the_migration(tmp_path: Path) -> None:
    """``huey_consumer`` with no logging set up prints the library's INFO lines in its
    own format: the rename as it happens, and a dead letter."""
    (tmp_path / "app.py").write_text(CONSUMER_APP)
    old = VersionedSqliteHuey("billing", filename=str(tmp_path / "billing.db"))
    declare_old(old)["send_bill"](7)
    old.storage.enqueue(b"junk")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    output = tmp_path / "consumer.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "app.huey", "-w", "1", "-d", "0.05"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Dead-lettered undecodable" in output.read_text(), timeout=30)
        wait_for(lambda: "ran 7 EUR" in output.read_text(), timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    text = output.read_text()
    assert "INFO:versioned_tasks:Worker-1:Renamed task 'billing.send_bill' version 1" in text
    assert "INFO:versioned_tasks:Worker-1:Dead-lettered undecodable" in text
    assert "Upcast task" not in text  # DEBUG: shown with huey_consumer -v
