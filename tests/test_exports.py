"""The public surface: one sorted, complete ``__all__`` and one error tree."""

from __future__ import annotations

import inspect
import types

import pytest
from huey import storage

import versioned_tasks
from versioned_tasks import InvalidArguments, VersionedHuey, VersionedTaskError

ERROR_CLASSES = sorted(
    (
        name
        for name in versioned_tasks.__all__
        if isinstance(getattr(versioned_tasks, name), type)
        and issubclass(getattr(versioned_tasks, name), BaseException)
    ),
)


def isort_style(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then everything else."""
    if name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, name


def test_all_is_sorted() -> None:
    """``__all__`` is sorted as ruff sorts it: constants, classes, then the rest."""
    assert versioned_tasks.__all__ == sorted(versioned_tasks.__all__, key=isort_style)


def test_all_has_no_duplicates() -> None:
    """No name is exported twice."""
    assert len(set(versioned_tasks.__all__)) == len(versioned_tasks.__all__)


def test_all_is_complete() -> None:
    """Every public name in the package namespace (not a submodule) is in ``__all__``."""
    public = {
        name
        for name, value in vars(versioned_tasks).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(versioned_tasks.__all__) == set()


@pytest.mark.parametrize("name", versioned_tasks.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    """Each name in ``__all__`` is an attribute of the package."""
    assert hasattr(versioned_tasks, name)
    assert getattr(versioned_tasks, name) is not None


def test_star_import_gives_exactly_all() -> None:
    """``from versioned_tasks import *`` binds exactly the names in ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from versioned_tasks import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(versioned_tasks.__all__)


def test_the_error_tree_is_exported() -> None:
    """The documented errors are all exported."""
    assert set(ERROR_CLASSES) >= {
        "ConfigurationError",
        "DeadLetterNotFound",
        "DecodeError",
        "DowncastFailed",
        "EncodeError",
        "EnvelopeTooLarge",
        "InvalidArguments",
        "InvalidResult",
        "LockFileError",
        "MessageRejected",
        "ReplayFailed",
        "SchemaError",
        "SignatureError",
        "VersionedTaskError",
    }


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in ERROR_CLASSES
        if n != "RemoteException" and not issubclass(getattr(versioned_tasks, n), Warning)
    ],
)
def test_every_error_derives_from_versioned_task_error(name: str) -> None:
    """Every error class the library raises is a VersionedTaskError."""
    assert issubclass(getattr(versioned_tasks, name), VersionedTaskError)


def test_the_one_warning_is_a_user_warning() -> None:
    """SchemaWarning goes through :mod:`warnings`, so filters and ``-W error`` apply."""
    warnings = [n for n in ERROR_CLASSES if issubclass(getattr(versioned_tasks, n), Warning)]
    assert warnings == ["SchemaWarning"]
    assert issubclass(versioned_tasks.SchemaWarning, UserWarning)


def test_remote_exception_is_a_value_not_a_library_error() -> None:
    """RemoteException stands in for a user's exception; it is not raised by the library."""
    assert not issubclass(versioned_tasks.RemoteException, VersionedTaskError)


def test_invalid_arguments_is_a_value_error() -> None:
    """InvalidArguments can be caught as a ValueError."""
    assert issubclass(InvalidArguments, ValueError)
    error = InvalidArguments(task="t", version=1, errors=[{"loc": ("x",), "msg": "bad"}])
    assert isinstance(error, ValueError)
    assert isinstance(error, VersionedTaskError)


def test_errors_module_lists_the_same_errors() -> None:
    """``versioned_tasks.exceptions.__all__`` is sorted and exported from the package."""
    from versioned_tasks import exceptions

    assert exceptions.__all__ == sorted(exceptions.__all__, key=isort_style)
    for name in exceptions.__all__:
        assert getattr(versioned_tasks, name) is getattr(exceptions, name)
        assert inspect.isclass(getattr(exceptions, name))


def test_reasons_are_the_documented_strings() -> None:
    """REASONS holds exactly the seven documented dead-letter reasons."""
    assert set(versioned_tasks.REASONS) == {
        "undecodable",
        "bad_signature",
        "unknown_task",
        "upcast_failed",
        "invalid_payload",
        "newer_version",
        "retired",
    }


def test_the_deferral_signal_is_a_huey_signal_name() -> None:
    """SIGNAL_DEFERRED is the string receivers register with ``@huey.signal(...)``."""
    assert versioned_tasks.SIGNAL_DEFERRED == "deferred"
    assert issubclass(versioned_tasks.DowncastFailed, InvalidArguments)
    assert versioned_tasks.DeferredMessage.__doc__


def test_reserved_parameters_are_the_documented_names() -> None:
    """RESERVED_PARAMETERS holds the keyword arguments Huey's ``.s()`` consumes."""
    assert set(versioned_tasks.RESERVED_PARAMETERS) >= {
        "eta",
        "delay",
        "id",
        "retries",
        "retry_delay",
        "retry_backoff",
        "priority",
        "expires",
        "timeout",
    }


#: Each ready-made app class and the Huey storage it runs on.
READY_MADE = {
    "VersionedFileHuey": storage.FileStorage,
    "VersionedMemoryHuey": storage.MemoryStorage,
    "VersionedPostgresHuey": storage.PostgresStorage,
    "VersionedPriorityRedisExpireHuey": storage.PriorityRedisExpireStorage,
    "VersionedPriorityRedisHuey": storage.PriorityRedisStorage,
    "VersionedRedisExpireHuey": storage.RedisExpireStorage,
    "VersionedRedisHuey": storage.RedisStorage,
    "VersionedSqliteHuey": storage.SqliteStorage,
}


def test_every_ready_made_app_class_is_exported() -> None:
    """Exactly the ready-made classes above are exported VersionedHuey subclasses."""
    exported = {
        name
        for name in versioned_tasks.__all__
        if isinstance(getattr(versioned_tasks, name), type)
        and issubclass(getattr(versioned_tasks, name), VersionedHuey)
        and name != "VersionedHuey"
    }
    assert exported == set(READY_MADE)


@pytest.mark.parametrize(("name", "storage_class"), sorted(READY_MADE.items()))
def test_each_ready_made_app_class_uses_its_storage(name: str, storage_class: type) -> None:
    """A ready-made class is a VersionedHuey on the Huey storage its name says."""
    app_class = getattr(versioned_tasks, name)
    assert issubclass(app_class, VersionedHuey)
    assert app_class.storage_class is storage_class
    assert app_class.__doc__
