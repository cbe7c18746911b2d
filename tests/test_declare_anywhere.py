"""Module-level declarations: ``@versioned_task`` and its companions bound to the default app.

Each test writes its tasks module to a temporary directory under a unique
module name and imports it, before or after the app exists, as a project would.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import MakeHuey, queued, running_consumer, wait_for

import versioned_tasks
from versioned_tasks import (
    ConfigurationError,
    DeclaredTask,
    SchemaError,
    VersionedMemoryHuey,
    VersionedTaskWrapper,
    default_app,
    set_default_app,
    versioned_task,
)

TASKS = """
from versioned_tasks import rename, tombstone, upcaster, versioned_task

CALLS = []
RETIRED = []


@versioned_task(version=2, name="{prefix}.send_invoice")
def send_invoice(invoice_id: int, currency: str) -> str:
    CALLS.append(("send_invoice", invoice_id, currency))
    return f"{{invoice_id}}-{{currency}}"


@upcaster("{prefix}.send_invoice", from_version=1)
def add_currency(payload: dict) -> dict:
    return {{**payload, "currency": "EUR"}}


rename("{prefix}.send_bill", "{prefix}.send_invoice")


@tombstone("{prefix}.legacy_export")
def legacy_export_retired(retired) -> None:
    RETIRED.append((retired.task, retired.version, dict(retired.payload)))


tombstone("{prefix}.old_report")
"""

OLD_TASKS = """
from versioned_tasks import VersionedHuey


def declare(app: VersionedHuey) -> dict:
    @app.versioned_task(version=1, name="{prefix}.send_invoice")
    def send_invoice(invoice_id: int) -> None: ...

    @app.versioned_task(version=1, name="{prefix}.send_bill")
    def send_bill(invoice_id: int) -> None: ...

    @app.versioned_task(version=3, name="{prefix}.legacy_export")
    def legacy_export(year: int) -> None: ...

    @app.versioned_task(version=1, name="{prefix}.old_report")
    def old_report() -> None: ...

    return {{
        "send_invoice": send_invoice,
        "send_bill": send_bill,
        "legacy_export": legacy_export,
        "old_report": old_report,
    }}
"""


@pytest.fixture(autouse=True)
def no_default_app() -> Iterator[None]:
    """Every test starts and ends with no default app."""
    set_default_app(None)
    yield
    set_default_app(None)


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write source as a uniquely named module on sys.path; return (name, prefix) maker."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str, prefix: str | None = None) -> tuple[str, str]:
        name = f"vt_declared_{uuid.uuid4().hex[:10]}"
        prefix = prefix or name
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source.format(prefix=prefix)))
        written.append(name)
        return name, prefix

    yield write
    for name in written:
        sys.modules.pop(name, None)


def load(name: str) -> ModuleType:
    importlib.invalidate_caches()
    return importlib.import_module(name)


@pytest.mark.parametrize("order", ["module_first", "app_first"])
def test_import_order_does_not_matter(
    order: str, make_huey: MakeHuey, write_module: Any, backend: str
) -> None:
    """Old messages of every kind run through the module's declarations on a real consumer."""
    name, prefix = write_module(TASKS)
    old_name, _ = write_module(OLD_TASKS, prefix)
    old = load(old_name).declare(make_huey())
    old["send_invoice"](7)
    old["send_bill"](8)
    old["legacy_export"](2019)
    old["old_report"]()

    if order == "module_first":
        module = load(name)
        app = make_huey(default=True)
    else:
        app = make_huey(default=True)
        module = load(name)

    assert default_app() is app
    assert isinstance(module.send_invoice, DeclaredTask)
    assert isinstance(module.send_invoice.task, VersionedTaskWrapper)
    assert module.send_invoice.task.huey is app
    app.check_schemas()
    module.send_invoice(9, "USD")
    with running_consumer(app):
        wait_for(lambda: len(module.CALLS) == 3 and len(module.RETIRED) == 1)
        wait_for(lambda: len(app.dead_letters) == 1)
    assert sorted(module.CALLS) == [
        ("send_invoice", 7, "EUR"),
        ("send_invoice", 8, "EUR"),
        ("send_invoice", 9, "USD"),
    ]
    assert [(f"{prefix}.legacy_export", 3, {"year": 2019})] == module.RETIRED
    (entry,) = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("retired", f"{prefix}.old_report", 1)
    assert queued(app) == []


def test_calls_s_schedule_and_call_local_go_to_the_default_app(write_module: Any) -> None:
    name, prefix = write_module(TASKS)
    module = load(name)
    app = VersionedMemoryHuey("declared", default=True)
    task = module.send_invoice
    assert repr(task) == f"<DeclaredTask '{prefix}.send_invoice' v2>"
    assert (task.version, task.logical_name, task.spec.version) == (2, f"{prefix}.send_invoice", 2)
    assert task.call_local("5", currency="EUR") == "5-EUR"
    built = task.s(1, "EUR")
    assert built.kwargs == {}
    assert built.args == (1, "EUR")
    task.schedule(args=(2, "GBP"), delay=60)
    (pending,) = app.pending()
    assert pending.eta is not None
    assert pending.kwargs == {"invoice_id": 2, "currency": "GBP"}
    task.map([(3, "EUR"), (4, "EUR")])
    assert len(app) == 3
    with pytest.raises(versioned_tasks.InvalidArguments):
        task("not a number", "EUR")
    assert len(app) == 3


def test_a_call_without_a_default_app_names_the_fix(write_module: Any) -> None:
    name, prefix = write_module(TASKS)
    module = load(name)
    with pytest.raises(ConfigurationError) as info:
        module.send_invoice(1, "EUR")
    message = str(info.value)
    assert f"Task '{prefix}.send_invoice' version 2 has no app to bind to" in message
    assert "default=True" in message
    assert "set_default_app" in message
    with pytest.raises(ConfigurationError):
        module.send_invoice.s(1, "EUR")
    with pytest.raises(ConfigurationError, match="No VersionedHuey is the default app"):
        default_app()
    # Tools probing private attributes get AttributeError, as from any object.
    assert not hasattr(module.send_invoice, "_pytestfixturefunction")


def test_two_default_apps_are_refused() -> None:
    first = VersionedMemoryHuey("first", default=True)
    with pytest.raises(ConfigurationError, match="Two apps claim to be the default") as info:
        VersionedMemoryHuey("second", default=True)
    assert "'first'" in str(info.value)
    assert "'second'" in str(info.value)
    assert default_app() is first
    set_default_app(first)  # the same app again is fine
    other = VersionedMemoryHuey("other")
    with pytest.raises(ConfigurationError, match="Two apps claim"):
        set_default_app(other)


def test_switching_the_default_binds_the_declarations_to_the_new_app(write_module: Any) -> None:
    name, _ = write_module(TASKS)
    module = load(name)
    first = VersionedMemoryHuey("first", default=True)
    module.send_invoice(1, "EUR")
    set_default_app(None)
    second = VersionedMemoryHuey("second", default=True)
    module.send_invoice(2, "EUR")
    module.send_invoice(3, "EUR")
    assert (len(first), len(second)) == (1, 2)
    assert module.send_invoice.task.huey is second
    # Made the default again, an app keeps what it was given the first time.
    set_default_app(None)
    set_default_app(first)
    module.send_invoice(4, "EUR")
    assert len(first) == 2


def test_app_bound_and_module_level_declarations_live_together(write_module: Any) -> None:
    name, prefix = write_module(TASKS)
    app = VersionedMemoryHuey("mixed", default=True)

    @app.versioned_task(version=1, name=f"{prefix}.ping")
    def ping(n: int) -> int:
        return n

    load(name)
    app.check_schemas()
    mine = {name for name in app.schema.specs if name.startswith(prefix)}
    assert mine == {f"{prefix}.ping", f"{prefix}.send_invoice"}
    with pytest.raises(SchemaError, match="declared twice"):

        @versioned_task(version=1, name=f"{prefix}.ping")
        def ping_again(n: int) -> int:
            return n


def test_bad_declarations_fail_at_import_even_without_an_app() -> None:
    with pytest.raises(SchemaError, match="'eta'"):

        @versioned_task(version=1, name="declared.bad")
        def bad(eta: int) -> None: ...

    with pytest.raises(SchemaError, match="versions are integers starting at 1"):

        @versioned_task(version=0, name="declared.bad_version")
        def bad_version() -> None: ...


def test_a_declaration_the_app_refuses_leaves_no_default(write_module: Any) -> None:
    """A clash found when an app becomes the default raises, and no app is left half-default."""
    name, prefix = write_module(TASKS)
    load(name)
    app = VersionedMemoryHuey("clash")

    @app.versioned_task(version=1, name=f"{prefix}.send_invoice")
    def send_invoice(invoice_id: int) -> None: ...

    with pytest.raises(SchemaError, match="declared twice"):
        set_default_app(app)
    with pytest.raises(ConfigurationError):
        default_app()
    VersionedMemoryHuey("fine", default=True)


def test_a_periodic_task_declared_anywhere_is_scheduled(write_module: Any) -> None:
    name, prefix = write_module(
        """
        from huey import crontab
        from versioned_tasks import versioned_periodic_task

        @versioned_periodic_task(crontab(minute="*"), version=1, name="{prefix}.tick")
        def tick(n: int = 1) -> int:
            return n
        """
    )
    module = load(name)
    app = VersionedMemoryHuey("periodic", default=True)
    periodic = [task.name for task in app._registry.periodic_tasks]
    assert module.tick.task.task_class.__name__ in periodic
    assert module.tick.logical_name == f"{prefix}.tick"


def test_module_level_tasks_type_check(tmp_path: Path) -> None:
    """mypy sees the function's parameters on calls, .s() and call_local()."""
    source = tmp_path / "typed.py"
    source.write_text(
        textwrap.dedent(
            """
            from typing_extensions import assert_type
            from versioned_tasks import versioned_task

            @versioned_task(version=1, name="typed.add")
            def add(a: int, b: int = 2) -> int:
                return a + b

            assert_type(add.call_local(1), int)
            add(1, b=3)
            add.s(1)
            add("x")  # error: wrong type
            add.call_local(1, c=4)  # error: unexpected keyword
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stdout
    assert 'incompatible type "str"; expected "int"' in errors[0]
    assert "Unexpected keyword argument" in errors[1]
