"""The pytest plugin, run on small projects with pytester: corpus, fixtures, strategies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from versioned_tasks import VersionedMemoryHuey
from versioned_tasks.ops.lock import build_lock, write_lock

pytest_plugins = ["pytester"]

RECEIPT = "shop.send_receipt"

APP = """
from typing import Any

from versioned_tasks import RetiredMessage, VersionedSqliteHuey

huey = VersionedSqliteHuey("shop", filename="queue.db")


@huey.versioned_task(version=2, name="shop.send_receipt")
def send_receipt(order_id: int, email: str, locale: str = "en") -> str:
    return f"[{locale}] order {order_id} to {email}"


@huey.upcaster("shop.send_receipt", from_version=1)
def add_locale(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "locale": "en"}


huey.rename("shop.mail_receipt", "shop.send_receipt")


@huey.tombstone("shop.legacy_export")
def archive(retired: RetiredMessage) -> None: ...


huey.tombstone("shop.old_report")
"""

PROPERTY_TEST = """
from hypothesis import given, settings

from myapp import huey
from versioned_tasks.testing import assert_upcasts, payloads


@settings(max_examples=30, deadline=None)
@given(payloads(huey, "shop.send_receipt", version=1))
def test_every_valid_v1_payload_upcasts_to_a_valid_current_payload(payload):
    current = assert_upcasts(huey, "shop.send_receipt", payload, from_version=1)
    assert current == {**payload, "locale": "en"}
"""


def project(pytester: pytest.Pytester, ini: str = "versioned_tasks_app = myapp:huey") -> None:
    """A project with the app above, an ini file and ``pythonpath = .``."""
    pytester.makefile(".ini", pytest=f"[pytest]\npythonpath = .\n{ini}\n")
    pytester.makepyfile(myapp=APP)


def case(pytester: pytest.Pytester, relative: str, payload: Any) -> Path:
    """Write one corpus file under tests/payloads."""
    path = pytester.path / "tests" / "payloads" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def v1_lock(path: Path) -> None:
    """The lock file as written while send_receipt was at version 1."""
    old = VersionedMemoryHuey("shop")

    @old.versioned_task(version=1, name=RECEIPT)
    def send_receipt(order_id: int, email: str) -> None: ...

    path.parent.mkdir(parents=True, exist_ok=True)
    write_lock(path, build_lock(old))


def test_each_corpus_file_is_a_test(pytester: pytest.Pytester) -> None:
    """Good cases pass; a bad one fails with the file, task, version and field."""
    project(pytester)
    case(pytester, f"{RECEIPT}/v1/basic.json", {"order_id": 1, "email": "a@example.com"})
    case(pytester, f"{RECEIPT}/v2/french.json", {"order_id": 2, "email": "b@x", "locale": "fr"})
    bad = case(pytester, f"{RECEIPT}/v1/string_id.json", {"order_id": "one", "email": "c@x"})

    result = pytester.runpytest("-v")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "versioned_tasks: app myapp:huey, payloads tests/payloads",
            f"tests/payloads/{RECEIPT}/v1/basic.json::upcasts PASSED*",
            f"tests/payloads/{RECEIPT}/v1/string_id.json::upcasts FAILED*",
            f"tests/payloads/{RECEIPT}/v2/french.json::upcasts PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"Payload file {bad}: Task {RECEIPT!r} version 1 would be dead-lettered as "
            f"'invalid_payload' by the worker: Payload of {RECEIPT!r} (wire version 1, current "
            f"2) does not fit today's model: order_id: Input should be a valid integer*",
            "  upcaster myapp.add_locale (from_version=1): ok",
            '  payload given to the version 2 model: {"email":"c@x","locale":"en",'
            '"order_id":"one"}',
        ]
    )


def test_renames_tombstones_and_unknown_tasks_in_the_corpus(pytester: pytest.Pytester) -> None:
    """An old name follows its rename; a tombstone needs a handler; an unknown task fails."""
    project(pytester)
    case(pytester, "shop.mail_receipt/v1/old_name.json", {"order_id": 1, "email": "a@x"})
    case(pytester, "shop.legacy_export/v1/archived.json", {"day": "2024-01-01"})
    dead = case(pytester, "shop.old_report/v1/dead.json", {"day": 1})
    gone = case(pytester, "shop.gone/v3/lost.json", {})

    result = pytester.runpytest()

    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            f"Payload file {dead}: Task 'shop.old_report' is retired by a tombstone without a "
            f"handler, so its messages are dead-lettered as 'retired'. Give the tombstone a "
            f"handler, or delete {dead.parent.parent} if dead-lettering them is intended.",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"Payload file {gone}: Task 'shop.gone' version 3 would be dead-lettered as "
            f"'unknown_task' by the worker: Task 'shop.gone' is not declared in this app*",
        ]
    )


def test_a_misplaced_file_in_the_corpus_fails(pytester: pytest.Pytester) -> None:
    """A JSON file outside <task>/v<N>/<case>.json is reported, not silently skipped."""
    project(pytester)
    loose = case(pytester, f"{RECEIPT}/basic.json", {"order_id": 1, "email": "a@x"})

    result = pytester.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"Payload file {loose}: corpus files live at <task>/v<N>/*"])


def test_the_corpus_directory_and_lock_are_configurable(pytester: pytest.Pytester) -> None:
    """versioned_tasks_payloads and versioned_tasks_lock are read relative to the ini file."""
    project(
        pytester,
        "versioned_tasks_app = myapp.huey\n"
        "versioned_tasks_payloads = corpus\n"
        "versioned_tasks_lock = locks/app.lock",
    )
    path = pytester.path / "corpus" / RECEIPT / "v1" / "one.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"order_id": 1, "email": "a@x"}', encoding="utf-8")
    case(pytester, f"{RECEIPT}/v1/ignored.json", {"not": "collected"})
    pytester.makepyfile(
        test_project_lock="""
        def test_lock_path(versioned_tasks_lock, pytestconfig):
            assert versioned_tasks_lock == pytestconfig.rootpath / "locks" / "app.lock"
        """
    )

    result = pytester.runpytest("corpus", "tests", "test_project_lock.py", "-v")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"corpus/{RECEIPT}/v1/one.json::upcasts PASSED*"])


def test_the_fixture_gives_the_app_in_immediate_mode_then_restores_it(
    pytester: pytest.Pytester,
) -> None:
    """versioned_huey runs tasks at once; afterwards the app has its own storage back."""
    project(pytester)
    pytester.makepyfile(
        test_project_fixture="""
        from huey.storage import MemoryStorage, SqliteStorage

        import myapp


        def test_calls_run_at_once(versioned_huey):
            assert versioned_huey is myapp.huey
            assert isinstance(versioned_huey.storage, MemoryStorage)
            assert myapp.send_receipt(7, "a@x")() == "[en] order 7 to a@x"


        def test_afterwards_the_app_is_as_it_was():
            assert myapp.huey.immediate is False
            assert isinstance(myapp.huey.storage, SqliteStorage)
            assert myapp.huey.pending_count() == 0
        """
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=2)


def test_each_test_gets_a_fresh_storage_even_from_an_immediate_app(
    pytester: pytest.Pytester,
) -> None:
    """An app already in immediate mode: what one test leaves does not reach the next."""
    pytester.makefile(
        ".ini", pytest="[pytest]\npythonpath = .\nversioned_tasks_app = myapp:huey\n"
    )
    pytester.makepyfile(
        myapp="""
        from versioned_tasks import VersionedMemoryHuey

        huey = VersionedMemoryHuey("shop", immediate=True)
        own_storage = huey.storage


        @huey.versioned_task(version=1, name="shop.remind")
        def remind(order_id: int) -> None: ...
        """,
        test_project_fresh="""
        import myapp


        def test_one_leaves_a_scheduled_message(versioned_huey):
            assert versioned_huey.storage is not myapp.own_storage
            myapp.remind.schedule((1,), delay=3600)
            assert versioned_huey.scheduled_count() == 1


        def test_two_starts_empty(versioned_huey):
            assert versioned_huey.scheduled_count() == 0


        def test_three_the_app_is_as_it_was():
            assert myapp.huey.immediate is True
            assert myapp.huey.storage is myapp.own_storage
            assert myapp.huey.scheduled_count() == 0
        """,
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=3)


def test_a_property_test_of_every_valid_v1_payload(pytester: pytest.Pytester) -> None:
    """payloads() reads version 1 from the configured lock file; every draw upcasts."""
    project(pytester)
    v1_lock(pytester.path / "versioned-tasks.lock")
    pytester.makepyfile(test_project_property=PROPERTY_TEST)

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)


def test_a_property_test_finds_an_upcaster_that_breaks_a_valid_payload(
    pytester: pytest.Pytester,
) -> None:
    """An upcaster that fails on some valid v1 payload is caught, with the step named."""
    project(pytester)
    v1_lock(pytester.path / "versioned-tasks.lock")
    (pytester.path / "myapp.py").write_text(
        APP.replace('{**payload, "locale": "en"}', '{**payload, "locale": payload["email"][0]}'),
        encoding="utf-8",
    )
    pytester.makepyfile(test_project_property=PROPERTY_TEST)

    result = pytester.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*failing upcaster: myapp.add_locale (from_version=1) raised IndexError*"]
    )


def test_without_an_app_the_plugin_collects_nothing(pytester: pytest.Pytester) -> None:
    """No app: the corpus is left alone (the header says so); only the fixture complains."""
    pytester.makefile(".ini", pytest="[pytest]\n")
    case(pytester, f"{RECEIPT}/v1/basic.json", {"order_id": 1})
    pytester.makepyfile(
        test_project_plain="""
        def test_memory_app(versioned_memory_huey):
            @versioned_memory_huey.versioned_task(version=1, name="math.add")
            def add(a: int, b: int) -> int:
                return a + b

            assert add(1, 2)() == 3


        def test_configured_app(versioned_huey):
            pass
        """
    )

    result = pytester.runpytest()

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "versioned_tasks: tests/payloads is not checked; set versioned_tasks_app to "
            "collect its payloads",
        ]
    )
    assert (
        'versioned_tasks_app is not set; add versioned_tasks_app = "package.module:huey" to '
        "[tool.pytest.ini_options] (or pytest.ini), or use versioned_memory_huey."
    ) in result.stdout.lines


def test_an_app_that_does_not_import_fails_clearly(pytester: pytest.Pytester) -> None:
    """Corpus items and the fixture fail with the option, the file and the import error."""
    pytester.makefile(".ini", pytest="[pytest]\nversioned_tasks_app = nowhere:huey\n")
    case(pytester, f"{RECEIPT}/v1/basic.json", {"order_id": 1})
    pytester.makepyfile(test_project_app="def test_app(versioned_huey):\n    pass\n")

    result = pytester.runpytest()

    result.assert_outcomes(failed=1, errors=1)
    ini = pytester.path / "pytest.ini"
    expected = (
        f"Could not import module 'nowhere' for versioned_tasks_app = 'nowhere:huey' "
        f"(in {ini}): ModuleNotFoundError: No module named 'nowhere'"
    )
    # Once for the corpus item and once for the fixture; the short summary
    # repeats them in full when CI is set (pytest does not truncate it there).
    assert result.stdout.str().count(expected) in (2, 4)


def test_an_app_option_naming_something_else_fails(pytester: pytest.Pytester) -> None:
    """The option must name a VersionedHuey instance."""
    project(pytester, "versioned_tasks_app = myapp:send_receipt")
    case(pytester, f"{RECEIPT}/v1/basic.json", {"order_id": 1, "email": "a@x"})

    result = pytester.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*(in *pytest.ini) is a VersionedTaskWrapper, not a VersionedHuey instance; point "
            "it at the app, e.g. 'myproject.tasks:huey'."
        ]
    )


def test_a_project_without_the_plugin_options_is_untouched(pytester: pytest.Pytester) -> None:
    """JSON files elsewhere are not collected, and no header line is added."""
    pytester.makefile(".ini", pytest="[pytest]\n")
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "x.json").write_text("{}", encoding="utf-8")
    pytester.makepyfile(test_project_one="def test_one():\n    pass\n")

    result = pytester.runpytest()

    result.assert_outcomes(passed=1)
    assert "versioned_tasks" not in result.stdout.str()


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    """Installing the package is enough: pytest lists the plugin."""
    pytester.makefile(".ini", pytest="[pytest]\n")

    result = pytester.runpytest("--trace-config", "--co")

    result.stdout.fnmatch_lines(["*versioned_tasks*pytest_plugin.py*"])


def test_our_own_suite_configures_no_app(pytestconfig: pytest.Config) -> None:
    """The plugin is inert here: this project sets no app, and has no tests/payloads."""
    assert pytestconfig.getini("versioned_tasks_app") == ""
    assert not (Path(__file__).parent / "payloads").exists()
