"""The dead-letter commands added for operators: list filters, delete, filtered
purge, edit, replay of legacy pickle, and replays checked against the fleet.

Each test writes small app modules on one SQLite file in ``tmp_path`` ("old
code" that enqueued, "new code" under which messages were dead-lettered) and
runs the command in-process with click's CliRunner.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import REDIS_URL, flush_redis_name, queued, require_redis, running_consumer, wait_for
from huey.registry import Message

from versioned_tasks import DeadLetterNotFound, VersionedHuey
from versioned_tasks.cli import main

APP = """\
from versioned_tasks import VersionedSqliteHuey

huey = VersionedSqliteHuey("cli_dlq", filename={filename!r}{options})
{body}
"""

# invoice ids were text; then numbers.
OLD = """
@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: str) -> str:
    return invoice_id

@huey.versioned_task(version=1, name="mail.send")
def send(to: str) -> str:
    return to
"""

NEW = """
@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int, copies: int = 1) -> int:
    return invoice_id * copies
"""

WriteApp = Callable[..., str]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteApp]:
    """Write an app module on the test's queue file; returns ``module:huey``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(body: str, options: str = "") -> str:
        name = f"vt_cli_dlq_{uuid.uuid4().hex[:12]}"
        text = APP.format(
            filename=str(tmp_path / "queue.db"), options=options, body=textwrap.dedent(body)
        )
        (tmp_path / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        names.append(name)
        return f"{name}:huey"

    yield write
    for name in names:
        sys.modules.pop(name, None)


def app_of(path: str) -> VersionedHuey:
    app = importlib.import_module(path.split(":")[0]).huey
    assert isinstance(app, VersionedHuey)
    return app


def invoke(runner: CliRunner, *args: str, **kwargs: object) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False, **kwargs)  # type: ignore[arg-type]


def drain(app: VersionedHuey) -> None:
    while app.dequeue() is not None:
        pass


@pytest.fixture
def dead(write_app: WriteApp) -> tuple[str, str]:
    """Under the new code: invoices 'abc' and 'x1' are invalid_payload, two mails
    unknown_task. Returns the new and old app paths."""
    old, new = write_app(OLD), write_app(NEW)
    module = importlib.import_module(old.split(":")[0])
    module.send_invoice("abc")
    module.send("ann@example.com")
    module.send_invoice("x1")
    module.send("bob@example.com")
    drain(app_of(new))
    assert len(app_of(new).dead_letters) == 4
    return new, old


def ids_of(app: VersionedHuey, reason: str) -> list[str]:
    return [e.id for e in app.dead_letters if e.reason == reason]


# -- list --------------------------------------------------------------------------


def test_list_filters_by_task_and_version(runner: CliRunner, dead: tuple[str, str]) -> None:
    """--task and --version select entries by their name and version on the wire."""
    new, _ = dead
    result = invoke(runner, "dlq", "list", "--app", new, "--task", "mail.send", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [e["task"] for e in listed] == ["mail.send", "mail.send"]
    assert [e["reason"] for e in listed] == ["unknown_task", "unknown_task"]
    none = invoke(runner, "dlq", "list", "--app", new, "--task", "mail.send", "--version", "2")
    assert none.exit_code == 0
    assert "No dead letters with task 'mail.send' and version 2" in none.output


def test_list_limit_with_a_filter_keeps_the_newest_matches(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """--limit counts matching entries, newest first."""
    new, _ = dead
    result = invoke(
        runner,
        "dlq",
        "list",
        "--app",
        new,
        "--reason",
        "invalid_payload",
        "--limit",
        "1",
        "--json",
    )
    [entry] = json.loads(result.output)
    assert entry["id"] == ids_of(app_of(new), "invalid_payload")[0]


# -- delete ------------------------------------------------------------------------


def test_delete_removes_the_named_entries(runner: CliRunner, dead: tuple[str, str]) -> None:
    """dlq delete ID... removes exactly those entries."""
    new, _ = dead
    app = app_of(new)
    first, second = ids_of(app, "unknown_task")
    result = invoke(runner, "dlq", "delete", first, second, "--app", new)
    assert result.exit_code == 0, result.output
    assert f"Deleted {first}." in result.output
    assert ids_of(app, "unknown_task") == []
    assert len(app.dead_letters) == 2


def test_delete_with_an_unknown_id_deletes_nothing_and_exits_2(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """One unknown id: nothing is deleted, one line names it, exit 2."""
    new, _ = dead
    app = app_of(new)
    known = ids_of(app, "unknown_task")[0]
    result = invoke(runner, "dlq", "delete", known, "nope", "--app", new)
    assert result.exit_code == 2
    assert "No dead letter with id 'nope'" in result.stderr
    assert len(app.dead_letters) == 4


# -- purge -------------------------------------------------------------------------


def test_purge_by_reason_deletes_only_those(runner: CliRunner, dead: tuple[str, str]) -> None:
    """--reason with --yes removes the matching entries and says how many."""
    new, _ = dead
    result = invoke(runner, "dlq", "purge", "--app", new, "--reason", "unknown_task", "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 dead letters with reason 'unknown_task'" in result.output
    assert {e.reason for e in app_of(new).dead_letters} == {"invalid_payload"}


def test_purge_by_task_counts_and_asks_first(runner: CliRunner, dead: tuple[str, str]) -> None:
    """Without --yes the count is shown and a 'no' keeps everything (exit 1)."""
    new, _ = dead
    result = invoke(
        runner, "dlq", "purge", "--app", new, "--task", "billing.send_invoice", input="n\n"
    )
    assert result.exit_code == 1
    assert "Delete 2 dead letters with task 'billing.send_invoice'" in result.output
    assert len(app_of(new).dead_letters) == 4


def test_purge_older_than_leaves_recent_entries(runner: CliRunner, dead: tuple[str, str]) -> None:
    """--older-than 1h matches nothing just written; a bad age exits 2."""
    new, _ = dead
    result = invoke(runner, "dlq", "purge", "--app", new, "--older-than", "1h", "--yes")
    assert result.exit_code == 0
    assert "No dead letters with created before" in result.output
    assert len(app_of(new).dead_letters) == 4
    bad = invoke(runner, "dlq", "purge", "--app", new, "--older-than", "soon", "--yes")
    assert bad.exit_code == 2
    assert "neither a duration" in bad.output


def test_purge_older_than_a_future_time_takes_every_match(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """An ISO time in the future selects every entry of the filter."""
    new, _ = dead
    result = invoke(
        runner,
        "dlq",
        "purge",
        "--app",
        new,
        "--reason",
        "invalid_payload",
        "--older-than",
        "2999-01-01T00:00:00",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    assert ids_of(app_of(new), "invalid_payload") == []


# -- edit --------------------------------------------------------------------------


def test_edit_with_set_fixes_the_arguments_and_replays(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """--set invoice_id=42 validates against today's model, enqueues, removes the entry."""
    new, _ = dead
    app = app_of(new)
    entry_id = ids_of(app, "invalid_payload")[0]
    result = invoke(runner, "dlq", "edit", entry_id, "--app", new, "--set", "invoice_id=42")
    assert result.exit_code == 0, result.output
    assert "edited and replayed" in result.output
    with pytest.raises(DeadLetterNotFound):
        app.dead_letters.get(entry_id)
    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"invoice_id": 42, "copies": 1}


def test_edit_with_invalid_arguments_exits_1_and_changes_nothing(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """Arguments that do not fit the model: the error names the field, nothing is queued."""
    new, _ = dead
    app = app_of(new)
    entry_id = ids_of(app, "invalid_payload")[0]
    before = app.dead_letters.get(entry_id)
    result = invoke(runner, "dlq", "edit", entry_id, "--app", new, "--set", "copies=many")
    assert result.exit_code == 1
    assert "invoice_id" in result.output
    assert "the entry is unchanged" in result.output
    assert app.dead_letters.get(entry_id) == before
    assert queued(app) == []


def test_edit_opens_the_editor_on_the_arguments(
    runner: CliRunner, dead: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --set, $EDITOR gets the arguments as JSON; what it saves is replayed."""
    new, _ = dead
    app = app_of(new)
    entry_id = ids_of(app, "invalid_payload")[0]
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "data = json.load(open(path))\n"
        "assert data == {'invoice_id': 'x1'}, data\n"
        "json.dump({'invoice_id': 7, 'copies': 3}, open(path, 'w'))\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    result = invoke(runner, "dlq", "edit", entry_id, "--app", new)
    assert result.exit_code == 0, result.output
    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"invoice_id": 7, "copies": 3}


def test_edit_of_an_unknown_task_exits_2(runner: CliRunner, dead: tuple[str, str]) -> None:
    """A task the app does not declare cannot be edited: declare it first."""
    new, _ = dead
    entry_id = ids_of(app_of(new), "unknown_task")[0]
    result = invoke(runner, "dlq", "edit", entry_id, "--app", new, "--set", "to=x")
    assert result.exit_code == 2
    assert "cannot be edited" in result.stderr


# -- replay: legacy pickle, the fleet ------------------------------------------------


def test_replay_with_legacy_pickle_converts_a_pickled_entry(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """A pickled message dead-lettered by an app with legacy_pickle off is replayed
    with --legacy-pickle as an envelope; without it, it still fails."""
    new = write_app(NEW)
    app = app_of(new)
    message = Message("legacy-1", "billing.send_invoice", None, 0, 0, None, (5,), {})
    app.storage.enqueue(pickle.dumps(message))
    drain(app)
    [entry] = app.dead_letters
    plain = invoke(runner, "dlq", "replay", entry.id, "--app", new)
    assert plain.exit_code == 1
    result = invoke(runner, "dlq", "replay", entry.id, "--app", new, "--legacy-pickle")
    assert result.exit_code == 0, result.output
    assert "replayed" in result.output
    assert len(app.dead_letters) == 0
    task = app.dequeue()
    assert task is not None
    assert (task.id, task.kwargs) == ("legacy-1", {"invoice_id": 5, "copies": 1})


def test_replay_warns_when_no_live_worker_is_known(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    """With no heartbeat on the queue, a replay warns; --require-worker refuses (exit 1)."""
    new, _ = dead
    app = app_of(new)
    entry_id = ids_of(app, "unknown_task")[0]
    refused = invoke(runner, "dlq", "replay", entry_id, "--app", new, "--require-worker")
    assert refused.exit_code == 1
    assert "Refused (--require-worker): No live worker" in refused.stderr
    app.dead_letters.get(entry_id)  # still there
    warned = invoke(runner, "dlq", "replay", "--all", "--reason", "unknown_task", "--app", new)
    assert "Warning: No live worker" in warned.stderr


def test_replay_refuses_when_live_workers_run_an_older_version(
    runner: CliRunner, write_app: WriteApp
) -> None:
    """Workers alive but on version 1 of a task now at version 2: --require-worker
    refuses; once a worker runs version 2, the replay goes through silently."""
    v1 = write_app(NEW, options=", fleet=True, fleet_interval=0.5")
    v2 = write_app(
        """
        @huey.versioned_task(version=2, name="billing.send_invoice")
        def send_invoice(invoice_id: int, copies: int = 1) -> int:
            return invoice_id * copies

        @huey.upcaster("billing.send_invoice", from_version=1)
        def add_nothing(payload):
            return payload
        """,
        options=", fleet=True, fleet_interval=0.5",
    )
    producer = app_of(v2)
    entry = producer.dead_letters.add(
        reason="unknown_task",
        raw=producer.serialize_task(importlib.import_module(v2.split(":")[0]).send_invoice.s(3)),
        error="was unknown",
        task="billing.send_invoice",
        version=2,
    )
    with running_consumer(app_of(v1), workers=1):
        wait_for(lambda: len(producer.fleet()) == 1)
        refused = invoke(runner, "dlq", "replay", entry.id, "--app", v2, "--require-worker")
        assert refused.exit_code == 1
        assert "runs billing.send_invoice v2" in refused.stderr
    with running_consumer(app_of(v2), workers=1):
        wait_for(lambda: len(producer.fleet()) == 1)
        result = invoke(runner, "dlq", "replay", entry.id, "--app", v2, "--require-worker")
        assert result.exit_code == 0, result.output
        assert "Warning" not in result.stderr


# -- recount ---------------------------------------------------------------------


def test_recount_rebuilds_the_counts_of_a_redis_store(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis the kept counts are rebuilt from the entries (here after they were
    deleted, as for a store written before them) and summed up by reason."""
    require_redis()
    queue = f"vt_cli_recount_{uuid.uuid4().hex[:12]}"
    module = f"vt_cli_recount_app_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(
        "from versioned_tasks import VersionedRedisHuey\n\n"
        f"huey = VersionedRedisHuey({queue!r}, url={REDIS_URL!r}, fleet=False)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        app = app_of(f"{module}:huey")
        for reason in ("retired", "retired", "unknown_task"):
            app.dead_letters.add(reason=reason, raw=b"x", error="e", task="t", version=1)
        app.storage.conn.delete(f"huey.deadletters.{queue}.counts")
        result = invoke(runner, "dlq", "recount", "--app", f"{module}:huey")
        assert result.exit_code == 0, result.output
        assert f"Recounted 3 dead letters of queue '{queue}': 2 retired, 1 unknown_task." in (
            result.output
        )
        assert app.dead_letters.counts().by_reason == {"retired": 2, "unknown_task": 1}
    finally:
        sys.modules.pop(module, None)
        flush_redis_name(queue)


def test_recount_on_sql_says_there_is_nothing_to_rebuild(
    runner: CliRunner, dead: tuple[str, str]
) -> None:
    new, _ = dead
    result = invoke(runner, "dlq", "recount", "--app", new)
    assert result.exit_code == 0, result.output
    assert "there are no kept counts to rebuild" in result.output
