"""Django: ``versioned_tasks.contrib.djhuey`` in a real project, end to end.

The project under ``tests/django_project`` (settings, two apps with ``tasks.py``,
SQLite) is copied into the test's directory and run in subprocesses
(``manage.py run_huey``, ``manage.py versioned_tasks``, ``manage.py check``,
``versioned-tasks``), so that this test session is never configured for Django.
Its queue lives on Redis under a name unique to the test; its database is a
SQLite file in the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REDIS_URL, flush_redis_name, redis_available, require_redis

from versioned_tasks import VersionedRedisHuey

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().parent / "django_project"
TIMEOUT = 90


@dataclass
class Project:
    """A copy of the test project, and the environment its commands run with."""

    path: Path
    queue: str
    env: dict[str, str]

    @property
    def database(self) -> Path:
        return self.path / "db.sqlite3"

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` in the project's directory."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.path,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def manage(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py ARGS``."""
        return self.run("manage.py", *args, env=env)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``versioned-tasks`` command."""
        return self.run("-c", "from versioned_tasks.cli import main; main()", *args, env=env)

    def edit(self, relative: str, old: str, new: str) -> None:
        """Change the project's code, as a developer would between two commits."""
        path = self.path / relative
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new), encoding="utf-8")

    def events(self) -> list[tuple[str, str, bool | None]]:
        """What the project's tasks recorded, in order."""
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as db:
            rows = db.execute(
                "select kind, detail, connection_open from shop_event order by id"
            ).fetchall()
        return [
            (kind, detail, None if is_open is None else bool(is_open))
            for kind, detail, is_open in rows
        ]


@pytest.fixture
def project(tmp_path: Path, queue_name: str) -> Iterator[Project]:
    """A fresh copy of the test project with its own queue name and database."""
    path = tmp_path / "project"
    shutil.copytree(PROJECT, path, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "VERSIONED_TASKS_APP", "PYTHONPATH"}
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONDONTWRITEBYTECODE="1",  # the tests edit tasks.py within one second
        VT_DJANGO_DB=str(path / "db.sqlite3"),
        VT_DJANGO_QUEUE=queue_name,
        REDIS_URL=REDIS_URL,
    )
    yield Project(path, queue_name, env)
    if redis_available():
        flush_redis_name(queue_name)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@contextlib.contextmanager
def run_huey(project: Project) -> Iterator[Path]:
    """``manage.py run_huey`` as a subprocess, stopped (SIGINT) however the test ends."""
    log = project.path / "run_huey.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_huey"],
            cwd=project.path,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_events(project: Project, count: int, log: Path) -> list[tuple[str, str, bool | None]]:
    """The project's events once there are ``count`` of them (the consumer's log if not)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = project.events()
        if len(events) >= count:
            return events
        time.sleep(0.1)
    raise AssertionError(
        f"{len(project.events())} of {count} events; run_huey's log:\n{log.read_text()}"
    )


def enqueue_as_old_deploy(queue: str) -> VersionedRedisHuey:
    """Enqueue as the previous deploy did, on the same queue: send_receipt at version
    1, notify_customer under its old name, the legacy export while it was live."""
    huey = VersionedRedisHuey(queue, url=REDIS_URL)

    @huey.versioned_task(version=1, name="shop.send_receipt")
    def send_receipt(order_id: int) -> None: ...

    @huey.versioned_task(version=1, name="shop.notify_client")
    def notify_client(customer_id: int) -> None: ...

    @huey.versioned_task(version=1, name="reports.legacy_export")
    def legacy_export(quarter: str) -> None: ...

    @huey.versioned_task(version=1, name="reports.archive_month")
    def archive_month(month: str) -> None: ...

    send_receipt(7)
    notify_client(3)
    legacy_export("2026-Q3")
    archive_month("2026-11")
    return huey


# -- the worker ------------------------------------------------------------------------


def test_run_huey_runs_upcast_renamed_and_retired_messages(project: Project) -> None:
    """Messages an older deploy wrote run under ``manage.py run_huey``: upcast to
    today's version, redirected by a rename, handed to a tombstone's handler."""
    require_redis()
    _ok(project.manage("migrate", "-v", "0"))
    old = enqueue_as_old_deploy(project.queue)
    with run_huey(project) as log:
        events = wait_for_events(project, 4, log)
    assert sorted(events) == [
        ("archived", "2026-11 compress=True", None),
        ("notified", "customer 3", None),
        ("receipt", "order 7 by email", None),
        ("retired", "reports.legacy_export v1 {'quarter': '2026-Q3'}", None),
    ]
    assert len(old.dead_letters) == 0


def test_db_versioned_task_closes_stale_connections(project: Project) -> None:
    """A ``db_versioned_task`` begins with the worker's stale connection closed (as
    djhuey's ``db_task``) and closes it after; a plain versioned task leaves it open."""
    require_redis()
    _ok(project.manage("migrate", "-v", "0"))
    producer = VersionedRedisHuey(project.queue, url=REDIS_URL)

    @producer.versioned_task(version=1, name="shop.probe_plain")
    def probe_plain(label: str) -> None: ...

    @producer.versioned_task(version=1, name="shop.probe_db")
    def probe_db(label: str) -> None: ...

    # One worker thread runs them in order, on one thread-local connection.
    probe_plain("p1")
    probe_plain("p2")
    probe_db("d1")
    probe_plain("p3")
    with run_huey(project) as log:
        events = wait_for_events(project, 4, log)
    assert [(label, is_open) for _, label, is_open in events] == [
        ("p1", False),  # a new worker thread: no connection yet
        ("p2", True),  # p1's connection, left open: stale (CONN_MAX_AGE = 0)
        ("d1", False),  # closed by db_versioned_task before the task ran
        ("p3", False),  # and closed again after it
    ]


def test_db_versioned_task_call_local_keeps_the_callers_connection(project: Project) -> None:
    """``call_local()`` of a db task runs in the caller's transaction: its arguments are
    validated, and the caller's connection is not closed under it (djhuey's
    ``db_task`` gives ``call_local`` the undecorated function for the same reason)."""
    _ok(project.manage("migrate", "-v", "0"))
    script = textwrap.dedent(
        """
        from django.db import connection, transaction
        from shop.models import Event
        from shop.tasks import send_receipt
        from versioned_tasks import InvalidArguments
        with transaction.atomic():
            Event.objects.create(kind="before", detail="")
            send_receipt.call_local(order_id="12", channel="web")
            print("open", connection.connection is not None, connection.in_atomic_block)
        try:
            send_receipt.call_local(order_id="twelve", channel="web")
        except InvalidArguments as exc:
            print("refused", exc.task, exc.version)
        print(sorted(Event.objects.values_list("kind", "detail")))
        """
    )
    out = _ok(project.manage("shell", "-c", script)).splitlines()
    assert out[-3:] == [
        "open True True",
        "refused shop.send_receipt 2",
        "[('before', ''), ('receipt', 'order 12 by web')]",
    ]


# -- manage.py versioned_tasks, manage.py check -------------------------------------------


def test_manage_py_lock_then_a_breaking_change_fails_check(project: Project) -> None:
    """``manage.py versioned_tasks lock`` records every app's tasks; a schema change
    without a version bump then makes ``manage.py versioned_tasks check`` exit 1."""
    out = _ok(project.manage("versioned_tasks", "lock"))
    assert out.splitlines()[-1] == (
        "Created versioned-tasks.lock (6 tasks, 1 renames, 1 tombstones)."
    )
    assert "+ shop.send_receipt v2 (new task)" in out
    assert "+ reports.weekly_summary v1 (new task)" in out
    assert _ok(project.manage("versioned_tasks", "check")) == (
        "No problems; 6 tasks checked against versioned-tasks.lock.\n"
    )
    project.edit(
        "reports/tasks.py", "def weekly_summary(week: int)", "def weekly_summary(week: str)"
    )
    result = project.manage("versioned_tasks", "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'reports.weekly_summary'" in result.stdout
    assert result.stdout.splitlines()[-2:] == [
        "1 problem(s); 6 tasks checked against versioned-tasks.lock.",
        "Run `versioned-tasks makemigrations` to write the missing steps.",
    ]


def test_manage_py_versioned_tasks_takes_the_cli_options(project: Project) -> None:
    """The management command passes its options to the command line's (``--lock``,
    ``--help``), and ``call_command`` turns an exit code into ``CommandError``."""
    _ok(project.manage("versioned_tasks", "lock", "--lock", "other.lock"))
    assert (project.path / "other.lock").exists()
    assert "Usage: manage.py versioned_tasks check" in _ok(
        project.manage("versioned_tasks", "check", "--help")
    )
    missing = project.manage("versioned_tasks", "check")
    assert missing.returncode == 2
    assert "No lock file at 'versioned-tasks.lock'" in missing.stderr
    script = textwrap.dedent(
        """
        import io
        from django.core.management import CommandError, call_command
        try:
            call_command("versioned_tasks", "check")
        except CommandError as exc:
            print(exc.returncode, exc)
        out = io.StringIO()
        call_command("versioned_tasks", "lock", stdout=out)
        print(repr(out.getvalue().splitlines()[-1]))
        """
    )
    out = _ok(project.manage("shell", "-c", script)).splitlines()
    assert out[-2].startswith("2 No lock file at 'versioned-tasks.lock'")
    assert out[-1] == repr("Created versioned-tasks.lock (6 tasks, 1 renames, 1 tombstones).")


def test_system_check_reports_a_chain_gap(project: Project) -> None:
    """``manage.py check`` runs ``check_schemas()`` on djhuey's instance: a version
    bump without an upcaster is a ``versioned_tasks.E001`` error."""
    assert "System check identified no issues" in _ok(project.manage("check"))
    # Version 3 with an upcaster from 1 only: no step from 2 to 3.
    project.edit("shop/tasks.py", "@db_versioned_task(version=2,", "@db_versioned_task(version=3,")
    result = project.manage("check")
    assert result.returncode == 1
    assert "versioned_tasks.E001" in result.stderr
    assert re.search(r"'shop\.send_receipt'.*upcaster", result.stderr), result.stderr


def test_system_check_reports_a_tasks_module_that_fails(project: Project) -> None:
    """A declaration refused while a ``tasks`` module is imported (here a second task
    under the same name) is a ``versioned_tasks.E003`` error, not a traceback."""
    project.edit(
        "reports/tasks.py",
        'name="reports.weekly_summary")',
        'name="shop.notify_customer")',
    )
    result = project.manage("check")
    assert result.returncode == 1
    assert "versioned_tasks.E003" in result.stderr
    assert "'shop.notify_customer'" in result.stderr


def test_system_check_reports_a_plain_huey_class(project: Project) -> None:
    """``settings.HUEY`` naming a plain Huey class is a ``versioned_tasks.E002`` error
    that says which class to name."""
    project.edit(
        "project/settings.py",
        '"huey_class": "versioned_tasks.VersionedRedisHuey"',
        '"huey_class": "huey.RedisHuey"',
    )
    for name in ("shop", "reports"):  # their tasks cannot be declared on a plain Huey
        project.edit("project/settings.py", f'    "{name}",\n', "")
    result = project.manage("check")
    assert result.returncode == 1
    assert "versioned_tasks.E002" in result.stderr
    assert "settings.HUEY builds a RedisHuey, not a VersionedHuey" in result.stderr
    assert "'huey_class': 'versioned_tasks.VersionedRedisHuey'" in result.stderr


def test_settings_huey_passes_the_versioned_options(project: Project) -> None:
    """The keys of ``settings.HUEY`` that djhuey does not know reach the versioned
    Huey class as keyword arguments: newer-version policy, build id, legacy pickle,
    emit pins, fleet, and a signing serializer."""
    script = textwrap.dedent(
        """
        import json
        from versioned_tasks.contrib.djhuey import HUEY
        from versioned_tasks.wire.envelope import signed_content
        from shop.tasks import send_receipt
        raw = HUEY.serialize_task(send_receipt.s(order_id=1, channel="sms"))
        header, body = HUEY.serializer.unpack(raw)
        print(json.dumps({
            "class": type(HUEY).__name__,
            "newer_version": HUEY.newer_version,
            "max_age": HUEY.newer_version_max_age,
            "legacy": HUEY.legacy_converter is not None,
            "emit": dict(HUEY.emit_versions),
            "fleet": HUEY.fleet_enabled,
            "header": header,
            "body": json.loads(body),
            "signed": signed_content(raw) is not None,
        }))
        """
    )
    out = _ok(
        project.manage(
            "shell", "-c", script, env={"DJANGO_SETTINGS_MODULE": "project.settings_options"}
        )
    )
    seen: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert {
        key: seen[key] for key in ("class", "newer_version", "max_age", "legacy", "emit", "fleet")
    } == {
        "class": "VersionedRedisHuey",
        "newer_version": "dead_letter",
        "max_age": 600,
        "legacy": True,
        "emit": {"shop.send_receipt": 1},
        "fleet": False,
    }
    assert "shop-2026.12" in json.dumps(seen["header"])
    assert seen["body"] == {"order_id": 1}  # written at the pinned version 1
    assert seen["signed"] is True


# -- the versioned-tasks command in a Django project ------------------------------------


def test_cli_sets_up_the_project_named_by_django_settings_module(project: Project) -> None:
    """With DJANGO_SETTINGS_MODULE set, ``versioned-tasks`` sets Django up, imports the
    apps' tasks modules, and takes djhuey's instance when --app is left out."""
    out = _ok(project.cli("lock", env={"DJANGO_SETTINGS_MODULE": "project.settings"}))
    assert out.splitlines()[-1] == (
        "Created versioned-tasks.lock (6 tasks, 1 renames, 1 tombstones)."
    )


def test_cli_takes_the_settings_module_from_django_settings(project: Project) -> None:
    """``--django-settings`` does what DJANGO_SETTINGS_MODULE does; an --app naming
    djhuey's instance finds every app's tasks too (no empty lock)."""
    _ok(project.cli("lock", "--django-settings", "project.settings"))
    out = _ok(
        project.cli(
            "check", "--django-settings", "project.settings", "--app", "huey.contrib.djhuey.HUEY"
        )
    )
    assert out == "No problems; 6 tasks checked against versioned-tasks.lock.\n"


def test_versioned_tasks_app_names_the_app_in_a_django_project(project: Project) -> None:
    """VERSIONED_TASKS_APP gives every command its --app, in a Django project too."""
    env = {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "VERSIONED_TASKS_APP": "versioned_tasks.contrib.djhuey:HUEY",
    }
    _ok(project.cli("lock", env=env))
    assert _ok(project.cli("check", env=env)).startswith("No problems; 6 tasks checked")


def test_cli_app_naming_a_tasks_module_asks_for_the_attribute(project: Project) -> None:
    """``--app shop.tasks`` names a module: the message says so, asks for
    'module:attribute' and, in a Django project, says --app may be left out."""
    result = project.cli("lock", "--app", "shop.tasks", "--django-settings", "project.settings")
    assert result.returncode == 2
    assert result.stderr == (
        "Error: --app 'shop.tasks' names the module 'shop.tasks', not an app in it; add the "
        "attribute that holds the VersionedHuey, as 'module:attribute' or 'module.attribute': "
        "'shop.tasks:ATTRIBUTE'. In a Django project, leave out --app (and VERSIONED_TASKS_APP) "
        "to use djhuey's instance, settings.HUEY.\n"
    )


def test_cli_without_django_settings_says_how_to_set_up_the_project(project: Project) -> None:
    """A tasks module of a Django project, named without DJANGO_SETTINGS_MODULE: the
    error says to set it (it used to end in AppRegistryNotReady)."""
    result = project.cli("lock", "--app", "shop.tasks.HUEY")
    assert result.returncode == 2
    assert "ImproperlyConfigured: Requested setting HUEY" in result.stderr
    assert (
        "set DJANGO_SETTINGS_MODULE; the versioned-tasks command also takes --django-settings"
        in result.stderr
    )
    assert not (project.path / "versioned-tasks.lock").exists()


# -- tests of a Django project with pytest-django ----------------------------------------

PYTEST_INI = """\
[pytest]
DJANGO_SETTINGS_MODULE = project.settings
versioned_tasks_app = versioned_tasks.contrib.djhuey:HUEY
versioned_tasks_payloads = payloads
"""

CONFTEST = """\
from versioned_tasks.contrib.djhuey import load_tasks

load_tasks()  # pytest-django has set Django up: every app's tasks are declared
"""

TEST_SHOP = """\
import pytest
from shop.models import Event
from shop.tasks import send_receipt

from versioned_tasks.testing import assert_upcasts


@pytest.mark.django_db
def test_send_receipt_records_the_receipt(versioned_huey):
    send_receipt(order_id=7, channel="sms")
    assert Event.objects.get().detail == "order 7 by sms"


def test_a_v1_receipt_gets_the_email_channel(versioned_huey):
    assert_upcasts(
        versioned_huey, "shop.send_receipt", {"order_id": 7},
        from_version=1, expected={"order_id": 7, "channel": "email"},
    )
"""


def test_pytest_django_runs_the_project_tasks_and_payload_corpus(project: Project) -> None:
    """The docs' pytest-django setup: ``versioned_huey`` runs a db task at once against
    the test database, and the payload corpus is collected for djhuey's instance."""
    (project.path / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    (project.path / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (project.path / "test_shop.py").write_text(TEST_SHOP, encoding="utf-8")
    case = project.path / "payloads" / "shop.send_receipt" / "v1" / "basic.json"
    case.parent.mkdir(parents=True)
    case.write_text('{"order_id": 3}\n', encoding="utf-8")
    result = project.run("-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
