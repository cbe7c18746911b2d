"""The system check of ``versioned_tasks.contrib.djhuey`` (``manage.py check``).

It imports the apps' ``tasks`` modules, as ``manage.py run_huey`` does, and
runs ``HUEY.check_schemas()``: each schema problem is one error.

- ``versioned_tasks.E001``: a schema problem (an upcaster chain with a gap, a
  rename or tombstone that cannot work, ...), with its fix.
- ``versioned_tasks.E002``: ``settings.HUEY`` builds no VersionedHuey, or it
  does not build at all.
- ``versioned_tasks.E003``: a ``tasks`` module failed to import (a declaration
  refused: a duplicate version, a reserved parameter, ...).
- ``versioned_tasks.W001``: a warning ``check_schemas()`` gave.
"""

from __future__ import annotations

import warnings
from typing import Any

from django.core import checks

from ...exceptions import ConfigurationError, SchemaError, VersionedTaskError
from .project import load_tasks, project_app

__all__ = ["check_schemas"]


def check_schemas(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Check the declarations of djhuey's instance as a whole; one message per problem."""
    try:
        huey = project_app()
    except ConfigurationError as exc:
        return [
            checks.Error(
                str(exc),
                obj="settings.HUEY",
                id="versioned_tasks.E002",
            )
        ]
    try:
        load_tasks()
    except VersionedTaskError as exc:
        return [checks.Error(str(exc), obj="settings.HUEY", id="versioned_tasks.E003")]
    where = f"settings.HUEY ({huey.name!r})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            huey.check_schemas()
        except SchemaError as exc:
            errors: list[checks.CheckMessage] = [
                checks.Error(problem, obj=where, id="versioned_tasks.E001")
                for problem in exc.problems
            ]
        else:
            errors = []
    warned: list[checks.CheckMessage] = [
        checks.Warning(str(w.message), obj=where, id="versioned_tasks.W001") for w in caught
    ]
    return errors + warned
