"""The pytest plugin of versioned_tasks (registered through the ``pytest11`` entry point).

Configure it in ``pyproject.toml`` (``[tool.pytest.ini_options]``) or ``pytest.ini``::

    versioned_tasks_app = "myproject.tasks:huey"     # the VersionedHuey app
    versioned_tasks_payloads = "tests/payloads"      # the payload corpus (default)
    versioned_tasks_lock = "versioned-tasks.lock"    # the lock file (default)

What it gives:

- every ``<payloads>/<task>/v<N>/<case>.json`` becomes a collected test that
  fails, naming the file, task, version and the upcaster step or field, when
  the payload does not upcast and validate against today's model, or, when a
  ``<case>.expected.json`` lies beside it, upcasts to something else;
- the ``versioned_huey`` fixture: the configured app in immediate mode for
  the test (tasks run when called, on an in-memory storage; the app's own
  storage is put back afterwards);
- the ``versioned_memory_huey`` fixture: a fresh, empty, immediate
  ``VersionedMemoryHuey`` to declare tasks on inside a test;
- the ``versioned_tasks_lock`` fixture: the configured lock file's path.

Without ``versioned_tasks_app`` the plugin collects nothing and changes
nothing; ``versioned_huey`` then fails with a message saying what to set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import testing
from .app.huey import VersionedHuey, VersionedMemoryHuey
from .app.loader import import_app
from .exceptions import ConfigurationError
from .ops.lock import DEFAULT_LOCK_PATH

__all__ = [
    "CorpusFile",
    "CorpusItem",
    "versioned_huey",
    "versioned_memory_huey",
    "versioned_tasks_lock",
]

APP_OPTION = "versioned_tasks_app"
PAYLOADS_OPTION = "versioned_tasks_payloads"
LOCK_OPTION = "versioned_tasks_lock"


@dataclass(frozen=True)
class _Settings:
    app: str
    payloads: Path
    lock: Path
    source: str  # where the options were read from, for messages


_SETTINGS = pytest.StashKey[_Settings]()
_APP = pytest.StashKey["VersionedHuey | ConfigurationError"]()
_PREVIOUS_LOCK = pytest.StashKey["Path | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the three ini options."""
    parser.addini(
        APP_OPTION,
        "The VersionedHuey app under test, as 'package.module:attribute' (or with a dot).",
        default="",
    )
    parser.addini(
        PAYLOADS_OPTION,
        "The payload corpus, <task>/v<N>/<case>.json files (default: tests/payloads).",
        default="tests/payloads",
    )
    parser.addini(
        LOCK_OPTION,
        f"The schema lock file (default: {DEFAULT_LOCK_PATH}).",
        default=DEFAULT_LOCK_PATH,
    )


def pytest_configure(config: pytest.Config) -> None:
    """Read the options; point payloads()'s default lock at the configured file."""
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    settings = _Settings(
        app=str(config.getini(APP_OPTION)).strip(),
        payloads=_absolute(base, config.getini(PAYLOADS_OPTION)),
        lock=_absolute(base, config.getini(LOCK_OPTION)),
        source=str(config.inipath) if config.inipath is not None else "the pytest configuration",
    )
    config.stash[_SETTINGS] = settings
    config.stash[_PREVIOUS_LOCK] = testing._default_lock
    testing._default_lock = settings.lock


def _absolute(base: Path, value: object) -> Path:
    # Normalized but not resolved: pytest hands collect hooks unresolved paths.
    return Path(os.path.normpath(base / str(value)))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put payloads()'s default lock back (pytest may run inside pytest)."""
    if _PREVIOUS_LOCK in config.stash:
        testing._default_lock = config.stash[_PREVIOUS_LOCK]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One line when the plugin is configured, or when a corpus sits unchecked."""
    settings = config.stash[_SETTINGS]
    if settings.app:
        return [
            f"versioned_tasks: app {settings.app}, payloads {_shown(config, settings.payloads)}"
        ]
    if settings.payloads.is_dir():
        return [
            f"versioned_tasks: {_shown(config, settings.payloads)} is not checked; set "
            f"{APP_OPTION} to collect its payloads"
        ]
    return []


def _shown(config: pytest.Config, path: Path) -> str:
    try:
        return path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return str(path)


# -- the app -----------------------------------------------------------------------------


def configured_app(config: pytest.Config) -> VersionedHuey:
    """The app named by ``versioned_tasks_app``, imported once per session.

    Raises:
        ConfigurationError: the option is not set, or does not name an importable
            VersionedHuey.
    """
    if _APP not in config.stash:
        try:
            config.stash[_APP] = _load_app(config.stash[_SETTINGS], config.rootpath)
        except ConfigurationError as exc:
            config.stash[_APP] = exc
    app = config.stash[_APP]
    if isinstance(app, ConfigurationError):
        raise app
    return app


def _load_app(settings: _Settings, rootpath: Path) -> VersionedHuey:
    where = f"{APP_OPTION} = {settings.app!r} (in {settings.source})"
    if not settings.app:
        raise ConfigurationError(
            f'{APP_OPTION} is not set; add {APP_OPTION} = "package.module:huey" to '
            f"[tool.pytest.ini_options] (or pytest.ini), or use versioned_memory_huey."
        )
    if str(rootpath) not in sys.path:
        sys.path.append(str(rootpath))
    return import_app(settings.app, label=where)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def versioned_huey(request: pytest.FixtureRequest) -> Iterator[VersionedHuey]:
    """The configured app (``versioned_tasks_app``) in immediate mode for this test.

    Calling a task runs it at once through the full envelope round trip, on a
    fresh in-memory storage; the app's schemas are checked first, as a
    worker's start would. The app's own storage and mode are restored after
    the test. Fails with a message naming the option when no app is set.
    """
    try:
        huey = configured_app(request.config)
    except ConfigurationError as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:  # outside the except: the report shows the message alone
        pytest.fail(problem, pytrace=False)
    huey.check_schemas()
    with testing.immediate(huey):
        yield huey


@pytest.fixture
def versioned_memory_huey() -> Iterator[VersionedMemoryHuey]:
    """A fresh, empty ``VersionedMemoryHuey`` in immediate mode, for tasks declared in a test."""
    huey = VersionedMemoryHuey("versioned-tasks-test", immediate=True)
    yield huey
    huey.storage.flush_all()


@pytest.fixture
def versioned_tasks_lock(request: pytest.FixtureRequest) -> Path:
    """The lock file's path (``versioned_tasks_lock``, relative to the ini file)."""
    return request.config.stash[_SETTINGS].lock


# -- the payload corpus ---------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CorpusFile | None:
    """Collect each ``.json`` file under the corpus, when an app is configured."""
    if file_path.suffix != ".json" or file_path.name.endswith(testing.EXPECTED_SUFFIX):
        return None
    settings = parent.config.stash[_SETTINGS]
    if not settings.app or not file_path.is_relative_to(settings.payloads):
        return None
    corpus_file: CorpusFile = CorpusFile.from_parent(parent, path=file_path)
    return corpus_file


class CorpusFile(pytest.File):
    """One payload file of the corpus; it holds a single test, ``upcasts``."""

    def collect(self) -> Iterator[CorpusItem]:
        """The file's one test."""
        yield CorpusItem.from_parent(self, name="upcasts")


class CorpusItem(pytest.Item):
    """Fails unless the file's payload upcasts and validates against today's model."""

    def runtest(self) -> None:
        """Check the payload through the app's read pipeline."""
        settings = self.config.stash[_SETTINGS]
        huey = configured_app(self.config)
        case = testing._parse_case_path(self.path, settings.payloads)
        testing._assert_schemas(huey)
        testing._check_case(huey, case)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        """The failure's message alone: the traceback would show the plugin, not the payload."""
        if isinstance(excinfo.value, AssertionError | ConfigurationError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the case is, for pytest's reports: ``payload <task>/v<N>/<case>.json``."""
        root = self.config.stash[_SETTINGS].payloads
        return self.path, None, f"payload {self.path.relative_to(root).as_posix()}"
