"""The Django app: ``versioned_tasks.contrib.djhuey`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class VersionedTasksConfig(AppConfig):  # type: ignore[misc]
    """Brings ``manage.py versioned_tasks`` and the ``versioned_tasks`` system check."""

    name = "versioned_tasks.contrib.djhuey"
    label = "versioned_tasks"
    verbose_name = "Versioned tasks"

    def ready(self) -> None:
        """Register the system check; make djhuey's instance the process's default app."""
        from .checks import check_schemas

        checks.register(check_schemas, "versioned_tasks")
        _make_default_app()


def _make_default_app() -> None:
    # MERGE POINT: the module-level declarations (`from versioned_tasks import
    # versioned_task`) bind to the process's default app; in Django that is
    # djhuey's instance. Wired here once versioned_tasks.app.declare exists.
    try:
        from ...app.declare import (  # type: ignore[import-not-found,unused-ignore]
            set_default_app,
        )
    except ImportError:
        return
    from ._bound import HUEY

    set_default_app(HUEY)
