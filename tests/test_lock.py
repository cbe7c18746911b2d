"""The schema lock: ``versioned-tasks lock``, ``check`` and ``schema`` on real apps.

Each test writes app modules (unique names, so imports never hit a cached
module) into ``tmp_path``, which is also the current directory: "the code
when the lock was written", then "the code of the next commit", and runs the
commands in-process with click's CliRunner.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Required

import pytest
from click.testing import CliRunner, Result
from helpers import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from versioned_tasks import ConfigurationError, LockFileError, VersionedHuey
from versioned_tasks.cli import main
from versioned_tasks.ops.lock import (
    DEFAULT_LOCK_PATH,
    build_lock,
    check_lock,
    read_lock,
    version_schema,
    write_lock,
)
from versioned_tasks.schema.diff import classify

APP_MODULE = """\
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("lock-tests")
{body}
"""

WriteApp = Callable[[str], str]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteApp]:
    """Write an app module into tmp_path (the current directory); returns its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(body: str) -> str:
        name = f"vt_lock_app_{uuid.uuid4().hex[:12]}"
        text = APP_MODULE.format(body=textwrap.dedent(body))
        (tmp_path / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False)


def app_of(module: str) -> VersionedHuey:
    app = importlib.import_module(module).huey
    assert isinstance(app, VersionedHuey)
    return app


def lock(runner: CliRunner, module: str, *options: str) -> Result:
    result = invoke(runner, "lock", "--app", f"{module}:huey", *options)
    assert result.exit_code == 0, result.output
    return result


def check(runner: CliRunner, module: str, *options: str) -> Result:
    return invoke(runner, "check", "--app", f"{module}:huey", *options)


def lock_then_check(runner: CliRunner, write_app: WriteApp, before: str, after: str) -> Result:
    """Lock the code ``before``, then check the code ``after`` against that lock."""
    lock(runner, write_app(before))
    return check(runner, write_app(after))


def problem_lines(result: Result) -> list[str]:
    """The output lines that are problems (not notes, not the summary)."""
    return [
        line
        for line in result.stdout.splitlines()
        if line
        and not line.startswith(("note: ", "Run `versioned-tasks makemigrations"))
        and "checked against" not in line
    ]


def assert_one_line_error(result: Result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


INVOICE_V1 = """
@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str = "EUR") -> None: ...
"""

EXPORT_V1 = """
@huey.versioned_task(version=1, name="reports.export")
def export(quarter: str) -> None: ...
"""


# -- lock ------------------------------------------------------------------------------


def test_lock_writes_a_sorted_indented_file_with_the_contracted_shape(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """The lock file is JSON with sorted keys, two-space indents and a trailing newline."""
    module = write_app(INVOICE_V1 + EXPORT_V1 + "\nhuey.tombstone('reports.legacy')\n")
    result = lock(runner, module)
    assert result.stdout.splitlines() == [
        "+ billing.send_invoice v1 (new task)",
        "+ reports.export v1 (new task)",
        "+ tombstone reports.legacy",
        f"Created {DEFAULT_LOCK_PATH} (2 tasks, 0 renames, 1 tombstones).",
    ]
    text = (tmp_path / DEFAULT_LOCK_PATH).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert set(data) == {"lock_format", "tasks", "renames", "tombstones"}
    assert (data["lock_format"], data["renames"], data["tombstones"]) == (
        1,
        {},
        ["reports.legacy"],
    )
    entry = data["tasks"]["billing.send_invoice"]
    assert entry["version"] == 1
    assert entry["upcasters_from"] == []
    assert entry["allow_compatible_changes"] is False
    [(version, recorded)] = entry["versions"].items()
    assert version == "1"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", recorded["fingerprint"])
    assert recorded["schema"]["properties"]["invoice_id"]["type"] == "integer"
    assert recorded["schema"]["required"] == ["invoice_id"]


def test_lock_again_on_the_same_code_changes_nothing(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """A second lock of the same code leaves the file's bytes alone and says so."""
    module = write_app(INVOICE_V1)
    lock(runner, module)
    before = (tmp_path / DEFAULT_LOCK_PATH).read_bytes()
    result = lock(runner, module)
    assert result.stdout.strip() == (
        f"{DEFAULT_LOCK_PATH} is up to date (1 tasks, 0 renames, 0 tombstones)."
    )
    assert (tmp_path / DEFAULT_LOCK_PATH).read_bytes() == before


def test_lock_takes_another_path(runner: CliRunner, write_app: WriteApp, tmp_path: Path) -> None:
    """--lock PATH writes (and check reads) that file instead of the default one."""
    module = write_app(INVOICE_V1)
    lock(runner, module, "--lock", "locks/tasks.lock")
    assert (tmp_path / "locks" / "tasks.lock").exists()
    assert not (tmp_path / DEFAULT_LOCK_PATH).exists()
    assert check(runner, module, "--lock", "locks/tasks.lock").exit_code == 0


def test_lock_prints_what_changed(runner: CliRunner, write_app: WriteApp) -> None:
    """A new lock names each change: versions, schemas, upcasters, renames, tombstones."""
    lock(runner, write_app(INVOICE_V1 + EXPORT_V1))
    module = write_app(
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def add_currency(payload):
            return {"currency": "EUR", **payload}

        @huey.versioned_task(version=1, name="reports.quarterly_export")
        def export(quarter: str) -> None: ...

        huey.rename("reports.export", "reports.quarterly_export")
        """
    )
    result = lock(runner, module)
    assert result.stdout.splitlines() == [
        "~ billing.send_invoice: version 1 -> 2; history keeps v1",
        "~ billing.send_invoice: upcasters_from [] -> [1]",
        "~ reports.export v1: renamed to 'reports.quarterly_export'; its history stays in "
        "the lock",
        "+ reports.quarterly_export v1 (new task)",
        "+ rename reports.export -> reports.quarterly_export",
        f"Wrote {DEFAULT_LOCK_PATH} (2 tasks, 1 renames, 0 tombstones).",
    ]


# -- history -----------------------------------------------------------------------------


def test_history_of_older_versions_is_kept_across_bumps(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """After bumps to v2 and v3, the lock still holds the v1 and v2 schemas as locked."""
    lock(runner, write_app(INVOICE_V1))
    first = read_lock(tmp_path / DEFAULT_LOCK_PATH)
    v1 = first["tasks"]["billing.send_invoice"]["versions"]["1"]
    lock(
        runner,
        write_app(
            """
            @huey.versioned_task(version=2, name="billing.send_invoice")
            def send_invoice(invoice_id: int, currency: str) -> None: ...

            @huey.upcaster("billing.send_invoice", from_version=1)
            def v1_to_v2(payload):
                return {"currency": "EUR", **payload}
            """
        ),
    )
    module = write_app(
        """
        @huey.versioned_task(version=3, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str, amount_cents: int) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1_to_v2(payload):
            return {"currency": "EUR", **payload}

        @huey.upcaster("billing.send_invoice", from_version=2)
        def v2_to_v3(payload):
            return {"amount_cents": 0, **payload}
        """
    )
    lock(runner, module)
    data = read_lock(tmp_path / DEFAULT_LOCK_PATH)
    entry = data["tasks"]["billing.send_invoice"]
    assert (entry["version"], entry["upcasters_from"]) == (3, [1, 2])
    assert sorted(entry["versions"]) == ["1", "2", "3"]
    assert entry["versions"]["1"] == v1
    assert version_schema(data, "billing.send_invoice", 1) == v1["schema"]
    assert "currency" in version_schema(data, "billing.send_invoice", 2)["required"]
    assert "amount_cents" in version_schema(data, "billing.send_invoice", 3)["required"]
    assert version_schema(data, "billing.send_invoice", 4) is None
    assert version_schema(data, "no.such_task", 1) is None
    assert check(runner, module).exit_code == 0


def test_a_renamed_task_inherits_the_history_of_its_old_name(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """After rename('a', 'b'), b's entry keeps a's older versions; a's entry stays as it was."""
    lock(
        runner,
        write_app(
            """
            @huey.versioned_task(version=1, name="reports.export")
            def export(quarter: str) -> None: ...
            """
        ),
    )
    first = read_lock(tmp_path / DEFAULT_LOCK_PATH)["tasks"]["reports.export"]
    module = write_app(
        """
        @huey.versioned_task(version=2, name="reports.quarterly_export")
        def export(quarter: str, year: int) -> None: ...

        @huey.upcaster("reports.quarterly_export", from_version=1)
        def add_year(payload):
            return {"year": 2024, **payload}

        huey.rename("reports.export", "reports.quarterly_export")
        """
    )
    assert check(runner, module).exit_code == 0
    lock(runner, module)
    data = read_lock(tmp_path / DEFAULT_LOCK_PATH)
    assert list(data["tasks"]) == ["reports.export", "reports.quarterly_export"]
    assert data["tasks"]["reports.export"] == first
    assert sorted(data["tasks"]["reports.quarterly_export"]["versions"]) == ["1", "2"]
    assert data["renames"] == {"reports.export": "reports.quarterly_export"}


def test_build_lock_keeps_the_history_given_to_it(write_app: WriteApp) -> None:
    """build_lock(huey, previous) keeps previous's older versions; write/read round-trips."""
    old = build_lock(app_of(write_app(INVOICE_V1)))
    new_app = app_of(
        write_app(
            """
            @huey.versioned_task(version=2, name="billing.send_invoice")
            def send_invoice(invoice_id: int) -> None: ...

            @huey.upcaster("billing.send_invoice", from_version=1)
            def drop_currency(payload):
                return {"invoice_id": payload["invoice_id"]}
            """
        )
    )
    new = build_lock(new_app, old)
    versions = new["tasks"]["billing.send_invoice"]["versions"]
    assert versions["1"] == old["tasks"]["billing.send_invoice"]["versions"]["1"]
    assert sorted(versions) == ["1", "2"]
    write_lock("round-trip.lock", new)
    assert read_lock("round-trip.lock") == new
    assert build_lock(app_of(write_app(INVOICE_V1)), None)["tasks"] == old["tasks"]


# -- check: no problem -----------------------------------------------------------------------


def test_check_passes_when_nothing_changed(runner: CliRunner, write_app: WriteApp) -> None:
    """The same code as locked: exit 0, one summary line."""
    result = lock_then_check(runner, write_app, INVOICE_V1, INVOICE_V1)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"No problems; 1 tasks checked against {DEFAULT_LOCK_PATH}."
    ]


def test_a_new_task_is_a_note_not_a_problem(runner: CliRunner, write_app: WriteApp) -> None:
    """A task declared since the lock passes, with a note and a hint to refresh the lock."""
    result = lock_then_check(runner, write_app, INVOICE_V1, INVOICE_V1 + EXPORT_V1)
    assert result.exit_code == 0, result.output
    assert "note: Task 'reports.export' version 1 is new." in result.stdout
    assert "run `versioned-tasks lock` to record these changes" in result.stdout


def test_a_stale_lock_with_new_upcasters_passes(runner: CliRunner, write_app: WriteApp) -> None:
    """Only upcasters added (no version change): nothing breaks, so check passes."""
    result = lock_then_check(
        runner,
        write_app,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...
        """,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return payload
        """,
    )
    assert result.exit_code == 0, result.output
    assert problem_lines(result) == []
    assert "The lock is out of date" in result.stdout


def test_a_renamed_python_function_is_cosmetic(runner: CliRunner, write_app: WriteApp) -> None:
    """Only the schema's title changed (the function's name): check passes with a note."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(version=1, name="billing.send_invoice")
        def send_the_invoice(invoice_id: int, currency: str = "EUR") -> None: ...
        """,
    )
    assert result.exit_code == 0, result.output
    assert (
        "note: Task 'billing.send_invoice' version 1: only annotations changed (titles, "
        "descriptions, examples, x- keys)." in result.stdout
    )


# -- check: the four problems -------------------------------------------------------------------


def test_schema_changed_without_a_bump_is_caught_as_breaking(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(a) A field removed at the same version: exit 1, the breaking change and the fix."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(version=1, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' version 1: its argument schema changed without a version "
        "bump, a breaking change ('currency' removed: messages that carry it would be refused "
        "(extra keys are forbidden)); messages already written at version 1 may not validate "
        "any more. Raise the version to 2 with @huey.upcaster('billing.send_invoice', "
        "from_version=1); then run `versioned-tasks lock`."
    ]
    summary, hint = result.stdout.splitlines()[-2:]
    assert summary == f"1 problem(s); 1 tasks checked against {DEFAULT_LOCK_PATH}."
    assert re.fullmatch(
        r"Run `versioned-tasks makemigrations --app \S+` to write the missing steps\.", hint
    )


def test_a_compatible_change_without_a_bump_needs_the_opt_in(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(a) An optional field added at the same version fails without the task's opt-in."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(version=1, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str = "EUR", note: str = "") -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' version 1: its argument schema changed without a version "
        "bump, a backward-compatible change ('note' added as an optional field). Opt in with "
        "@huey.versioned_task(version=1, allow_compatible_changes=True) if every worker runs "
        "the new code before any message uses the change, or raise the version to 2 with "
        "@huey.upcaster('billing.send_invoice', from_version=1); then run "
        "`versioned-tasks lock`."
    ]


def test_the_opt_in_lets_a_compatible_change_pass(runner: CliRunner, write_app: WriteApp) -> None:
    """allow_compatible_changes=True: the compatible change passes, with a note."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(
            version=1, name="billing.send_invoice", allow_compatible_changes=True
        )
        def send_invoice(invoice_id: int, currency: str = "EUR", note: str = "") -> None: ...
        """,
    )
    assert result.exit_code == 0, result.output
    assert (
        "note: Task 'billing.send_invoice' version 1: backward-compatible change allowed by "
        "allow_compatible_changes=True ('note' added as an optional field); a worker still "
        "running the locked code dead-letters a message that uses it (invalid_payload), so "
        "every worker must run this code before any producer does." in result.stdout
    )


def test_the_opt_in_does_not_let_a_breaking_change_pass(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """allow_compatible_changes=True does not cover a breaking change."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(
            version=1, name="billing.send_invoice", allow_compatible_changes=True
        )
        def send_invoice(invoice_id: str, currency: str = "EUR") -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert "a breaking change ('invoice_id' changed from integer to string)" in line


def test_the_opt_in_is_recorded_and_a_fresh_lock_accepts_the_change(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """After an allowed compatible change, `lock` records the new schema and the flag."""
    lock(runner, write_app(INVOICE_V1))
    module = write_app(
        """
        @huey.versioned_task(
            version=1, name="billing.send_invoice", allow_compatible_changes=True
        )
        def send_invoice(invoice_id: int | None, currency: str = "EUR") -> None: ...
        """
    )
    result = lock(runner, module)
    assert result.stdout.splitlines()[:2] == [
        "~ billing.send_invoice v1: schema changed, compatible ('invoice_id' widened from "
        "integer to integer | null)",
        "~ billing.send_invoice: allow_compatible_changes false -> true",
    ]
    data = read_lock(tmp_path / DEFAULT_LOCK_PATH)
    assert data["tasks"]["billing.send_invoice"]["allow_compatible_changes"] is True
    assert sorted(data["tasks"]["billing.send_invoice"]["versions"]) == ["1"]
    assert check(runner, module).stdout.startswith("No problems")


def test_a_bump_without_an_upcaster_is_caught(runner: CliRunner, write_app: WriteApp) -> None:
    """(b) Version 1 -> 2 with no upcaster from 1: exit 1, naming the missing step."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' went from version 1 (locked) to 2 with no upcaster from "
        "version 1 to 2, so messages written at version 1 would be dead-lettered; register "
        "@huey.upcaster('billing.send_invoice', from_version=1), then run "
        "`versioned-tasks lock`."
    ]


def test_a_bump_needs_a_chain_from_every_locked_version(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(b) Locked at v2 with a chain from v1; v3 needs upcasters from 1 and 2 to 3."""
    result = lock_then_check(
        runner,
        write_app,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return {"currency": "EUR", **payload}
        """,
        """
        @huey.versioned_task(version=3, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str, note: str) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=2)
        def v2(payload):
            return {"note": "", **payload}
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' went from version 2 (locked) to 3 with no upcaster from "
        "version 1 to 2, so messages written at version 1 would be dead-lettered; register "
        "@huey.upcaster('billing.send_invoice', from_version=1), then run "
        "`versioned-tasks lock`."
    ]


def test_a_bump_with_the_whole_chain_passes(runner: CliRunner, write_app: WriteApp) -> None:
    """(b) Version 1 -> 3 with upcasters from 1 and 2: exit 0, with a note."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        """
        @huey.versioned_task(version=3, name="billing.send_invoice")
        def send_invoice(invoice_id: int, currency: str, note: str) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return payload

        @huey.upcaster("billing.send_invoice", from_version=2)
        def v2(payload):
            return {"note": "", **payload}
        """,
    )
    assert result.exit_code == 0, result.output
    assert (
        "note: Task 'billing.send_invoice' went from version 1 to 3, with upcasters from "
        "every locked version." in result.stdout
    )


def test_an_upcaster_removed_at_the_same_version_is_caught(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(b) The lock had a chain from v1; deleting the upcaster strands v1 messages."""
    result = lock_then_check(
        runner,
        write_app,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return payload
        """,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' version 2: the lock has an upcaster chain from version 1, "
        "but there is no upcaster from version 1 to 2 any more, so messages written at version "
        "1 would be dead-lettered; restore @huey.upcaster('billing.send_invoice', "
        "from_version=1), or, once no such message can remain in a queue, the schedule or the "
        "dead-letter store, run `versioned-tasks lock` to accept it."
    ]


def test_a_task_gone_without_rename_or_tombstone_is_caught(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(c) A locked task disappeared: exit 1, naming the three fixes."""
    result = lock_then_check(runner, write_app, INVOICE_V1 + EXPORT_V1, INVOICE_V1)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'reports.export' (version 1 in the lock) is gone, with no rename or tombstone: "
        "its messages still in a queue, the schedule or the dead-letter store would be "
        "dead-lettered as unknown_task; declare it again, or add huey.rename('reports.export', "
        "'new.name') or huey.tombstone('reports.export'), then run `versioned-tasks lock`."
    ]


@pytest.mark.parametrize(
    "redirect",
    [
        pytest.param("huey.tombstone('reports.export')", id="tombstone"),
        pytest.param(
            """
            @huey.tombstone("reports.export")
            def archive(retired):
                pass
            """,
            id="tombstone-with-handler",
        ),
        pytest.param(
            """
            @huey.versioned_task(version=1, name="reports.quarterly_export")
            def export(quarter: str) -> None: ...

            huey.rename("reports.export", "reports.quarterly_export")
            """,
            id="rename",
        ),
    ],
)
def test_a_task_retired_or_renamed_is_not_a_problem(
    runner: CliRunner, write_app: WriteApp, redirect: str
) -> None:
    """(c) A tombstone or a rename accounts for a task that is no longer declared."""
    after = INVOICE_V1 + textwrap.dedent(redirect)
    result = lock_then_check(runner, write_app, INVOICE_V1 + EXPORT_V1, after)
    assert result.exit_code == 0, result.output
    assert problem_lines(result) == []


def test_a_rename_that_changes_the_schema_is_checked_under_the_new_name(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(a) Old messages run as the new task: a breaking change at the same version fails."""
    result = lock_then_check(
        runner,
        write_app,
        EXPORT_V1,
        """
        @huey.versioned_task(version=1, name="reports.quarterly_export")
        def export(quarter: int) -> None: ...

        huey.rename("reports.export", "reports.quarterly_export")
        """,
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith(
        "Task 'reports.export' (renamed to 'reports.quarterly_export') version 1: its "
        "argument schema changed without a version bump, a breaking change ('quarter' "
        "changed from string to integer)"
    )
    assert "@huey.upcaster('reports.quarterly_export', from_version=1)" in line


def test_a_rename_or_tombstone_gone_from_the_app_is_caught(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(c) A locked rename or tombstone removed while its messages may still exist."""
    before = """
        @huey.versioned_task(version=1, name="reports.quarterly_export")
        def export(quarter: str) -> None: ...

        huey.rename("reports.export", "reports.quarterly_export")
        huey.tombstone("reports.legacy")
        """
    after = """
        @huey.versioned_task(version=1, name="reports.quarterly_export")
        def export(quarter: str) -> None: ...
        """
    result = lock_then_check(runner, write_app, before, after)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "The rename 'reports.export' -> 'reports.quarterly_export' in the lock is gone and "
        "'reports.export' is not declared or tombstoned: messages written under "
        "'reports.export' would be dead-lettered as unknown_task; restore "
        "huey.rename('reports.export', 'reports.quarterly_export') or add "
        "huey.tombstone('reports.export'), then run `versioned-tasks lock`.",
        "The tombstone of 'reports.legacy' in the lock is gone and 'reports.legacy' is not "
        "declared or renamed: its messages would be dead-lettered as unknown_task instead of "
        "retired; restore huey.tombstone('reports.legacy'), then run `versioned-tasks lock`.",
    ]


def lock_each_then_check(runner: CliRunner, write_app: WriteApp, *stages: str) -> Result:
    """Lock each stage of the code in turn, then check the last stage."""
    modules = [write_app(stage) for stage in stages]
    for module in modules[:-1]:
        lock(runner, module)
    return check(runner, modules[-1])


A_V1 = """
@huey.versioned_task(version=1, name="a")
def a(x: int) -> None: ...
"""

A_RENAMED_TO_B = """
huey.rename("a", "b")

@huey.versioned_task(version=1, name="b")
def b(x: int) -> None: ...
"""


def test_a_rename_that_leads_elsewhere_now_is_compared_with_the_new_target(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(1) The lock renames a to b; the app renames a to c, whose arguments differ."""
    result = lock_each_then_check(
        runner,
        write_app,
        A_V1,
        A_RENAMED_TO_B,
        """
        huey.rename("a", "c")

        @huey.versioned_task(version=1, name="b")
        def b(x: int) -> None: ...

        @huey.versioned_task(version=1, name="c")
        def c(y: str) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'a' (renamed to 'c'; the lock renames it to 'b') version 1: messages written as "
        "'a' at version 1 would be validated by 'c' version 1, but the version-1 schemas of "
        "'a' and 'c' differ in a breaking way ('y' added as a required field; 'x' removed: "
        "messages that carry it would be refused (extra keys are forbidden)), so they would "
        "be dead-lettered; restore huey.rename('a', 'b'), or rename 'a' to a task its "
        "messages fit, or replace the rename by huey.tombstone('a') with a handler that "
        "enqueues 'c' with converted arguments; once no message written as 'a' can remain, "
        "drop the rename and run `versioned-tasks lock`."
    ]


def test_a_rename_that_leads_to_a_task_its_messages_fit_passes(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(1) Retargeted to a task with the same arguments: nothing is stranded."""
    result = lock_each_then_check(
        runner,
        write_app,
        A_V1,
        A_RENAMED_TO_B,
        """
        huey.rename("a", "c")

        @huey.versioned_task(version=1, name="b")
        def b(x: int) -> None: ...

        @huey.versioned_task(version=1, name="c")
        def c(x: int) -> None: ...
        """,
    )
    assert result.exit_code == 0, result.output


def test_a_retargeted_rename_without_history_of_its_own_uses_the_old_targets(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(1) a was renamed before it was ever locked: b's locked history stands for it."""
    result = lock_each_then_check(
        runner,
        write_app,
        A_RENAMED_TO_B,
        """
        huey.rename("a", "c")

        @huey.versioned_task(version=1, name="b")
        def b(x: int) -> None: ...

        @huey.versioned_task(version=1, name="c")
        def c(x: str) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith(
        "Task 'a' (renamed to 'c'; the lock renames it to 'b') version 1: messages written as "
        "'a' at version 1 would be validated by 'c' version 1, but the version-1 schemas of "
        "'a' and 'c' differ in a breaking way ('x' changed from integer to string)"
    )


def test_a_rename_from_a_retired_name_to_a_task_cannot_be_compared(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(1) The lock led a to a tombstone; now it leads to a task: the fix names both."""
    result = lock_each_then_check(
        runner,
        write_app,
        'huey.rename("a", "b")\nhuey.tombstone("b")\n',
        'huey.rename("a", "c")\nhuey.tombstone("b")\n\n'
        '@huey.versioned_task(version=1, name="c")\ndef c(x: int) -> None: ...\n',
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "The rename 'a' -> 'b' in the lock now leads to 'c': messages written under 'a' would "
        "run as 'c', and the lock has no schema of them to compare with 'c''s; restore "
        "huey.rename('a', 'b'), or, once no message written under 'a' can remain, run "
        "`versioned-tasks lock` to accept it."
    ]


B_V1 = """
@huey.versioned_task(version=1, name="b")
def b(y: str) -> None: ...
"""

B_V2 = """
@huey.versioned_task(version=2, name="b")
def b(y: str, z: int) -> None: ...

@huey.upcaster("b", from_version=1)
def b_from_v1(payload):
    return {**payload, "z": 0}
"""


def test_a_task_renamed_into_another_locked_task_is_compared_at_each_version(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(2) a's v1 messages would go through b's upcaster from v1, written for b's v1."""
    result = lock_each_then_check(
        runner, write_app, A_V1 + B_V1, A_V1 + B_V2, 'huey.rename("a", "b")\n' + B_V2
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'a' (renamed to 'b') version 1: messages written as 'a' at version 1 would go "
        "through the upcaster of 'b' from version 1, but the version-1 schemas of 'a' and 'b' "
        "differ in a breaking way ('y' added as a required field; 'x' removed: messages that "
        "carry it would be refused (extra keys are forbidden)), so they would be "
        "dead-lettered; rename 'a' to a task its messages fit, or replace the rename by "
        "huey.tombstone('a') with a handler that enqueues 'b' with converted arguments; once "
        "no message written as 'a' can remain, drop the rename and run `versioned-tasks lock`."
    ]


def test_a_task_renamed_into_a_task_with_no_history_at_its_version_fails(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(2) The lock never saw b at version 1: a's v1 messages cannot be shown to fit."""
    result = lock_each_then_check(runner, write_app, A_V1 + B_V2, 'huey.rename("a", "b")\n' + B_V2)
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith(
        "Task 'a' (renamed to 'b') version 1: messages written as 'a' at version 1 would go "
        "through the upcaster of 'b' from version 1, but the lock has no schema of 'b' at "
        "version 1 to show that they fit; rename 'a' to a task its messages fit"
    )


def test_a_task_renamed_into_another_at_the_same_version_is_compared(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(2) Both at version 1: a's messages would be validated by b's model of today."""
    result = lock_each_then_check(runner, write_app, A_V1 + B_V1, 'huey.rename("a", "b")\n' + B_V1)
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith(
        "Task 'a' (renamed to 'b') version 1: messages written as 'a' at version 1 would be "
        "validated by 'b' version 1, but the version-1 schemas of 'a' and 'b' differ"
    )


def test_a_task_renamed_into_one_its_messages_fit_passes(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(2) a's v1 arguments are b's v1 arguments: the merge strands nothing; it stays quiet."""
    a_like_b = '@huey.versioned_task(version=1, name="a")\ndef a(y: str) -> None: ...\n'
    merged = 'huey.rename("a", "b")\n' + B_V2
    result = lock_each_then_check(runner, write_app, a_like_b + B_V1, a_like_b + B_V2, merged)
    assert result.exit_code == 0, result.output
    assert problem_lines(result) == []
    lock(runner, write_app(merged))
    again = check(runner, write_app(merged))
    assert again.stdout.splitlines() == [
        "No problems; 1 tasks checked against versioned-tasks.lock."
    ]


def test_a_task_renamed_to_a_plain_huey_task_is_a_note(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """(7) The plain task takes the messages, as the worker and check_schemas() allow."""
    module = write_app("")
    plain = f"""
        @huey.task()
        def export(*args, **kwargs) -> None: ...

        huey.rename("a", "{module}.export")
        """
    lock(runner, write_app(A_V1))
    module_text = APP_MODULE.format(body=textwrap.dedent(plain))
    (tmp_path / f"{module}.py").write_text(module_text)
    sys.modules.pop(module, None)
    result = check(runner, module)
    assert result.exit_code == 0, result.output
    assert (
        f"note: Task 'a' (version 1 in the lock) is renamed to the plain Huey task "
        f"'{module}.export', which takes its messages' arguments as they are (they are not "
        f"validated)." in result.stdout
    )
    lock(runner, module)
    assert read_lock(tmp_path / DEFAULT_LOCK_PATH)["tasks"]["a"]["version"] == 1
    assert check(runner, module).stdout.startswith("No problems")


def test_the_history_of_retired_and_renamed_names_stays_in_the_lock(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """(11) Tombstoned and renamed-away names keep their entries; removed ones lose theirs."""
    lock(runner, write_app(A_V1 + EXPORT_V1 + INVOICE_V1))
    before = read_lock(tmp_path / DEFAULT_LOCK_PATH)["tasks"]
    module = write_app(
        'huey.tombstone("reports.export")\n'
        'huey.rename("billing.send_invoice", "billing.invoice")\n'
        '@huey.versioned_task(version=1, name="billing.invoice")\n'
        'def invoice(invoice_id: int, currency: str = "EUR") -> None: ...\n'
    )
    result = lock(runner, module)
    assert result.stdout.splitlines() == [
        "- a v1 (removed, with no rename or tombstone)",
        "+ billing.invoice v1 (new task)",
        "~ billing.send_invoice v1: renamed to 'billing.invoice'; its history stays in the lock",
        "~ reports.export v1: tombstoned; its history stays in the lock",
        "+ rename billing.send_invoice -> billing.invoice",
        "+ tombstone reports.export",
        f"Wrote {DEFAULT_LOCK_PATH} (1 tasks, 1 renames, 1 tombstones).",
    ]
    data = read_lock(tmp_path / DEFAULT_LOCK_PATH)
    assert sorted(data["tasks"]) == ["billing.invoice", "billing.send_invoice", "reports.export"]
    assert data["tasks"]["reports.export"] == before["reports.export"]
    assert data["tasks"]["billing.send_invoice"] == before["billing.send_invoice"]
    assert check(runner, module, "--frozen").exit_code == 0
    # The old names' schemas are still exported, for consumers and payloads().
    exported = invoke(runner, "schema", "--app", f"{module}:huey", "--task", "reports.export")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["reports.export"]["1"]["required"] == ["quarter"]
    assert version_schema(data, "billing.send_invoice", 1) is not None


def test_check_frozen_fails_when_lock_would_change_the_file(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(5) --frozen: a lock that is merely out of date fails CI too, with a line saying so."""
    lock(runner, write_app(INVOICE_V1))
    module = write_app(INVOICE_V1 + EXPORT_V1)
    assert check(runner, module).exit_code == 0
    result = check(runner, module, "--frozen")
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "The lock file is out of date: `versioned-tasks lock` would change it (+ reports.export "
        "v1 (new task)); run it and commit the file."
    ]
    lock(runner, module)
    assert check(runner, module, "--frozen").exit_code == 0


def test_check_frozen_adds_nothing_to_real_problems(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """(5) With problems, running `lock` is not the fix: no out-of-date line then."""
    lock(runner, write_app(INVOICE_V1 + EXPORT_V1))
    result = check(runner, write_app(INVOICE_V1), "--frozen")
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith("Task 'reports.export' (version 1 in the lock) is gone")


def test_a_version_that_went_down_is_caught(runner: CliRunner, write_app: WriteApp) -> None:
    """(d) Locked at v2, declared at v1: exit 1 with the expected message."""
    result = lock_then_check(
        runner,
        write_app,
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return payload
        """,
        """
        @huey.versioned_task(version=1, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        "Task 'billing.send_invoice' went down from version 2 (locked) to 1: messages already "
        "written at version 2 would wait as newer_version and then be dead-lettered; restore "
        "version 2 (or go above it with upcasters), then run `versioned-tasks lock`."
    ]


def test_every_problem_gets_its_own_line(runner: CliRunner, write_app: WriteApp) -> None:
    """Several problems at once: one line each, and the count in the summary."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1
        + EXPORT_V1
        + textwrap.dedent(
            """
            @huey.versioned_task(version=2, name="notifications.send_sms")
            def send_sms(phone: str) -> None: ...

            @huey.upcaster("notifications.send_sms", from_version=1)
            def v1(payload):
                return payload
            """
        ),
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        @huey.versioned_task(version=1, name="notifications.send_sms")
        def send_sms(phone: int) -> None: ...
        """,
    )
    assert result.exit_code == 1, result.output
    lines = problem_lines(result)
    assert [line.split(" ", 2)[1] for line in lines] == [
        "'billing.send_invoice'",
        "'notifications.send_sms'",
        "'reports.export'",
    ]
    assert result.stdout.splitlines()[-2].startswith("3 problem(s); 2 tasks checked")


def test_check_lock_returns_problems_with_their_kind(write_app: WriteApp) -> None:
    """The Python API: check_lock(huey, lock) gives Problem(task, kind, message)."""
    locked = build_lock(app_of(write_app(INVOICE_V1 + EXPORT_V1)))
    app = app_of(
        write_app(
            """
            @huey.versioned_task(version=2, name="billing.send_invoice")
            def send_invoice(invoice_id: int) -> None: ...
            """
        )
    )
    problems = check_lock(app, locked)
    assert [(p.task, p.kind) for p in problems] == [
        ("billing.send_invoice", "missing_upcaster"),
        ("reports.export", "task_removed"),
    ]
    assert str(problems[0]) == problems[0].message


def test_declarations_that_do_not_check_are_problems(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """What huey.check_schemas() refuses (a rename to nowhere) fails check with exit 1."""
    result = lock_then_check(
        runner,
        write_app,
        INVOICE_V1,
        INVOICE_V1 + "\nhuey.rename('reports.export', 'reports.nowhere')\n",
    )
    assert result.exit_code == 1, result.output
    assert (
        "rename('reports.export', 'reports.nowhere'): 'reports.nowhere' is not a declared "
        "task; declare it, or tombstone it if it was retired." in problem_lines(result)
    )


# -- classification ----------------------------------------------------------------------------

SIGNATURE = """
@huey.versioned_task(version=1, name="t.task")
def task({params}) -> None: ...
"""

MODEL = """
{models}

@huey.versioned_task(version=1, name="t.task", args_model=Args)
def task(args) -> None: ...
"""


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("a: int", "a: int, b: str = 'x'", "compatible ('b' added as an optional field)"),
        ("a: int", "a: int | None", "compatible ('a' widened from integer to integer | null)"),
        ("a: int", "a: Optional[int] = None", "compatible ('a' is no longer required; 'a' "),
        ("a: int", "a: float", "compatible ('a' widened from integer to number)"),
        ("a: int", "a", "compatible ('a' accepts any value (was integer))"),
        ("a: int, b: str", "a: int, b: str = ''", "compatible ('b' is no longer required)"),
        ("a: list[int]", "a: list[int | str]", "compatible ('a[]' widened from integer to "),
        ("a: Literal['x']", "a: Literal['x', 'y']", "compatible ('a' widened from the constant"),
        ("a: Literal['x', 'y']", "a: str", "compatible ('a' widened from one of 'x', 'y' to "),
        (
            "a: Annotated[str, Field(max_length=5)]",
            "a: Annotated[str, Field(max_length=9)]",
            "compatible ('a' maxLength relaxed to 9)",
        ),
        (
            "a: Annotated[int, Field(ge=0)]",
            "a: int",
            "compatible ('a' has no minimum any more)",
        ),
        ("a: dict[str, int]", "a: dict[str, float]", "compatible ('a.(values)' widened from "),
        ("a: int, b: str = 'x'", "a: int", "breaking ('b' removed: messages that carry it"),
        ("a: int", "a: int, b: str", "breaking ('b' added as a required field)"),
        ("a: int", "b: int", "breaking ('b' added as a required field; 'a' removed"),
        ("a: int = 0", "a: int", "breaking ('a' is now required)"),
        ("a: float", "a: int", "breaking ('a' changed from number to integer)"),
        ("a: int", "a: str", "breaking ('a' changed from integer to string)"),
        ("a: int | None", "a: int", "breaking ('a' no longer accepts null (now integer))"),
        ("a: list[str]", "a: list[int]", "breaking ('a[]' changed from string to integer)"),
        ("a: list[int]", "a: set[int]", "breaking ('a' uniqueItems changed to True)"),
        ("a", "a: int", "breaking ('a' accepts less than before (was any value))"),
        ("a: Literal['x', 'y']", "a: Literal['x']", "breaking ('a' no longer accepts 'y'"),
        ("a: str", "a: Literal['x']", "breaking ('a' is restricted to the constant 'x'"),
        (
            "a: int",
            "a: Annotated[int, Field(ge=0)]",
            "breaking ('a' minimum tightened (to 0))",
        ),
        (
            "a: Annotated[str, Field(max_length=9)]",
            "a: Annotated[str, Field(max_length=5)]",
            "breaking ('a' maxLength tightened to 5)",
        ),
        (
            "a: str",
            "a: Annotated[str, Field(pattern='^[a-z]+$')]",
            "breaking ('a' pattern changed to '^[a-z]+$')",
        ),
        (
            "a: tuple[int, str]",
            "a: tuple[int, str, int]",
            "breaking ('a' minItems tightened to 3; 'a' changed its tuple items)",
        ),
        (
            "a: dict[str, int]",
            "a: dict[Annotated[str, Field(max_length=3)], int]",
            "breaking ('a' has a new 'propertyNames' keyword)",
        ),
        (
            "a: dict[Annotated[str, Field(max_length=3)], int]",
            "a: dict[str, int]",
            "breaking ('a' dropped its 'propertyNames' keyword)",
        ),
    ],
)
def test_signature_changes_are_classified(
    runner: CliRunner, write_app: WriteApp, before: str, after: str, expected: str
) -> None:
    """Each change of a task's parameters at the same version is compatible or breaking."""
    result = lock_then_check(
        runner,
        write_app,
        SIGNATURE.format(params=before),
        SIGNATURE.format(params=after),
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert f"without a version bump, {worded(expected)}" in line


def worded(expected: str) -> str:
    """'compatible (...' -> 'a backward-compatible change (...', as check words it."""
    level, reasons = expected.split(" ", 1)
    return f"a {'backward-compatible' if level == 'compatible' else 'breaking'} change {reasons}"


ADDRESS = """
class Address(BaseModel):
    city: str
{extra}
"""


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            ADDRESS.format(extra="")
            + "class Args(BaseModel):\n    to: Address\n    copy_to: Optional[Address] = None",
            ADDRESS.format(extra="    zip: str = ''")
            + "class Args(BaseModel):\n    to: Address\n    copy_to: Optional[Address] = None",
            "compatible ('copy_to.zip' added as an optional field; 'to.zip' added",
            id="nested-optional-field",
        ),
        pytest.param(
            ADDRESS.format(extra="") + "class Args(BaseModel):\n    to: Address",
            ADDRESS.format(extra="    zip: str") + "class Args(BaseModel):\n    to: Address",
            "breaking ('to.zip' added as a required field)",
            id="nested-required-field",
        ),
        pytest.param(
            ADDRESS.format(extra="") + "class Args(BaseModel):\n    to: Address",
            ADDRESS.format(extra="").replace("city: str", "city: int")
            + "class Args(BaseModel):\n    to: Address",
            "breaking ('to.city' changed from string to integer)",
            id="nested-type-changed",
        ),
        pytest.param(
            "class Args(BaseModel):\n    a: int\n    b: int = 0",
            "class Args(BaseModel):\n    a: int",
            "compatible ('b' removed (the model ignores it in older messages))",
            id="field-removed-extra-ignored",
        ),
        pytest.param(
            "class Args(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n"
            "    a: int\n    b: int = 0",
            "class Args(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n    a: int",
            "breaking ('b' removed: messages that carry it would be refused",
            id="field-removed-extra-forbidden",
        ),
        pytest.param(
            "class Args(BaseModel):\n    a: int = 1",
            "class Args(BaseModel):\n    a: int = 2",
            "compatible ('a' default changed from 1 to 2)",
            id="default-changed",
        ),
        pytest.param(
            "class Node(BaseModel):\n    v: int\n    kids: list['Node'] = []\n"
            "class Args(BaseModel):\n    root: Node",
            "class Node(BaseModel):\n    v: int | None\n    kids: list['Node'] = []\n"
            "class Args(BaseModel):\n    root: Node",
            "compatible ('root.v' widened from integer to integer | null)",
            id="recursive-model-widened",
        ),
        pytest.param(
            "class Node(BaseModel):\n    v: int\n    kids: list['Node'] = []\n"
            "class Args(BaseModel):\n    root: Node",
            "class Node(BaseModel):\n    v: str\n    kids: list['Node'] = []\n"
            "class Args(BaseModel):\n    root: Node",
            "breaking ('root.v' changed from integer to string)",
            id="recursive-model-changed",
        ),
        pytest.param(
            "class Cat(BaseModel):\n    kind: Literal['cat']\n"
            "class Dog(BaseModel):\n    kind: Literal['dog']\n"
            "class Args(BaseModel):\n    pet: Annotated[Union[Cat, Dog], "
            "Field(discriminator='kind')]",
            "class Cat(BaseModel):\n    kind: Literal['cat']\n    name: str = ''\n"
            "class Dog(BaseModel):\n    kind: Literal['dog']\n"
            "class Args(BaseModel):\n    pet: Annotated[Union[Cat, Dog], "
            "Field(discriminator='kind')]",
            "compatible ('pet.name' added as an optional field)",
            id="tagged-union-branch-widened",
        ),
        pytest.param(
            "class Cat(BaseModel):\n    kind: Literal['cat']\n"
            "class Dog(BaseModel):\n    kind: Literal['dog']\n"
            "class Args(BaseModel):\n    pet: Annotated[Union[Cat, Dog], "
            "Field(discriminator='kind')]",
            "class Cat(BaseModel):\n    kind: Literal['cat']\n"
            "class Args(BaseModel):\n    pet: Cat",
            "breaking ('pet.kind' no longer accepts 'dog' (now the constant 'cat'))",
            id="tagged-union-branch-dropped",
        ),
        pytest.param(
            "class Args(BaseModel):\n    a: int",
            "class Args(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n    a: int",
            "breaking (the payload refuses unknown keys now (extra='forbid'), which it "
            "ignored: an older message, or an upcaster's output, that carries one would be "
            "refused)",
            id="extra-ignored-then-forbidden",
        ),
        pytest.param(
            ADDRESS.format(extra="") + "class Args(BaseModel):\n    to: Address",
            ADDRESS.format(extra="    model_config = ConfigDict(extra='forbid')")
            + "class Args(BaseModel):\n    to: Address",
            "breaking ('to' refuses unknown keys now (extra='forbid')",
            id="nested-extra-ignored-then-forbidden",
        ),
    ],
)
def test_model_changes_are_classified(
    runner: CliRunner, write_app: WriteApp, before: str, after: str, expected: str
) -> None:
    """Nested models ($defs/$ref), recursion and tagged unions are compared field by field."""
    result = lock_then_check(
        runner, write_app, MODEL.format(models=before), MODEL.format(models=after)
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert f"without a version bump, {worded(expected)}" in line


def test_a_renamed_nested_model_is_compatible(runner: CliRunner, write_app: WriteApp) -> None:
    """Renaming a nested model renames its $defs entry; every payload still validates."""
    result = lock_then_check(
        runner,
        write_app,
        MODEL.format(
            models="class Place(BaseModel):\n    city: str\nclass Args(BaseModel):\n    to: Place"
        ),
        MODEL.format(
            models="class Address(BaseModel):\n    city: str\n"
            "class Args(BaseModel):\n    to: Address"
        ),
    )
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert "a backward-compatible change (restructured (e.g. a nested model renamed)" in line


def test_extension_keys_and_examples_are_cosmetic(runner: CliRunner, write_app: WriteApp) -> None:
    """json_schema_extra's x- keys (and examples) describe a field; they change no payload."""
    result = lock_then_check(
        runner,
        write_app,
        SIGNATURE.format(params="email: str"),
        SIGNATURE.format(
            params="email: Annotated[str, Field(json_schema_extra={'x-pii': True, "
            "'example': 'a@example.com'})]"
        ),
    )
    assert result.exit_code == 0, result.output
    assert "note: Task 't.task' version 1: only annotations changed" in result.stdout


def test_a_keyword_only_one_side_has_is_compared_not_crashed_on() -> None:
    """A keyword the comparison does not know, present on one side: breaking, with the key."""
    old = {"type": "object", "additionalProperties": {"type": "integer"}}
    new = {**old, "propertyNames": {"format": "date"}}
    change = classify(old, new)
    assert (change.level, change.reasons) == (
        "breaking",
        ("the payload has a new 'propertyNames' keyword",),
    )
    assert classify({**old, "x-note": 1}, {**old, "x-note": 2}).level == "cosmetic"


# -- schema export -------------------------------------------------------------------------------

INVOICE_V2 = """
@huey.versioned_task(version=2, name="billing.send_invoice")
def send_invoice(invoice_id: int, currency: str) -> None: ...

@huey.upcaster("billing.send_invoice", from_version=1)
def v1(payload):
    return {"currency": "EUR", **payload}
"""


def test_schema_prints_every_task_and_version(runner: CliRunner, write_app: WriteApp) -> None:
    """Without --out: one JSON document, today's version from the model, v1 from the lock."""
    lock(runner, write_app(INVOICE_V1 + EXPORT_V1))
    module = write_app(INVOICE_V2 + EXPORT_V1)
    result = invoke(runner, "schema", "--app", f"{module}:huey")
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert {name: sorted(versions) for name, versions in documents.items()} == {
        "billing.send_invoice": ["1", "2"],
        "reports.export": ["1"],
    }
    v1, v2 = documents["billing.send_invoice"]["1"], documents["billing.send_invoice"]["2"]
    assert v1["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert v1["required"] == ["invoice_id"]
    assert v2["required"] == ["invoice_id", "currency"]


def test_schema_writes_one_file_per_task_and_version(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """--out DIR writes DIR/<task>/v<N>.schema.json; --task picks one task."""
    lock(runner, write_app(INVOICE_V1 + EXPORT_V1))
    module = write_app(INVOICE_V2 + EXPORT_V1)
    result = invoke(runner, "schema", "--app", f"{module}:huey", "--out", "schemas")
    assert result.exit_code == 0, result.output
    files = sorted(
        p.relative_to(tmp_path / "schemas").as_posix() for p in tmp_path.rglob("*.json")
    )
    assert files == [
        "billing.send_invoice/v1.schema.json",
        "billing.send_invoice/v2.schema.json",
        "reports.export/v1.schema.json",
    ]
    assert result.stdout.splitlines()[-1] == "3 schema files for 2 tasks in schemas."
    v2 = json.loads((tmp_path / "schemas/billing.send_invoice/v2.schema.json").read_text())
    assert v2["properties"]["currency"]["type"] == "string"

    result = invoke(
        runner, "schema", "--app", f"{module}:huey", "--task", "reports.export", "--out", "one"
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "one").rglob("*.json")] == ["v1.schema.json"]


def test_schema_without_a_lock_exports_todays_versions(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """With no lock file around, only the current version of each task is exported."""
    module = write_app(INVOICE_V2)
    result = invoke(runner, "schema", "--app", f"{module}:huey", "--task", "billing.send_invoice")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["billing.send_invoice"]) == ["2"]


def test_schema_of_an_unknown_task_exits_2(runner: CliRunner, write_app: WriteApp) -> None:
    """--task naming no declared task: one line listing the declared ones, exit 2."""
    module = write_app(INVOICE_V1)
    result = invoke(runner, "schema", "--app", f"{module}:huey", "--task", "billing.nope")
    assert_one_line_error(
        result,
        r"Task 'billing.nope' is not declared in app 'lock-tests', and the lock has no history "
        r"of it; pass one of its versioned tasks' logical names \(billing.send_invoice\)\.",
    )


def test_schema_with_a_missing_lock_exits_2(runner: CliRunner, write_app: WriteApp) -> None:
    """An explicit --lock that does not exist is an error, not a silent export of less."""
    module = write_app(INVOICE_V1)
    result = invoke(runner, "schema", "--app", f"{module}:huey", "--lock", "nowhere.lock")
    assert_one_line_error(result, r"^Error: No lock file at 'nowhere.lock'")


def test_schema_into_a_file_instead_of_a_directory_exits_2(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """--out naming a file: one line, exit 2, no traceback."""
    (tmp_path / "taken").write_text("")
    result = invoke(runner, "schema", "--app", f"{write_app(INVOICE_V1)}:huey", "--out", "taken")
    assert_one_line_error(result, r"^Error: NotADirectoryError: .*'taken/billing.send_invoice'")


# -- bad input ---------------------------------------------------------------------------------


def test_check_without_a_lock_file_exits_2(runner: CliRunner, write_app: WriteApp) -> None:
    """check with no lock file: one line saying how to create it, exit 2."""
    result = check(runner, write_app(INVOICE_V1))
    assert_one_line_error(
        result,
        re.escape(
            f"No lock file at '{DEFAULT_LOCK_PATH}'; create it with `versioned-tasks lock "
            f"--app MODULE:ATTR` and commit it (or pass --lock PATH)."
        ),
    )


def test_a_lock_path_that_is_a_directory_exits_2(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """--lock naming a directory: one line, exit 2."""
    (tmp_path / "dir.lock").mkdir()
    result = check(runner, write_app(INVOICE_V1), "--lock", "dir.lock")
    assert_one_line_error(result, r"Cannot read the lock file 'dir.lock': ")


VALID_FINGERPRINT = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        pytest.param("{not json", r"is not valid JSON \(", id="not-json"),
        pytest.param(
            "<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> branch\n",
            r"is not valid JSON .*after a merge conflict",
            id="merge-conflict",
        ),
        pytest.param('{"lock_format": NaN}', r"is not valid JSON \(NaN is not JSON\)", id="nan"),
        pytest.param("", r"is not valid JSON", id="empty"),
        pytest.param("[1, 2]", r"the top level is not a JSON object", id="list"),
        pytest.param("{}", r'the top level has no "lock_format"', id="no-format"),
        pytest.param(
            '{"lock_format": 2, "tasks": {}, "renames": {}, "tombstones": []}',
            r"has lock_format 2, which versioned_tasks .* cannot read \(it reads lock_format 1\)",
            id="future-format",
        ),
        pytest.param(
            '{"lock_format": "1", "tasks": {}, "renames": {}, "tombstones": []}',
            r"has lock_format '1'",
            id="format-as-string",
        ),
        pytest.param(
            '{"lock_format": 1, "tasks": {}, "renames": {}}',
            r"the top level lacks 'tombstones'",
            id="missing-key",
        ),
        pytest.param(
            '{"lock_format": 1, "tasks": {}, "renames": {}, "tombstones": [], "x": 1}',
            r"the top level has unknown keys 'x'",
            id="unknown-key",
        ),
        pytest.param(
            '{"lock_format": 1, "tasks": [], "renames": {}, "tombstones": []}',
            r'"tasks" is not a JSON object',
            id="tasks-list",
        ),
        pytest.param(
            '{"lock_format": 1, "tasks": {}, "renames": {"a": 1}, "tombstones": []}',
            r"\"renames\" -> 'a' is not a task name",
            id="rename-target",
        ),
        pytest.param(
            '{"lock_format": 1, "tasks": {}, "renames": {}, "tombstones": "a"}',
            r'"tombstones" is not a list of task names',
            id="tombstones-string",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": "1",'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {}}}}',
            r"task 't' version is not an integer from 1 to 2147483647",
            id="version-string",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [0], "allow_compatible_changes": false, "versions": {}}}}',
            r"task 't' upcasters_from is not a list of versions",
            id="upcaster-zero",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": "no", "versions": {}}}}',
            r"task 't' allow_compatible_changes is not true or false",
            id="flag-string",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {}}}}',
            r"task 't' has no schema for its version 1",
            id="no-current-schema",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {"v1": {}}}}}',
            r"task 't' versions has the key 'v1', which is not a version",
            id="version-key",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {"'
            + "9" * 5000
            + '": {}}}}}',
            r"task 't' versions has the key '9{20}\.\.\.9{10}', which is not a version",
            id="version-key-of-5000-digits",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": '
            + str(10**30)
            + ', "upcasters_from": [], "allow_compatible_changes": false, "versions": {}}}}',
            r"task 't' version is not an integer from 1 to 2147483647",
            id="version-too-large",
        ),
        pytest.param(
            '{"lock_format": 1.0, "tasks": {}, "renames": {}, "tombstones": []}',
            r"has lock_format 1\.0",
            id="format-as-float",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {"1": '
            '{"schema": {}}}}}}',
            r"task 't' version 1 lacks 'fingerprint'",
            id="no-fingerprint",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {"1": '
            '{"schema": "x", "fingerprint": "' + VALID_FINGERPRINT + '"}}}}}',
            r"task 't' version 1 schema is not a JSON Schema",
            id="schema-string",
        ),
        pytest.param(
            '{"lock_format": 1, "renames": {}, "tombstones": [], "tasks": {"t": {"version": 1,'
            ' "upcasters_from": [], "allow_compatible_changes": false, "versions": {"1": '
            '{"schema": {}, "fingerprint": "' + VALID_FINGERPRINT + '"}}}}}',
            r"task 't' version 1 fingerprint does not match its schema",
            id="fingerprint-mismatch",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "lock", "schema"])
def test_a_lock_file_edited_into_nonsense_exits_2(
    runner: CliRunner,
    write_app: WriteApp,
    tmp_path: Path,
    text: str,
    pattern: str,
    command: str,
) -> None:
    """check, lock and schema all refuse a broken lock with one line on stderr, exit 2."""
    (tmp_path / DEFAULT_LOCK_PATH).write_text(text)
    result = invoke(runner, command, "--app", f"{write_app(INVOICE_V1)}:huey")
    assert_one_line_error(result, rf"^Error: The lock file '{DEFAULT_LOCK_PATH}' .*{pattern}")


def test_a_hand_edited_schema_is_refused_by_its_fingerprint(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """Editing a recorded schema without its fingerprint is caught when the lock is read."""
    module = write_app(INVOICE_V1)
    lock(runner, module)
    path = tmp_path / DEFAULT_LOCK_PATH
    data = json.loads(path.read_text())
    data["tasks"]["billing.send_invoice"]["versions"]["1"]["schema"]["required"] = []
    path.write_text(json.dumps(data))
    assert_one_line_error(
        check(runner, module),
        r"task 'billing.send_invoice' version 1 fingerprint does not match its schema",
    )


@pytest.mark.parametrize("command", ["check", "lock", "schema"])
@pytest.mark.parametrize(
    ("app", "pattern"),
    [
        ("vt_lock_no_such_module:huey", r"Could not import module 'vt_lock_no_such_module'"),
        ("{module}:nope", r"Module '{module}' has no attribute 'nope'"),
        ("{module}:huey.name", r"is a str, not a VersionedHuey instance"),
        ("{broken}:huey", r"Could not import module '{broken}' .*ZeroDivisionError"),
        (
            "{exits}:huey",
            r"Could not import module '{exits}' for --app '{exits}:huey': importing it called "
            r"sys\.exit\(3\); keep the app's module free of code that exits",
        ),
    ],
)
def test_an_app_that_does_not_import_exits_2(
    runner: CliRunner,
    write_app: WriteApp,
    tmp_path: Path,
    command: str,
    app: str,
    pattern: str,
) -> None:
    """An --app that does not import or is not an app: one line, exit 2, for every command."""
    module, broken = write_app(INVOICE_V1), write_app("1 / 0")
    exits = write_app("import sys\nsys.exit(3)")
    lock(runner, module)
    names = {"module": module, "broken": broken, "exits": exits}
    result = invoke(runner, command, "--app", app.format(**names))
    assert_one_line_error(result, pattern.format(**names))


def test_a_task_without_a_json_schema_cannot_be_locked(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """A type pydantic validates but cannot describe: lock exits 2, naming the task."""
    module = write_app(
        """
        class Money:
            pass

        class Charge(BaseModel):
            model_config = ConfigDict(arbitrary_types_allowed=True)
            amount: Money

        @huey.versioned_task(version=1, name="billing.charge", args_model=Charge)
        def charge(args) -> None: ...
        """
    )
    result = invoke(runner, "lock", "--app", f"{module}:huey")
    assert_one_line_error(
        result,
        r"Task 'billing.charge' version 1: pydantic cannot write the JSON Schema of its "
        r"arguments \(.*\), which the schema lock records; annotate the parameters with types "
        r"that have one\.",
    )


def test_lock_refuses_declarations_that_do_not_check(
    runner: CliRunner, write_app: WriteApp, tmp_path: Path
) -> None:
    """lock records only a consistent app: a gap in an upcaster chain exits 2."""
    module = write_app(
        """
        @huey.versioned_task(version=3, name="billing.send_invoice")
        def send_invoice(invoice_id: int) -> None: ...

        @huey.upcaster("billing.send_invoice", from_version=1)
        def v1(payload):
            return payload
        """
    )
    result = invoke(runner, "lock", "--app", f"{module}:huey")
    assert_one_line_error(
        result,
        r"1 schema problem\(s\): - Task 'billing.send_invoice' has no upcaster from version 2 "
        r"to 3",
    )
    assert not (tmp_path / DEFAULT_LOCK_PATH).exists()


def test_read_lock_raises_lock_file_error(tmp_path: Path) -> None:
    """LockFileError is a ConfigurationError and keeps the path it was given."""
    path = tmp_path / "missing.lock"
    with pytest.raises(LockFileError, match=r"^No lock file at ") as caught:
        read_lock(path)
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.path == str(path)


# -- determinism --------------------------------------------------------------------------------

DETERMINISM_APP = """
class Options(BaseModel):
    tags: frozenset[str] = frozenset({"alpha", "beta", "gamma", "delta", "epsilon"})
    flags: set[int] = {3, 1, 2}
    level: Literal["low", "high"] = "low"

class Args(BaseModel):
    to: str
    options: Options = Options()
    extra: dict[str, list[Options]] = {}

@huey.versioned_task(version=1, name="t.options", args_model=Args)
def with_options(args) -> None: ...

@huey.versioned_task(version=1, name="t.signature")
def plain(a: int, b: frozenset[str] = frozenset({"x", "y", "z", "w"}), *, c: str = "") -> None: ...
"""


def test_the_lock_is_the_same_in_every_process(write_app: WriteApp, tmp_path: Path) -> None:
    """Fingerprints and file bytes do not depend on hash seeds (set defaults and all)."""
    module = write_app(DETERMINISM_APP)
    outputs = []
    for seed in ("0", "1", "4242"):
        path = tmp_path / f"seed-{seed}.lock"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from versioned_tasks.cli import main; main()",
                "lock",
                "--app",
                f"{module}:huey",
                "--lock",
                str(path),
            ],
            check=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
        )
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    data: dict[str, Any] = json.loads(outputs[0])
    assert sorted(data["tasks"]) == ["t.options", "t.signature"]


# -- the classifier, on many inputs ------------------------------------------------------------

#: Argument types whose values hypothesis-jsonschema draws (with the installed
#: hypothesis it cannot draw objects, so no dicts, models or Any here).
FLAT_TYPES: list[Any] = [
    int,
    float,
    str,
    bool,
    None,
    Optional[int],  # noqa: UP045 - the spelling users write
    int | str,
    list[int],
    list[int | None],
    set[int],
    tuple[int, str],
    tuple[int, str | None],
    Literal["a", "b"],
    Literal["a"],
    Annotated[int, Field(ge=0)],
    Annotated[int, Field(ge=0, le=10)],
    Annotated[float, Field(gt=0)],
    Annotated[str, Field(max_length=3)],
    Annotated[str, Field(min_length=1)],
    Annotated[list[int], Field(max_length=2)],
]


def argument_adapter(annotation: Any) -> TypeAdapter[Any]:
    """The argument model of a task with one parameter ``v: annotation``."""
    fields = {"v": Required[annotation]}
    model: Any = TypedDict("Args", fields)  # type: ignore[operator]
    model.__pydantic_config__ = ConfigDict(extra="forbid")
    return TypeAdapter(model)


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
@given(old=st.sampled_from(FLAT_TYPES), new=st.sampled_from(FLAT_TYPES), data=st.data())
def test_what_is_not_breaking_accepts_every_old_payload(old: Any, new: Any, data: Any) -> None:
    """Whenever a change is classified as not breaking, payloads valid before still validate."""
    old_adapter, new_adapter = argument_adapter(old), argument_adapter(new)
    old_schema = old_adapter.json_schema()
    change = classify(old_schema, new_adapter.json_schema())
    assume(change.level != "breaking")
    for _ in range(5):
        body = json.dumps({"v": data.draw(from_schema(old_schema["properties"]["v"]))})
        try:
            old_adapter.validate_json(body)
        except ValidationError:
            continue  # the JSON Schema is looser than pydantic here (e.g. big integers)
        new_adapter.validate_json(body)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["type", "properties", "required", "items", "anyOf", "$ref", "enum", "minimum"]
            )
            | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=examples(200), deadline=None, database=None)
@given(old=JSON, new=JSON)
def test_the_classifier_survives_any_json(old: Any, new: Any) -> None:
    """A locked schema edited into any JSON (fingerprint and all) is classified, never a crash."""
    change = classify(old, new)
    assert change.level in ("identical", "cosmetic", "compatible", "breaking")
    assert classify(old, old).level == "identical"
