"""How the ``versioned-tasks`` command finds its app: ``--app``, VERSIONED_TASKS_APP,
the messages for a missing or wrong path, and the refusal of an app with no task.

Run in-process with click's CliRunner on app modules written into ``tmp_path``
(unique names, so imports never hit a cached module). The Django side of the
same options is in ``test_django.py``.
"""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from versioned_tasks.cli import main

EMPTY_APP = """\
from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("empty")
"""

ONE_TASK_APP = """\
from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("billing")

@huey.versioned_task(version=1, name="billing.send_invoice")
def send_invoice(invoice_id: int) -> None: ...
"""


@dataclass
class Apps:
    """A package of app modules under a unique name, importable from the test's cwd."""

    package: str
    root: Path

    def write(self, module: str, source: str) -> str:
        """Write ``<package>/<module>.py``; returns its dotted module name."""
        (self.root / f"{module}.py").write_text(source, encoding="utf-8")
        return f"{self.package}.{module}"


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Apps:
    """An empty package of app modules; the current directory is the test's."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.delenv("VERSIONED_TASKS_APP", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    package = f"cliapps_{uuid.uuid4().hex[:10]}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("", encoding="utf-8")
    return Apps(package, root)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


# -- no vacuous gate ------------------------------------------------------------------------


def test_lock_refuses_an_app_without_versioned_tasks(apps: Apps, tmp_path: Path) -> None:
    """``lock`` on an app that declares no versioned task exits 2, writes nothing and
    says how to point at the right app (it used to write an empty lock)."""
    module = apps.write("empty", EMPTY_APP)
    result = run("lock", "--app", f"{module}:huey")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: The app 'empty' (--app '{module}:huey') declares no versioned task (nor rename "
        f"or tombstone), so there is nothing to lock or check. Point --app (or "
        f"VERSIONED_TASKS_APP) at the instance your tasks are declared on, in the module "
        f"that declares them or imports them; in a "
        f"Django project, set DJANGO_SETTINGS_MODULE or pass --django-settings so that the "
        f"apps' tasks modules are imported. Pass --allow-empty if the app has no task on "
        f"purpose.\n"
    )
    assert not (tmp_path / "versioned-tasks.lock").exists()


def test_check_refuses_an_app_without_versioned_tasks(apps: Apps) -> None:
    """``check`` against a lock, on an app that declares no versioned task, exits 2
    instead of passing; --allow-empty lets both commands through on purpose."""
    module = apps.write("empty", EMPTY_APP)
    locked = run("lock", "--app", f"{module}:huey", "--allow-empty")
    assert locked.exit_code == 0, locked.output
    assert locked.stdout == "Created versioned-tasks.lock (0 tasks, 0 renames, 0 tombstones).\n"
    refused = run("check", "--app", f"{module}:huey")
    assert refused.exit_code == 2
    assert "declares no versioned task" in refused.stderr
    allowed = run("check", "--app", f"{module}:huey", "--allow-empty")
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stdout == "No problems; 0 tasks checked against versioned-tasks.lock.\n"


# -- VERSIONED_TASKS_APP ----------------------------------------------------------------------


def test_versioned_tasks_app_gives_every_command_its_app(apps: Apps) -> None:
    """VERSIONED_TASKS_APP stands for --app; an explicit --app wins over it."""
    billing = apps.write("billing", ONE_TASK_APP)
    empty = apps.write("empty", EMPTY_APP)
    env = {"VERSIONED_TASKS_APP": f"{billing}:huey"}
    locked = run("lock", env=env)
    assert locked.exit_code == 0, locked.output
    assert locked.stdout.endswith("(1 tasks, 0 renames, 0 tombstones).\n")
    assert run("check", env=env).stdout.startswith("No problems; 1 tasks checked")
    assert run("dlq", "list", env=env).stdout == "No dead letters in queue 'billing'.\n"
    overridden = run("check", "--app", f"{empty}:huey", env=env)
    assert overridden.exit_code == 2
    assert "The app 'empty'" in overridden.stderr


def test_a_command_without_an_app_says_how_to_name_one(apps: Apps) -> None:
    """No --app, no VERSIONED_TASKS_APP, no Django project: exit 2 naming all three."""
    result = run("census")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: No app given: name it with --app package.module:attribute (or set "
        "VERSIONED_TASKS_APP); in a Django project, set DJANGO_SETTINGS_MODULE or pass "
        "--django-settings to use djhuey's instance.\n"
    )


# -- --app naming a module ------------------------------------------------------------------


def test_app_naming_a_module_asks_for_its_attribute(apps: Apps) -> None:
    """``--app package.tasks`` (the attribute forgotten) says the path names a module
    and offers the module's VersionedHuey as 'module:attribute'."""
    module = apps.write("tasks", ONE_TASK_APP)
    result = run("lock", "--app", module)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: --app '{module}' names the module '{module}', not an app in it; add the "
        f"attribute that holds the VersionedHuey, as 'module:attribute' or "
        f"'module.attribute': '{module}:huey'.\n"
    )


def test_app_naming_an_imported_module_asks_for_its_attribute(apps: Apps) -> None:
    """The same message when the package has already imported the module (it is then
    an attribute of the package, but still not an app)."""
    module = apps.write("tasks", ONE_TASK_APP)
    (apps.root / "__init__.py").write_text("from . import tasks\n", encoding="utf-8")
    result = run("lock", "--app", f"{apps.package}:tasks")
    assert result.exit_code == 2
    assert f"names the module '{module}', not an app in it" in result.stderr
    assert f"'{module}:huey'" in result.stderr


def test_app_naming_a_missing_attribute_says_so(apps: Apps) -> None:
    """An attribute that is neither there nor a module keeps the plain message."""
    module = apps.write("billing", ONE_TASK_APP)
    result = run("lock", "--app", f"{module}.hue")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: Module '{module}' has no attribute 'hue' (--app '{module}.hue').\n"
    )


def test_app_naming_a_module_without_an_app_asks_for_the_attribute(apps: Apps) -> None:
    """A module holding no VersionedHuey: the message shows the form to use."""
    module = apps.write("helpers", textwrap.dedent("VALUE = 1\n"))
    result = run("lock", "--app", module)
    assert result.exit_code == 2
    assert f"'module.attribute': '{module}:ATTRIBUTE'." in result.stderr
