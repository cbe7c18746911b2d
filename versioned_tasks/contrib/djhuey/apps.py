"""The Django app: ``versioned_tasks.contrib.djhuey`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

from ...app.declare import set_default_app
from ...app.huey import VersionedHuey


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
    """djhuey's instance becomes the process's default app, when it is a VersionedHuey.

    So module-level declarations (``from versioned_tasks import versioned_task``)
    in any app's ``tasks.py`` bind to it. A ``settings.HUEY`` that does not build
    one is left to the system check (``versioned_tasks.E002``) to report.
    """
    try:
        from huey.contrib import djhuey
    except (Exception, SystemExit):  # djhuey exits on a bad huey_class
        return
    if isinstance(djhuey.HUEY, VersionedHuey):
        set_default_app(djhuey.HUEY)
