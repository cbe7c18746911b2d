"""The census: queue, schedule and dead-letter store counted by task and version on
every backend, from headers only; the "safe to remove" report; the CLI command.
"""

from __future__ import annotations

import datetime
import importlib
import json
import pickle
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import REDIS_URL, MakeHuey, require_redis
from huey.storage import BlackHoleStorage

from versioned_tasks import (
    Census,
    ConfigurationError,
    Removal,
    VersionedHuey,
    VersionedPriorityRedisHuey,
    VersionedSerializer,
    VersionedSqliteHuey,
    take_census,
)
from versioned_tasks.cli import main

SECRET = b"a census test secret of at least 32 bytes"
#: Due times of the scheduled messages: whole seconds, which every storage keeps exactly.
EARLY = datetime.datetime(2031, 1, 2, 3, 4, 5)
LATE = datetime.datetime(2031, 6, 7, 8, 9, 10)


def old_app(make_huey: MakeHuey, **options: Any) -> tuple[VersionedHuey, Any, Any]:
    """The code of a year ago: send_bill v1 and shop.ship v1."""
    app = make_huey(**options)

    @app.versioned_task(version=1, name="billing.send_bill")
    def send_bill(invoice_id: int) -> None: ...

    @app.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int) -> None: ...

    return app, send_bill, ship


def middle_app(make_huey: MakeHuey, **options: Any) -> tuple[VersionedHuey, Any]:
    """Last month's code: renamed to send_invoice, at v2."""
    app = make_huey(**options)

    @app.versioned_task(version=2, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str = "EUR") -> None: ...

    return app, send_invoice


def new_app(make_huey: MakeHuey) -> VersionedHuey:
    """Today's code: send_invoice v3 with its chain, the rename, two tombstones."""
    app = make_huey()

    @app.versioned_task(version=3, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str = "EUR", note: str = "") -> None: ...

    @app.versioned_task(version=1, name="shop.ship")
    def ship(order_id: int) -> None: ...

    @app.upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    @app.upcaster("billing.send_invoice", from_version=2)
    def add_note(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "note": ""}

    app.rename("billing.send_bill", "billing.send_invoice")
    app.tombstone("reports.legacy_export")
    app.tombstone("reports.never_used")
    return app


def row(task: str | None, version: int | None, where: str, count: int) -> dict[str, Any]:
    return {"task": task, "version": version, "where": where, "count": count}


@pytest.fixture
def filled(make_huey: MakeHuey) -> VersionedHuey:
    """A queue, a schedule and a dead-letter store with a bit of everything; returns
    today's app."""
    old, send_bill, ship = old_app(make_huey)
    send_bill(1)
    send_bill(2)
    send_bill(3)
    ship(10)
    old.add_schedule(send_bill.s(4, eta=EARLY))
    old.add_schedule(send_bill.s(5, eta=LATE))

    middle, send_invoice = middle_app(make_huey)
    send_invoice(20)
    middle.add_schedule(send_invoice.s(21, eta=EARLY))

    _signer, signed_invoice = middle_app(
        make_huey, serializer=VersionedSerializer(secret_keys={"k1": SECRET})
    )
    signed_invoice(30)
    signed_invoice(31)

    retired = make_huey()

    @retired.versioned_task(version=1, name="reports.legacy_export")
    def legacy_export(quarter: str) -> None: ...

    legacy_export("2023-Q4")

    app = new_app(make_huey)
    app.storage.enqueue(b"\x00junk\xff")
    app.storage.enqueue(pickle.dumps(("a legacy", "message")))
    app.storage.enqueue(VersionedSerializer().serialize({"a": "value, not a task"}))
    app.dead_letters.add(reason="undecodable", raw=b"junk", error="test")
    app.dead_letters.add(
        reason="unknown_task", raw=b"x", error="test", task="shop.gone", version=2
    )
    app.dead_letters.add(
        reason="unknown_task", raw=b"y", error="test", task="shop.gone", version=2
    )
    return app


# -- counting ------------------------------------------------------------------------------


def test_census_counts_queue_schedule_and_dead_letters_by_task_and_version(
    filled: VersionedHuey,
) -> None:
    """Every message is counted once, under the name and version on the wire;
    junk, legacy pickle and values under task None; signed envelopes by their header."""
    assert filled.census() == [
        row("billing.send_bill", 1, "queue", 3),
        row("billing.send_invoice", 2, "queue", 3),
        row("reports.legacy_export", 1, "queue", 1),
        row("shop.ship", 1, "queue", 1),
        row(None, None, "queue", 3),
        row("billing.send_bill", 1, "schedule", 2),
        row("billing.send_invoice", 2, "schedule", 1),
        row("shop.gone", 2, "dead_letters", 2),
        row(None, None, "dead_letters", 1),
    ]


def test_census_counts_legacy_pickle_apart_and_changes_nothing(filled: VersionedHuey) -> None:
    """Legacy pickle is counted (never unpickled), and the storage is left as it was."""
    before = (
        filled.storage.queue_size(),
        filled.storage.schedule_size(),
        len(filled.dead_letters),
    )
    census = take_census(filled)
    assert census.legacy == {"queue": 1}
    assert census.unreadable("queue") == 3
    assert (census.total("queue"), census.total("schedule"), census.total("dead_letters")) == (
        11,
        3,
        3,
    )
    after = (
        filled.storage.queue_size(),
        filled.storage.schedule_size(),
        len(filled.dead_letters),
    )
    assert after == before


def test_small_chunks_count_the_same_and_report_progress(filled: VersionedHuey) -> None:
    """Reading two messages at a time gives the same rows; progress adds up to the totals."""
    seen: dict[str, int] = {}

    def progress(where: str, n: int) -> None:
        seen[where] = seen.get(where, 0) + n

    census = take_census(filled, chunk_size=2, progress=progress)
    assert census.rows == filled.census()
    assert seen == {"queue": 11, "schedule": 3, "dead_letters": 3}


def test_an_empty_app_has_an_empty_census(make_huey: MakeHuey) -> None:
    """No messages, no rows, and every removal is safe."""
    app = new_app(make_huey)
    census = take_census(app)
    assert census.rows == []
    assert census.removals
    assert not any(removal.needed for removal in census.removals)


def test_a_long_header_is_read_whole(make_huey: MakeHuey) -> None:
    """A header longer than the first bytes a SQL page fetches (a callback with large
    arguments) is still counted by task, callback included."""
    old, send_bill, ship = old_app(make_huey)
    # A callback's arguments are checked when Huey enqueues it, not before.
    old.enqueue(ship.s(1).then(send_bill, "x" * 5000))
    app = new_app(make_huey)
    census = take_census(app)
    assert census.rows == [row("shop.ship", 1, "queue", 1)]
    [upcaster] = [r for r in census.removals if r.subject == "upcaster billing.send_invoice 1->2"]
    assert upcaster.counts["queue"] == 1


def test_plain_huey_tasks_are_counted_without_a_version(make_huey: MakeHuey) -> None:
    """A plain @huey.task() message has a name on the wire and no version."""
    app = make_huey()

    @app.task(name="plain_report")
    def report(quarter: str) -> None: ...

    report("2024-Q1")
    report("2024-Q2")
    [found] = app.census()
    assert found["task"].endswith("plain_report")
    assert (found["version"], found["where"], found["count"]) == (None, "queue", 2)
    assert take_census(app).unknown == []


def test_a_priority_redis_queue_is_counted() -> None:
    """PriorityRedisStorage keeps its queue in a sorted set with a stamp per member."""
    require_redis()
    name = f"vt_test_{uuid.uuid4().hex[:12]}"
    app = VersionedPriorityRedisHuey(name, url=REDIS_URL, blocking=False)
    try:

        @app.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        for i in range(5):
            app.enqueue(send_invoice.s(i, priority=i % 3))
        app.storage.enqueue(b"junk", 1)
        assert take_census(app, chunk_size=2).rows == [
            row("billing.send_invoice", 2, "queue", 5),
            row(None, None, "queue", 1),
        ]
    finally:
        app.storage.flush_all()


# -- the report ---------------------------------------------------------------------------


def removals_of(census: Census) -> dict[str, Removal]:
    return {removal.subject: removal for removal in census.removals}


def test_the_report_says_which_upcasters_renames_and_tombstones_are_needed(
    filled: VersionedHuey,
) -> None:
    """Each declaration is needed by the messages that go through it, with counts per
    place, the old name they travel under, and the latest eta."""
    report = removals_of(take_census(filled))
    assert list(report) == [
        "upcaster billing.send_invoice 1->2",
        "upcaster billing.send_invoice 2->3",
        "rename billing.send_bill -> billing.send_invoice",
        "tombstone reports.legacy_export",
        "tombstone reports.never_used",
    ]
    first = report["upcaster billing.send_invoice 1->2"]
    assert dict(first.counts) == {"queue": 3, "schedule": 2, "dead_letters": 0}
    assert first.via == ("billing.send_bill",)
    assert first.latest_eta == LATE
    second = report["upcaster billing.send_invoice 2->3"]
    assert dict(second.counts) == {"queue": 6, "schedule": 3, "dead_letters": 0}
    assert second.latest_eta == LATE
    rename = report["rename billing.send_bill -> billing.send_invoice"]
    assert (rename.target, rename.counts["queue"], rename.counts["schedule"]) == (
        "billing.send_invoice",
        3,
        2,
    )
    assert rename.via == ()
    assert report["tombstone reports.legacy_export"].counts["queue"] == 1
    never = report["tombstone reports.never_used"]
    assert not never.needed
    assert never.describe() == "tombstone reports.never_used: safe to remove (no message needs it)"
    assert first.describe() == (
        "upcaster billing.send_invoice 1->2: needed by 3 queued, 2 scheduled (incl. messages "
        "under 'billing.send_bill', renamed); latest scheduled for 2031-06-07 08:09:10"
    )


def test_an_upcaster_is_safe_to_remove_once_only_newer_messages_remain(
    make_huey: MakeHuey,
) -> None:
    """Only v2 messages left: the v1 step and the rename are safe, the v2 step is not."""
    _middle, send_invoice = middle_app(make_huey)
    send_invoice(1)
    app = new_app(make_huey)
    report = removals_of(take_census(app))
    assert not report["upcaster billing.send_invoice 1->2"].needed
    assert not report["rename billing.send_bill -> billing.send_invoice"].needed
    assert report["upcaster billing.send_invoice 2->3"].counts["queue"] == 1


def test_dead_letters_keep_their_declarations_needed(make_huey: MakeHuey) -> None:
    """A dead letter of an old version can still be replayed: its upcasters are needed."""
    app = new_app(make_huey)
    app.dead_letters.add(
        reason="invalid_payload", raw=b"x", error="t", task="billing.send_bill", version=1
    )
    report = removals_of(take_census(app))
    assert report["upcaster billing.send_invoice 1->2"].counts["dead_letters"] == 1
    assert report["rename billing.send_bill -> billing.send_invoice"].needed


def test_a_callback_in_a_header_keeps_its_upcasters_needed(make_huey: MakeHuey) -> None:
    """A pipeline step nested in a queued message counts as a message of its version."""
    old, send_bill, ship = old_app(make_huey)
    old.enqueue(ship.s(1).then(send_bill, 2))
    app = new_app(make_huey)
    census = take_census(app)
    assert census.rows == [row("shop.ship", 1, "queue", 1)]
    report = removals_of(census)
    assert report["upcaster billing.send_invoice 1->2"].counts["queue"] == 1
    assert report["rename billing.send_bill -> billing.send_invoice"].counts["queue"] == 1


def test_newer_and_unknown_messages_are_reported(make_huey: MakeHuey) -> None:
    """Scheduled messages newer than this app (deferred) and tasks it does not know."""
    future = make_huey()

    @future.versioned_task(version=4, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> None: ...

    @future.versioned_task(version=1, name="shop.brand_new")
    def brand_new(x: int) -> None: ...

    future.add_schedule(send_invoice.s(1, eta=EARLY))
    future.add_schedule(send_invoice.s(2, eta=LATE))
    brand_new(3)
    app = new_app(make_huey)
    census = take_census(app)
    assert census.newer == [row("billing.send_invoice", 4, "schedule", 2)]
    assert census.unknown == [row("shop.brand_new", 1, "queue", 1)]


def test_census_to_json_is_plain_json(filled: VersionedHuey) -> None:
    """The whole census round-trips through json.dumps."""
    data = json.loads(json.dumps(take_census(filled).to_json()))
    assert data["totals"] == {"queue": 11, "schedule": 3, "dead_letters": 3}
    assert data["legacy"] == {"queue": 1, "schedule": 0, "dead_letters": 0}
    [first] = [r for r in data["removals"] if r["from_version"] == 1]
    assert first["latest_eta"] == LATE.isoformat()
    assert first["needed"] is True


# -- the command ---------------------------------------------------------------------------

APP_MODULE = """\
from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("census", filename={filename!r})

@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str = "EUR") -> None: ...

@huey.upcaster("billing.send_invoice", from_version=1)
def add_currency(payload):
    return {{**payload, "currency": "EUR"}}

huey.rename("billing.send_bill", "billing.send_invoice")
"""


@pytest.fixture
def cli_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An importable SQLite app module."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"vt_census_app_{uuid.uuid4().hex[:12]}"
    source = APP_MODULE.format(filename=str(tmp_path / "queue.db"))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_census_prints_the_counts_and_the_report(cli_app: Any) -> None:
    """Exit 0 on a queue this app can run; a table and the report."""
    cli_app.send_invoice(1)
    result = run("census", "--app", f"{cli_app.__name__}:huey")
    assert result.exit_code == 0, result.output
    assert "billing.send_invoice" in result.output
    assert "Total: 1 queued, 0 scheduled, 0 dead-lettered." in result.output
    assert "upcaster billing.send_invoice 1->2: safe to remove" in result.output
    assert "rename billing.send_bill -> billing.send_invoice: safe to remove" in result.output


def test_cli_census_json_and_exit_code_1_for_unreadable_messages(cli_app: Any) -> None:
    """--json prints the census; junk on the queue makes the exit code 1."""
    cli_app.huey.storage.enqueue(b"\x00junk")
    result = run("census", "--app", f"{cli_app.__name__}.huey", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["queue"] == "census"
    assert data["rows"] == [row(None, None, "queue", 1)]
    assert {r["kind"] for r in data["removals"]} == {"upcaster", "rename"}


def test_cli_census_exit_code_1_for_tasks_the_app_does_not_know(cli_app: Any) -> None:
    """A queued message of a task this app does not know is a problem too."""
    other = VersionedSqliteHuey("census", filename=cli_app.huey.storage.filename)

    @other.versioned_task(version=1, name="shop.gone")
    def gone(x: int) -> None: ...

    gone(1)
    result = run("census", "--app", f"{cli_app.__name__}:huey")
    assert result.exit_code == 1, result.output
    assert "Unknown to this app: shop.gone v1: 1 queued." in result.output


def test_cli_census_exit_code_2_for_a_bad_app() -> None:
    """An app that does not import: one line on stderr, exit code 2."""
    result = run("census", "--app", "no_such_module_for_census:huey")
    assert result.exit_code == 2
    assert re.search(r"Could not import module 'no_such_module_for_census'", result.output)


def test_cli_census_draws_a_progress_bar_on_a_terminal(
    cli_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, a progress bar per place goes to stderr; stdout keeps the report."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    cli_app.send_invoice(1)
    cli_app.huey.dead_letters.add(reason="undecodable", raw=b"x", error="t")
    result = run("census", "--app", f"{cli_app.__name__}:huey")
    assert result.exit_code == 0, result.output
    assert "dead letters" in result.stderr
    assert "Total: 1 queued, 0 scheduled, 1 dead-lettered." in result.stdout


def test_a_census_creates_no_dead_letter_table(tmp_path: Path) -> None:
    """On SQLite, a store never used has no table, and a census does not create one."""
    app = VersionedSqliteHuey("quiet", filename=str(tmp_path / "quiet.db"))
    assert take_census(app).rows == []
    tables = app.storage.sql("select name from sqlite_master where type = 'table'", results=True)
    assert "vt_dead_letters" not in {name for (name,) in tables}


def test_a_storage_without_a_dead_letter_store_is_refused_before_reading() -> None:
    """A census of a storage it cannot read raises ConfigurationError, naming the storage."""
    app = VersionedHuey("void", storage_class=BlackHoleStorage)
    with pytest.raises(ConfigurationError, match="BlackHoleStorage has no dead-letter store"):
        app.census()
