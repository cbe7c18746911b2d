"""``versioned-tasks makemigrations``: from the lock diff to written, checked upcasters.

Each test builds a small project in a temporary directory (a package with the
app and its tasks module), locks it, changes the model the way a gallery case
does but without writing the upcaster, and runs the real command in a
subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "migrations_examples"
CLI = str(Path(sys.executable).with_name("versioned-tasks"))

APP = """
from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("{pkg}", default=True)

from {pkg} import tasks  # noqa: E402, F401
"""


@dataclass(frozen=True)
class Case:
    """A gallery case: the tasks module before, and after with no upcaster written."""

    before: str
    after: str
    task: str | None  # the task that changed (None: nothing to migrate)
    complete: bool
    options: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    "add_optional_field": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="orders.send_receipt")
        def send_receipt(order_id: int, email: str) -> str:
            return f"receipt for order {order_id} to {email}"
        """,
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="orders.send_receipt")
        def send_receipt(order_id: int, email: str, locale: str = "en") -> str:
            return f"[{locale}] receipt for order {order_id} to {email}"
        """,
        "orders.send_receipt",
        complete=True,
    ),
    "add_required_field_derived": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="billing.charge_order")
        def charge_order(order_id: int, quantity: int, unit_price_cents: int) -> str:
            return "charged"
        """,
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="billing.charge_order")
        def charge_order(
            order_id: int, quantity: int, unit_price_cents: int, total_cents: int
        ) -> str:
            return "charged"
        """,
        "billing.charge_order",
        complete=False,
    ),
    "change_type": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="billing.refund")
        def refund(order_id: int, amount_cents: int, currency: str = "EUR") -> str:
            return "refunded"
        """,
        """
        from decimal import Decimal

        from pydantic import BaseModel

        from versioned_tasks import versioned_task

        class Amount(BaseModel):
            value: Decimal
            currency: str

        @versioned_task(version=1, name="billing.refund")
        def refund(order_id: int, amount: Amount, currency: str = "EUR") -> str:
            return "refunded"
        """,
        "billing.refund",
        complete=False,
    ),
    "rename_field": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="accounts.send_password_reset")
        def send_password_reset(user_id: int, email: str) -> str:
            return f"reset link for user {user_id} sent to {email}"
        """,
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="accounts.send_password_reset")
        def send_password_reset(user_id: int, recipient_email: str) -> str:
            return f"reset link for user {user_id} sent to {recipient_email}"
        """,
        "accounts.send_password_reset",
        complete=True,
    ),
    "split_field": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="crm.send_welcome")
        def send_welcome(email: str, full_name: str) -> str:
            return f"welcome {full_name}"
        """,
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="crm.send_welcome")
        def send_welcome(email: str, first_name: str, last_name: str = "") -> str:
            return f"welcome {first_name} {last_name}"
        """,
        "crm.send_welcome",
        complete=False,
    ),
    "rename_task": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="notifications.send_sms")
        def send_sms(phone: str, text: str) -> str:
            return f"sms to {phone}"
        """,
        """
        from versioned_tasks import rename, versioned_task

        @versioned_task(version=1, name="messaging.send_text")
        def send_text(phone: str, text: str) -> str:
            return f"text to {phone}"

        rename("notifications.send_sms", "messaging.send_text")
        """,
        None,
        complete=True,
    ),
    "move_task_to_module": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="media.resize_image")
        def resize_image(image_id: int, width: int) -> str:
            return f"image {image_id} at {width}px"
        """,
        """
        from versioned_tasks import versioned_task

        # Moved from another module: the logical name on the wire stays.
        @versioned_task(version=1, name="media.resize_image")
        def resize(image_id: int, width: int) -> str:
            return f"image {image_id} at {width}px"
        """,
        None,
        complete=True,
    ),
    "split_task": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="orders.fulfil")
        def fulfil(order_id: int, email: str) -> str:
            return "fulfilled"
        """,
        """
        from versioned_tasks import RetiredMessage, tombstone, versioned_task

        @versioned_task(version=1, name="orders.ship")
        def ship(order_id: int) -> str:
            return "shipped"

        @versioned_task(version=1, name="orders.send_confirmation")
        def send_confirmation(order_id: int, email: str) -> str:
            return "sent"

        @tombstone("orders.fulfil")
        def forward_fulfil(retired: RetiredMessage) -> None:
            ship(retired.payload["order_id"])
        """,
        None,
        complete=True,
    ),
    "retire_task_archive": Case(
        """
        from versioned_tasks import versioned_task

        @versioned_task(version=1, name="reports.export_xls")
        def export_xls(report_id: int, recipient_email: str, sheet_name: str = "Report") -> str:
            return "exported"
        """,
        """
        from versioned_tasks import RetiredMessage, tombstone

        ARCHIVED: list[object] = []

        @tombstone("reports.export_xls")
        def archive_xls_export(retired: RetiredMessage) -> None:
            ARCHIVED.append(retired.payload)
        """,
        None,
        complete=True,
    ),
}


class Project:
    """A package ``pkg`` with ``app.py`` and ``tasks.py`` in a temporary directory."""

    def __init__(self, root: Path, pkg: str = "shop") -> None:
        self.root, self.pkg = root, pkg
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / "app.py").write_text(textwrap.dedent(APP.format(pkg=pkg)))

    @property
    def app(self) -> str:
        return f"{self.pkg}.app:huey"

    @property
    def tasks(self) -> Path:
        return self.root / self.pkg / "tasks.py"

    @property
    def migrations(self) -> Path:
        return self.root / self.pkg / "task_migrations"

    def write_tasks(self, source: str) -> None:
        self.tasks.write_text(textwrap.dedent(source).lstrip())
        shutil.rmtree(self.root / self.pkg / "__pycache__", ignore_errors=True)

    def run(self, *args: str, app: bool = True) -> subprocess.CompletedProcess[str]:
        command = [CLI, *args, *(["--app", self.app] if app else [])]
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return subprocess.run(
            command, cwd=self.root, env=env, capture_output=True, text=True, check=False
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )


def locked_then_changed(tmp_path: Path, case: Case) -> Project:
    project = Project(tmp_path)
    project.write_tasks(case.before)
    locked = project.run("lock")
    assert locked.returncode == 0, locked.stderr
    project.write_tasks(case.after)
    return project


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_gallery_case(name: str, tmp_path: Path) -> None:
    """Complete steps pass check and the gallery's corpus; the rest keep check failing."""
    case = CASES[name]
    project = locked_then_changed(tmp_path, case)
    before = project.run("check")

    made = project.run("makemigrations", "--write-version", *case.options)
    assert made.returncode == 0, made.stdout + made.stderr
    after = project.run("check")

    if case.task is None:
        assert before.returncode == 0, before.stdout
        assert made.stdout.startswith("No missing steps")
        assert not project.migrations.exists()
        assert after.returncode == 0
        return

    assert before.returncode == 1
    assert f"Run `versioned-tasks makemigrations --app {project.app}`" in before.stdout
    (module,) = sorted(project.migrations.glob("*_v1_to_v2.py"))
    assert f"Task {case.task!r} version 1 -> 2" in made.stdout
    assert "version=2" in project.tasks.read_text()
    case_file = tmp_path / "tests" / "payloads" / case.task / "v1" / "example.json"
    assert case_file.is_file()
    expected_file = case_file.with_name("example.expected.json")
    if case.complete:
        assert "(complete)" in made.stdout
        assert "NotImplementedError" not in module.read_text()
        assert expected_file.is_file()
        assert after.returncode == 0, after.stdout
        # The gallery's own corpus, and the generated case with its expected result.
        gallery = GALLERY / name / "payloads"
        checked = project.python(
            f"""
            from versioned_tasks.testing import check_corpus
            from {project.pkg}.app import huey
            print(check_corpus(huey, {str(gallery)!r}), check_corpus(huey, "tests/payloads"))
            """
        )
        assert checked.returncode == 0, checked.stderr
        counts = [int(n) for n in checked.stdout.split()]
        assert counts[0] >= 1
        assert counts[1] == 1
    else:
        assert "left for a person" in made.stdout
        assert "raise NotImplementedError(" in module.read_text()
        assert not expected_file.exists()
        assert after.returncode == 1
        assert "is not written yet (it raises NotImplementedError" in after.stdout


def test_the_written_modules_pass_ruff_and_mypy_strict(tmp_path: Path) -> None:
    """Complete, left-for-a-person and downcaster modules, as written, lint and type-check."""
    modules = []
    for index, name in enumerate(["add_optional_field", "split_field", "rename_field"]):
        project = locked_then_changed(tmp_path / str(index), CASES[name])
        assert project.run("makemigrations").returncode == 0
        modules += sorted(project.migrations.glob("*.py"))
    pinned = pinned_project(tmp_path / "pinned")
    assert pinned.run("makemigrations").returncode == 0
    modules += sorted(pinned.migrations.glob("*.py"))
    paths = [str(path) for path in modules]
    config = ["--config", str(ROOT / "pyproject.toml")]
    ruff = Path(sys.executable).with_name("ruff")
    lint = subprocess.run([ruff, "check", *config, *paths], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    formatted = subprocess.run(
        [ruff, "format", "--check", "--diff", *config, *paths], capture_output=True, text=True
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    for path in modules:
        typed = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            capture_output=True,
            text=True,
        )
        assert typed.returncode == 0, typed.stdout


def test_the_written_step_reads_as_a_person_would_write_it(tmp_path: Path) -> None:
    project = locked_then_changed(tmp_path, CASES["rename_field"])
    assert project.run("makemigrations").returncode == 0
    (module,) = project.migrations.glob("*_v1_to_v2.py")
    assert module.name == "accounts_send_password_reset_v1_to_v2.py"
    assert module.read_text() == textwrap.dedent(
        '''\
        """Migration of 'accounts.send_password_reset': version 1 to 2."""

        from __future__ import annotations

        from typing import Any

        from versioned_tasks import upcaster


        @upcaster("accounts.send_password_reset", from_version=1)
        def send_password_reset_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
            """Version 1 -> 2: rename 'email' to 'recipient_email'."""
            payload = dict(payload)
            # Guessed: 'email' became 'recipient_email' (one field went, one came,
            # with the same schema): check it, or say so with --rename-field.
            payload["recipient_email"] = payload.pop("email")
            return payload
        '''
    )


def test_rename_field_option_makes_a_split_complete_enough(tmp_path: Path) -> None:
    """--rename-field says what the guesser cannot: full_name became first_name."""
    project = locked_then_changed(tmp_path, CASES["split_field"])
    made = project.run(
        "makemigrations",
        "--write-version",
        "--rename-field",
        "crm.send_welcome:full_name=first_name",
    )
    assert made.returncode == 0, made.stderr
    assert "rename 'full_name' to 'first_name'" in made.stdout
    assert "(complete)" in made.stdout
    text = next(project.migrations.glob("*_v1_to_v2.py")).read_text()
    assert 'payload["first_name"] = payload.pop("full_name")' in text
    assert "Guessed" not in text
    assert project.run("check").returncode == 0
    expected = json.loads(
        (tmp_path / "tests/payloads/crm.send_welcome/v1/example.expected.json").read_text()
    )
    assert expected == {"email": "text", "first_name": "text", "last_name": ""}


def test_running_twice_writes_nothing_new_and_an_edited_module_is_refused(
    tmp_path: Path,
) -> None:
    project = locked_then_changed(tmp_path, CASES["split_field"])
    first = project.run("makemigrations")
    assert first.returncode == 0
    written = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}

    second = project.run("makemigrations")
    assert second.returncode == 0, second.stdout
    assert "Wrote" not in second.stdout
    assert second.stdout.count("Unchanged") == 2  # the step and its case
    assert {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == written

    (module,) = project.migrations.glob("*_v1_to_v2.py")
    edited = module.read_text().replace("raise NotImplementedError(", "raise RuntimeError(")
    module.write_text(edited)
    third = project.run("makemigrations")
    assert third.returncode == 1
    shown = module.relative_to(tmp_path)
    assert f"Refused {shown}: it exists with other content" in third.stdout
    assert module.read_text() == edited


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    project = locked_then_changed(tmp_path, CASES["add_optional_field"])
    tasks = project.tasks.read_text()
    made = project.run("makemigrations", "--dry-run", "--write-version")
    assert made.returncode == 0
    assert "Would write" in made.stdout
    assert "Raise the version (--write-version does it)" in made.stdout
    assert not project.migrations.exists()
    assert not (tmp_path / "tests").exists()
    assert project.tasks.read_text() == tasks


def test_without_write_version_it_prints_the_one_line_change(tmp_path: Path) -> None:
    project = locked_then_changed(tmp_path, CASES["add_optional_field"])
    made = project.run("makemigrations")
    assert made.returncode == 0
    assert (
        "Raise the version (--write-version does it) at shop/tasks.py:3: "
        '@versioned_task(version=1, name="orders.send_receipt")  ->  '
        '@versioned_task(version=2, name="orders.send_receipt")'
    ) in made.stdout
    # Until the version is raised, the step goes past the current version: check says so.
    check = project.run("check")
    assert check.returncode == 1
    assert "goes past the current version 1; raise the task's version to 2" in check.stdout


def pinned_project(root: Path) -> Project:
    """A task whose producers are pinned to version 1 while it gains a field."""
    project = Project(root, pkg="pinned")
    project.write_tasks(CASES["add_optional_field"].before)
    assert project.run("lock").returncode == 0
    (root / project.pkg / "app.py").write_text(
        textwrap.dedent(
            """
            from versioned_tasks import VersionedMemoryHuey

            huey = VersionedMemoryHuey(
                "pinned", default=True, emit_versions={"orders.send_receipt": 1}
            )

            from pinned import tasks  # noqa: E402, F401
            """
        )
    )
    project.write_tasks(CASES["add_optional_field"].after.replace("version=1", "version=2"))
    return project


def test_pinned_producers_get_the_downcaster_too(tmp_path: Path) -> None:
    project = pinned_project(tmp_path)
    made = project.run("makemigrations")
    assert made.returncode == 0, made.stdout + made.stderr
    text = next(project.migrations.glob("*_v1_to_v2.py")).read_text()
    assert '@downcaster("orders.send_receipt", from_version=2)' in text
    assert 'payload.pop("locale", None)' in text
    checked = project.run("check")
    assert checked.returncode == 0, checked.stdout
    sent = project.python(
        """
        from pinned.app import huey
        from pinned.tasks import send_receipt
        send_receipt(1, "a@example.com", locale="fr")
        (raw,) = huey.storage.enqueued_items()
        print(bytes(raw).split(b"\\n")[1].decode())
        """
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"email": "a@example.com", "order_id": 1}


def test_an_app_that_is_not_the_default_is_refused(tmp_path: Path) -> None:
    project = locked_then_changed(tmp_path, CASES["add_optional_field"])
    app = project.root / project.pkg / "app.py"
    app.write_text(app.read_text().replace(", default=True", ""))
    project.write_tasks(
        CASES["add_optional_field"]
        .after.replace("from versioned_tasks import versioned_task", "from shop.app import huey")
        .replace("@versioned_task(", "@huey.versioned_task(")
    )
    made = project.run("makemigrations")
    assert made.returncode == 2
    assert "is not it; create it with default=True" in made.stderr


def test_a_bad_rename_field_is_explained(tmp_path: Path) -> None:
    project = locked_then_changed(tmp_path, CASES["split_field"])
    made = project.run("makemigrations", "--rename-field", "crm.send_welcome=full_name")
    assert made.returncode == 2
    assert "is not TASK:OLD=NEW" in made.stderr
    made = project.run("makemigrations", "--rename-field", "crm.send_welcome:nope=first_name")
    assert made.returncode == 2
    assert "the older version has fields ['email', 'full_name']" in made.stderr


def test_the_migrations_page_shows_what_the_commands_print(tmp_path: Path) -> None:
    """The workflow on docs/migrations.md is the real output of these commands."""
    page = (ROOT / "docs" / "migrations.md").read_text()
    project = Project(tmp_path, pkg="billing")
    project.write_tasks(
        """
        from versioned_tasks import versioned_task


        @versioned_task(version=1, name="billing.send_invoice")
        def send_invoice(invoice_id: int, amount: int) -> str:
            return f"invoice {invoice_id}"
        """
    )
    assert project.run("lock").returncode == 0
    project.write_tasks(
        """
        from versioned_tasks import versioned_task


        @versioned_task(version=1, name="billing.send_invoice")
        def send_invoice(invoice_id: int, total_cents: int, currency: str = "EUR") -> str:
            return f"invoice {invoice_id} in {currency}"
        """
    )
    app = "billing.app.huey"
    outputs = []
    for command in (
        ["check"],
        [
            "makemigrations",
            "--write-version",
            "--rename-field",
            "billing.send_invoice:amount=total_cents",
        ],
        ["check"],
        ["lock"],
    ):
        done = project.run(*command, "--app", app, app=False)
        outputs.append(f"$ versioned-tasks {' '.join([command[0], '--app', app, *command[1:]])}")
        outputs.append(done.stdout.rstrip("\n"))
    for block in outputs:
        assert block in page, block
    module = project.migrations / "billing_send_invoice_v1_to_v2.py"
    assert f"```python {{.skip}}\n{module.read_text()}```" in page
