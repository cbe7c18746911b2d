"""The ``versioned-tasks`` command, run in-process with click's CliRunner on real apps.

Each test writes small app modules (unique names, so imports never hit a cached
module) into ``tmp_path``: "old code" that enqueued messages, "new code" under
which some of them were dead-lettered, and "fixed code" that can run them.
"""

from __future__ import annotations

import base64
import importlib
import json
import pickle
import re
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from versioned_tasks import MessageRejected, VersionedHuey, VersionedSqliteHuey
from versioned_tasks.cli import main

APP_MODULE = """\
from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("cli", filename={filename!r})
{body}
"""

OLD_CODE = """
@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> int:
    return invoice_id

@huey.versioned_task(version=1, name="notifications.send_sms")
def send_sms(phone: str) -> str:
    return phone

@huey.versioned_task(version=1, name="reports.legacy_export")
def legacy_export(quarter: str) -> None: ...
"""

# send_sms was dropped by mistake; the legacy export is retired without a handler.
NEW_CODE = """
@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> int:
    return invoice_id

huey.tombstone("reports.legacy_export")
"""

FIXED_CODE = """
RETIRED = []

@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> int:
    return invoice_id

@huey.versioned_task(version=1, name="notifications.send_sms")
def send_sms(phone: str) -> str:
    return "sent to " + phone

@huey.tombstone("reports.legacy_export")
def legacy_export_retired(retired):
    RETIRED.append(retired)
"""

WriteApp = Callable[..., str]

_UNPICKLED: list[str] = []


def _detonate() -> None:
    _UNPICKLED.append("unpickled")


class _Detonator:
    """Pickles to a call of _detonate(): unpickling it would leave a trace."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_detonate, ())


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteApp]:
    """Write an app module on the test's queue file; returns the module's name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(body: str = "", *, source: str | None = None) -> str:
        name = f"vt_cli_app_{uuid.uuid4().hex[:12]}"
        text = source or APP_MODULE.format(
            filename=str(tmp_path / "queue.db"), body=textwrap.dedent(body)
        )
        (tmp_path / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def app_of(module: str) -> VersionedHuey:
    app = importlib.import_module(module).huey
    assert isinstance(app, VersionedHuey)
    return app


def dequeue_all(app: VersionedHuey) -> list[Any]:
    """Pop every message as a worker would; bad ones are dead-lettered on the way."""
    tasks = []
    while (task := app.dequeue()) is not None:
        tasks.append(task)
    return tasks


@dataclass
class Queue:
    old: str
    new: str
    fixed: str
    ids: dict[str, str]  # reason -> dead-letter id
    junk: bytes

    @property
    def app(self) -> VersionedHuey:
        return app_of(self.new)


@pytest.fixture
def queue(write_app: WriteApp) -> Queue:
    """Three dead letters under the new code: unknown_task, retired and undecodable."""
    old, new, fixed = write_app(OLD_CODE), write_app(NEW_CODE), write_app(FIXED_CODE)
    old_module = importlib.import_module(old)
    old_module.send_invoice(1)
    old_module.send_sms("+32 470 12 34 56")
    old_module.legacy_export("2023-Q4")
    junk = b"\x00junk\xff"
    app = app_of(new)
    app.storage.enqueue(junk)
    assert len(dequeue_all(app)) == 1
    ids = {entry.reason: entry.id for entry in app.dead_letters}
    assert sorted(ids) == ["retired", "undecodable", "unknown_task"]
    return Queue(old, new, fixed, ids, junk)


def invoke(runner: CliRunner, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False, **kwargs)


def assert_one_line_error(result: Result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


# -- dlq list ------------------------------------------------------------------------


def test_list_shows_every_entry_newest_first(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "list", "--app", f"{queue.new}.huey")
    assert result.exit_code == 0, result.output
    positions = [result.output.index(queue.ids[r]) for r in ("undecodable", "retired")]
    assert positions == sorted(positions)
    assert result.output.index(queue.ids["retired"]) < result.output.index(
        queue.ids["unknown_task"]
    )
    assert "notifications.send_sms" in result.output
    assert "3 shown of 3" in result.output


def test_list_json_filters_by_reason(runner: CliRunner, queue: Queue) -> None:
    result = invoke(
        runner, "dlq", "list", "--app", f"{queue.new}:huey", "--reason", "unknown_task", "--json"
    )
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert entry["id"] == queue.ids["unknown_task"]
    assert (entry["reason"], entry["task"], entry["version"]) == (
        "unknown_task",
        "notifications.send_sms",
        1,
    )
    assert "not declared" in entry["error"]


def test_list_limit_keeps_the_newest(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "list", "--app", f"{queue.new}:huey", "--limit", "2", "--json")
    assert result.exit_code == 0, result.output
    assert [e["reason"] for e in json.loads(result.output)] == ["undecodable", "retired"]


def test_list_of_an_empty_store_says_so(runner: CliRunner, write_app: WriteApp) -> None:
    module = write_app(NEW_CODE)
    result = invoke(runner, "dlq", "list", "--app", f"{module}:huey")
    assert result.exit_code == 0, result.output
    assert "No dead letters in queue 'cli'" in result.output


def test_list_refuses_an_unknown_reason(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "list", "--app", f"{queue.new}:huey", "--reason", "lost")
    assert result.exit_code == 2
    assert "'lost' is not one of" in result.output


# -- dlq show ------------------------------------------------------------------------


def test_show_decodes_the_envelope_header_and_previews_the_bytes(
    runner: CliRunner, queue: Queue
) -> None:
    result = invoke(runner, "dlq", "show", queue.ids["unknown_task"], "--app", f"{queue.new}:huey")
    assert result.exit_code == 0, result.output
    out = result.output
    assert '"task": "notifications.send_sms"' in out
    assert '"phone": "+32 470 12 34 56"' in out
    assert "56 54 45 31" in out  # b"VTE1" in the hex preview
    assert "Replay today: would fail again (unknown_task)" in out


def test_show_previews_a_pickle_without_unpickling_it(
    runner: CliRunner, write_app: WriteApp
) -> None:
    module = write_app(NEW_CODE)
    app = app_of(module)
    raw = pickle.dumps(_Detonator())
    app.storage.enqueue(raw)
    assert dequeue_all(app) == []
    [entry] = app.dead_letters
    result = invoke(runner, "dlq", "show", entry.id, "--app", f"{module}:huey")
    assert result.exit_code == 0, result.output
    assert "Legacy pickle data (starts with 0x80)" in result.output
    assert "80 04" in result.output
    assert repr(raw[:20])[:-1] in result.output
    assert _UNPICKLED == []


SIGNED_APP = """\
from versioned_tasks import VersionedSerializer, VersionedSqliteHuey

huey = VersionedSqliteHuey(
    "cli",
    filename={filename!r},
    serializer=VersionedSerializer(secret_keys={{{key_id!r}: b"s" * 32}}),
)

@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> int:
    return invoice_id
"""


def test_show_reads_signed_entries_with_the_apps_keys(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """A signed message is shown through the app's keys; one whose signature does
    not check is still shown, marked as not verified."""
    filename = str(tmp_path / "queue.db")
    producer = app_of(write_app(source=SIGNED_APP.format(filename=filename, key_id="k1")))
    worker_module = write_app(source=SIGNED_APP.format(filename=filename, key_id="k2"))
    producer.enqueue(importlib.import_module(worker_module).send_invoice.s(7))
    worker = app_of(worker_module)
    assert dequeue_all(worker) == []
    [entry] = worker.dead_letters
    assert entry.reason == "bad_signature"
    result = invoke(runner, "dlq", "show", entry.id, "--app", f"{worker_module}:huey")
    assert result.exit_code == 0, result.output
    assert '"task": "billing.send_invoice"' in result.output
    assert '"invoice_id": 7' in result.output
    assert "Signature not verified, shown as written" in result.output
    assert "Not readable as an envelope" not in result.output


def test_show_and_dry_run_never_unpickle_even_with_legacy_pickle_on(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Looking at a dead letter never runs it: only a replay by name may unpickle."""
    source = (
        "from versioned_tasks import VersionedSqliteHuey\n"
        f"huey = VersionedSqliteHuey('cli', filename={str(tmp_path / 'queue.db')!r}, "
        "legacy_pickle=True)\n"
    )
    module = write_app(source=source)
    app = app_of(module)
    app.dead_letters.add(raw=pickle.dumps(_Detonator()), reason="undecodable", error="kept")
    [entry] = app.dead_letters
    show = invoke(runner, "dlq", "show", entry.id, "--app", f"{module}:huey")
    dry = invoke(runner, "dlq", "replay", entry.id, "--dry-run", "--app", f"{module}:huey")
    assert show.exit_code == 0, show.output
    assert "not checked: legacy pickle" in show.output
    assert "not checked: legacy pickle" in dry.output
    assert _UNPICKLED == []


def test_show_json_carries_the_exact_bytes(runner: CliRunner, queue: Queue) -> None:
    result = invoke(
        runner, "dlq", "show", queue.ids["undecodable"], "--app", f"{queue.new}:huey", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert base64.b64decode(data["raw_base64"]) == queue.junk
    assert data["header"] is None
    assert "Not an envelope" in data["problem"]


def test_show_of_an_unknown_id_exits_2(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "show", "nope", "--app", f"{queue.new}:huey")
    assert_one_line_error(result, r"^Error: No dead-letter entry with id 'nope'")


# -- dlq replay ----------------------------------------------------------------------


def test_replay_after_the_fix_enqueues_the_message_and_removes_the_entry(
    runner: CliRunner, queue: Queue
) -> None:
    entry_id = queue.ids["unknown_task"]
    result = invoke(runner, "dlq", "replay", entry_id, "--app", f"{queue.fixed}:huey")
    assert result.exit_code == 0, result.output
    assert re.search(rf"{entry_id} .*replayed, enqueued as task \S+", result.output)
    fixed = app_of(queue.fixed)
    assert entry_id not in {e.id for e in fixed.dead_letters}
    [task] = dequeue_all(fixed)
    assert fixed.execute(task) == "sent to +32 470 12 34 56"


def test_replay_that_still_fails_exits_1_and_keeps_the_entry(
    runner: CliRunner, queue: Queue
) -> None:
    entry_id = queue.ids["unknown_task"]
    result = invoke(runner, "dlq", "replay", entry_id, "--app", f"{queue.new}:huey")
    assert result.exit_code == 1, result.output
    assert "failed again (unknown_task)" in result.output
    assert queue.app.dead_letters.get(entry_id).reason == "unknown_task"
    assert queue.app.pending_count() == 0


def test_replay_all_replays_what_now_works_and_exits_1_for_the_rest(
    runner: CliRunner, queue: Queue
) -> None:
    result = invoke(runner, "dlq", "replay", "--all", "--app", f"{queue.fixed}:huey")
    assert result.exit_code == 1, result.output
    assert "Replayed 2 of 3; 1 still fail and were kept." in result.output
    fixed = app_of(queue.fixed)
    assert [e.id for e in fixed.dead_letters] == [queue.ids["undecodable"]]
    tasks = dequeue_all(fixed)  # the retired message goes to its handler on the way
    assert [fixed.execute(t) for t in tasks] == ["sent to +32 470 12 34 56"]
    [retired] = importlib.import_module(queue.fixed).RETIRED
    assert (retired.task, retired.payload) == ("reports.legacy_export", {"quarter": "2023-Q4"})


def test_replay_all_with_a_reason_replays_only_those(runner: CliRunner, queue: Queue) -> None:
    result = invoke(
        runner,
        "dlq",
        "replay",
        "--all",
        "--reason",
        "unknown_task",
        "--app",
        f"{queue.fixed}:huey",
    )
    assert result.exit_code == 0, result.output
    assert "Replayed 1 of 1; 0 still fail" in result.output
    assert sorted(e.reason for e in queue.app.dead_letters) == ["retired", "undecodable"]


def test_dry_run_reports_each_fate_and_changes_nothing(runner: CliRunner, queue: Queue) -> None:
    before = [(e.id, e.reason, e.error) for e in queue.app.dead_letters]
    result = invoke(runner, "dlq", "replay", "--all", "--dry-run", "--app", f"{queue.fixed}:huey")
    assert result.exit_code == 1, result.output
    out = result.output
    assert re.search(
        rf"{queue.ids['unknown_task']} .*would run as notifications.send_sms v1 with "
        rf"\(phone='\+32 470 12 34 56'\)",
        out,
    )
    assert re.search(
        rf"{queue.ids['retired']} .*would go to the tombstone handler of "
        rf"'reports.legacy_export'",
        out,
    )
    assert re.search(rf"{queue.ids['undecodable']} .*would fail again \(undecodable\)", out)
    assert "Dry run: 2 of 3 would be replayed, 1 would fail; nothing was changed." in out
    assert [(e.id, e.reason, e.error) for e in queue.app.dead_letters] == before
    assert queue.app.pending_count() == 0


def test_dry_run_that_would_work_exits_0(runner: CliRunner, queue: Queue) -> None:
    entry_id = queue.ids["unknown_task"]
    result = invoke(runner, "dlq", "replay", entry_id, "--dry-run", "--app", f"{queue.fixed}:huey")
    assert result.exit_code == 0, result.output
    assert "would run as notifications.send_sms v1" in result.output
    assert queue.app.dead_letters.get(entry_id).reason == "unknown_task"
    assert queue.app.pending_count() == 0


def test_dry_run_names_the_rename_and_upcast_that_would_apply(
    runner: CliRunner, queue: Queue, write_app: WriteApp
) -> None:
    renamed = write_app(
        """
        @huey.versioned_task(version=2, name="notifications.send_text")
        def send_text(phone: str, channel: str) -> None: ...

        @huey.upcaster("notifications.send_text", from_version=1)
        def add_channel(payload: dict) -> dict:
            return {**payload, "channel": "sms"}

        huey.rename("notifications.send_sms", "notifications.send_text")
        huey.tombstone("reports.legacy_export")
        """
    )
    entry_id = queue.ids["unknown_task"]
    result = invoke(runner, "dlq", "replay", entry_id, "--dry-run", "--app", f"{renamed}:huey")
    assert result.exit_code == 0, result.output
    assert (
        "would run as notifications.send_text v2, renamed from notifications.send_sms, "
        "upcast 1->2 with (phone='+32 470 12 34 56', channel='sms')"
    ) in " ".join(result.output.split())


def test_replay_needs_an_id_or_all(runner: CliRunner, queue: Queue) -> None:
    neither = invoke(runner, "dlq", "replay", "--app", f"{queue.fixed}:huey")
    both = invoke(runner, "dlq", "replay", "x", "--all", "--app", f"{queue.fixed}:huey")
    for result in (neither, both):
        assert result.exit_code == 2
        assert "Give either a dead-letter ID or --all." in result.output


def test_replay_of_an_unknown_id_exits_2(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "replay", "nope", "--app", f"{queue.fixed}:huey")
    assert_one_line_error(result, r"No dead-letter entry with id 'nope'")


def test_replay_with_inconsistent_schemas_exits_2(
    runner: CliRunner, queue: Queue, write_app: WriteApp
) -> None:
    broken = write_app('huey.rename("notifications.send_sms", "notifications.nowhere")\n')
    result = invoke(runner, "dlq", "replay", "--all", "--app", f"{broken}:huey")
    assert_one_line_error(result, r"^Error: 1 schema problem\(s\): - rename")
    assert len(queue.app.dead_letters) == 3


def test_replay_of_an_empty_store_exits_0(runner: CliRunner, write_app: WriteApp) -> None:
    module = write_app(FIXED_CODE)
    result = invoke(runner, "dlq", "replay", "--all", "--app", f"{module}:huey")
    assert result.exit_code == 0, result.output
    assert "No dead letters to replay." in result.output


# -- dlq purge -----------------------------------------------------------------------


def test_purge_with_yes_deletes_every_entry(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "purge", "--yes", "--app", f"{queue.new}:huey")
    assert result.exit_code == 0, result.output
    assert "Deleted 3 dead letters from queue 'cli'." in result.output
    assert len(queue.app.dead_letters) == 0


def test_purge_asks_first_and_keeps_entries_when_declined(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "purge", "--app", f"{queue.new}:huey", input="n\n")
    assert result.exit_code == 1, result.output
    assert "Delete all 3 dead letters of queue 'cli'?" in result.output
    assert "Nothing was deleted." in result.output
    assert len(queue.app.dead_letters) == 3


def test_purge_deletes_when_confirmed(runner: CliRunner, queue: Queue) -> None:
    result = invoke(runner, "dlq", "purge", "--app", f"{queue.new}:huey", input="y\n")
    assert result.exit_code == 0, result.output
    assert len(queue.app.dead_letters) == 0


# -- --app ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_path", "pattern"),
    [
        ("vt_cli_no_such_module.huey", r"Could not import module 'vt_cli_no_such_module'"),
        ("{module}:nope", r"Module '{module}' has no attribute 'nope'"),
        (
            "{module}:VersionedSqliteHuey",
            r"is the class VersionedSqliteHuey, not a VersionedHuey instance",
        ),
        ("{module}:huey.name", r"is a str, not a VersionedHuey instance"),
        ("justaname", r"'justaname' is not a 'package.module.attribute'"),
        ("{module}:", r"is not a 'package.module.attribute'"),
    ],
)
def test_a_bad_app_path_exits_2_with_one_line(
    runner: CliRunner, write_app: WriteApp, app_path: str, pattern: str
) -> None:
    module = write_app(NEW_CODE)
    result = invoke(runner, "dlq", "list", "--app", app_path.format(module=module))
    assert_one_line_error(result, "^Error: " + ".*" + pattern.format(module=module))


def test_an_app_module_that_fails_to_import_exits_2(
    runner: CliRunner, write_app: WriteApp
) -> None:
    module = write_app(source="raise RuntimeError('database url missing')\n")
    result = invoke(runner, "dlq", "list", "--app", f"{module}:huey")
    assert_one_line_error(
        result, rf"Could not import module '{module}' .*RuntimeError: database url missing"
    )


def test_app_paths_take_the_dotted_and_the_colon_form(runner: CliRunner, queue: Queue) -> None:
    for app_path in (f"{queue.new}.huey", f"{queue.new}:huey"):
        result = invoke(runner, "dlq", "list", "--json", "--app", app_path)
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)) == 3


def test_the_app_is_imported_from_the_current_directory(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"vt_cli_cwd_{uuid.uuid4().hex[:12]}"
    source = APP_MODULE.format(filename=str(tmp_path / "cwd.db"), body=NEW_CODE)
    (tmp_path / f"{name}.py").write_text(source)
    importlib.invalidate_caches()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    try:
        result = invoke(runner, "dlq", "list", "--app", f"{name}:huey")
    finally:
        sys.modules.pop(name, None)
    assert result.exit_code == 0, result.output
    assert "No dead letters" in result.output


# -- the library underneath ------------------------------------------------------------


def test_deserialize_task_of_a_retired_message_with_a_handler_does_not_deny_the_handler(
    queue: Queue,
) -> None:
    """deserialize_task (used by --dry-run) must not say a tombstone has no handler when it has."""
    fixed = app_of(queue.fixed)
    raw = fixed.dead_letters.get(queue.ids["retired"]).raw
    with pytest.raises(MessageRejected, match="retired") as caught:
        fixed.deserialize_task(raw)
    assert "has no handler" not in str(caught.value)


# -- demo ----------------------------------------------------------------------------


def test_demo_tells_every_outcome_and_keeps_its_file(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(
        runner, "demo", "--dir", str(tmp_path / "demo"), "--keep", env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for outcome in (
        "upcast 1->2, ran as billing.send_invoice v2 with invoice_id=1001, amount_cents=1200, "
        "currency='EUR'",
        "renamed billing.send_bill -> billing.send_invoice, upcast 1->2, ran as "
        "billing.send_invoice v2",
        "billing.send_invoice v1, due in 2s",
        "ran as billing.send_invoice v2 with invoice_id=1005, amount_cents=4200, currency='USD'",
        "retired: the tombstone handler got reports.legacy_export v1",
        "dead-lettered as unknown_task",
        "dead-lettered as undecodable: Truncated envelope",
        "dead-lettered as undecodable: Legacy pickle data",
        "Replayed dead letter",
        "ran as notifications.send_sms v1",
        "All 8 messages accounted for",
    ):
        assert outcome in out
    kept = tmp_path / "demo" / "versioned-tasks-demo.db"
    assert kept.exists()
    app = VersionedSqliteHuey("demo", filename=str(kept))
    assert sorted(e.reason for e in app.dead_letters) == ["undecodable", "undecodable"]
    assert app.pending_count() == 0
    assert app.scheduled_count() == 0
