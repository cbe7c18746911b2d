"""Loading a Django project for ``versioned-tasks`` and ``manage.py versioned_tasks``.

``django.setup()``, then the apps' ``tasks`` modules, as ``manage.py run_huey``
imports them, so that the app knows every task its workers run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ...app.huey import VersionedHuey
from ...exceptions import ConfigurationError, VersionedTaskError

__all__ = ["SETTINGS_VARIABLE", "load_tasks", "project_app", "setup_project"]

SETTINGS_VARIABLE = "DJANGO_SETTINGS_MODULE"


def setup_project(settings_module: str | None = None) -> None:
    """Set up the Django project and import its apps' ``tasks`` modules.

    ``settings_module`` replaces ``DJANGO_SETTINGS_MODULE`` (as ``--settings``
    does for ``manage.py``). Once the apps are loaded, only the ``tasks``
    modules are imported (again: those already imported are skipped).

    Raises:
        ConfigurationError: Django is not installed, no settings module is
            named, or the settings, an app or a ``tasks`` module do not load.
    """
    if settings_module:
        os.environ[SETTINGS_VARIABLE] = settings_module
    named = os.environ.get(SETTINGS_VARIABLE)
    try:
        import django
        from django.apps import apps
    except ImportError:
        raise ConfigurationError(
            f"{SETTINGS_VARIABLE} is {named!r}, but Django is not installed here; install "
            f"it, or unset {SETTINGS_VARIABLE} to load an app that is not a Django project."
        ) from None
    if not apps.ready:
        if not named:
            raise ConfigurationError(
                f"No Django settings: set {SETTINGS_VARIABLE} or pass --django-settings."
            )
        _guarded(django.setup, f"Setting up the Django project {named!r}")
    load_tasks()


def load_tasks() -> None:
    """Import every installed app's ``tasks`` module, as ``manage.py run_huey`` does.

    Raises:
        ConfigurationError: a ``tasks`` module raised while it was imported
            (a :class:`VersionedTaskError` is passed on as it is).
    """
    from django.utils.module_loading import autodiscover_modules

    _guarded(lambda: autodiscover_modules("tasks"), "Importing the apps' tasks modules")


def project_app() -> VersionedHuey:
    """djhuey's instance (``settings.HUEY``), once the project is set up.

    Raises:
        ConfigurationError: ``settings.HUEY`` does not build a VersionedHuey.
    """
    found: list[VersionedHuey] = []

    def read() -> None:
        from . import _bound

        found.append(_bound.HUEY)

    _guarded(read, "Building the Huey instance of settings.HUEY")
    return found[0]


def _guarded(step: Callable[[], Any], what: str) -> None:
    try:
        step()
    except VersionedTaskError:
        raise
    except SystemExit as exc:
        # huey.contrib.djhuey prints its configuration help and exits when
        # settings.HUEY names a class it cannot import.
        raise ConfigurationError(
            f"{what} called sys.exit({exc.code!r}); check settings.HUEY (huey_class, connection)."
        ) from None
    except Exception as exc:
        raise ConfigurationError(f"{what} failed: {type(exc).__name__}: {exc}") from None
