"""The declarations of ``versioned_tasks.contrib.djhuey``, bound to djhuey's instance.

Imported on first use of one of the package's names: importing it builds
``huey.contrib.djhuey.HUEY`` from ``settings.HUEY`` (djhuey passes the keys it
does not know, ``newer_version``, ``legacy_pickle``, ``serializer``, ..., to
``huey_class`` as keyword arguments).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast

from django.db import close_old_connections
from huey.contrib import djhuey

from ...app.huey import VersionedHuey, VersionedTaskWrapper
from ...exceptions import ConfigurationError

__all__ = [
    "HUEY",
    "close_db",
    "db_versioned_periodic_task",
    "db_versioned_task",
    "downcaster",
    "rename",
    "tombstone",
    "upcaster",
    "versioned_periodic_task",
    "versioned_task",
]

P = ParamSpec("P")
R = TypeVar("R")


def _versioned_instance(instance: Any) -> VersionedHuey:
    if isinstance(instance, VersionedHuey):
        return instance
    raise ConfigurationError(
        f"settings.HUEY builds a {type(instance).__name__}, not a VersionedHuey, so "
        f"versioned_tasks.contrib.djhuey has nothing to declare versioned tasks on; set "
        f"'huey_class': 'versioned_tasks.VersionedRedisHuey' (or another Versioned*Huey) "
        f"in the settings.HUEY dict, or assign a VersionedHuey instance to settings.HUEY."
    )


#: djhuey's instance, built from ``settings.HUEY``; it must be a VersionedHuey.
HUEY: VersionedHuey = _versioned_instance(djhuey.HUEY)

#: :meth:`VersionedHuey.versioned_task` of :data:`HUEY`.
versioned_task = HUEY.versioned_task
#: :meth:`VersionedHuey.versioned_periodic_task` of :data:`HUEY`.
versioned_periodic_task = HUEY.versioned_periodic_task
#: :meth:`VersionedHuey.upcaster` of :data:`HUEY`.
upcaster = HUEY.upcaster
#: :meth:`VersionedHuey.downcaster` of :data:`HUEY`.
downcaster = HUEY.downcaster
#: :meth:`VersionedHuey.rename` of :data:`HUEY`.
rename = HUEY.rename
#: :meth:`VersionedHuey.tombstone` of :data:`HUEY`.
tombstone = HUEY.tombstone

# Set while call_local runs a db task in the caller's thread: the caller's
# connections (a request's transaction) are not the worker's to close.
_local = threading.local()


@contextmanager
def _calling_locally() -> Iterator[None]:
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous


def close_db(fn: Callable[P, R]) -> Callable[P, R]:
    """Close stale database connections before and after ``fn`` runs in a worker.

    As djhuey's ``close_db``: nothing is closed in immediate mode, nor when the
    task runs through ``call_local()`` in the caller's thread.
    """

    @functools.wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        if HUEY.immediate or getattr(_local, "active", False):
            return fn(*args, **kwargs)
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return inner


def _local_call(wrapper: VersionedTaskWrapper[..., Any]) -> Callable[..., Any]:
    call_local = wrapper.call_local

    @functools.wraps(wrapper.func)
    def run_here(*args: Any, **kwargs: Any) -> Any:
        with _calling_locally():
            return call_local(*args, **kwargs)

    return run_here


def _with_db(
    declare: Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]],
) -> Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]]:
    def decorator(fn: Callable[..., Any]) -> VersionedTaskWrapper[..., Any]:
        wrapper = declare(close_db(fn))
        wrapper.call_local = _local_call(wrapper)  # type: ignore[method-assign]
        return wrapper

    return decorator


def db_versioned_task(
    version: int, **options: Any
) -> Callable[[Callable[P, R]], VersionedTaskWrapper[P, R]]:
    """:func:`versioned_task` for a task that uses the database (djhuey's ``db_task``).

    Stale connections are closed before and after each run in the worker, as
    Django closes them around a request. Takes the options of
    ``VersionedHuey.versioned_task``.
    """
    return cast(
        Callable[[Callable[P, R]], VersionedTaskWrapper[P, R]],
        _with_db(HUEY.versioned_task(version, **options)),
    )


def db_versioned_periodic_task(
    validate_datetime: Callable[[Any], bool], **options: Any
) -> Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]]:
    """:func:`versioned_periodic_task` for a task that uses the database
    (djhuey's ``db_periodic_task``)."""
    return _with_db(HUEY.versioned_periodic_task(validate_datetime, **options))
