"""Versioned tasks in Django, on the Huey instance of ``huey.contrib.djhuey``.

Add the app to ``INSTALLED_APPS`` beside ``huey.contrib.djhuey``, and name a
versioned Huey class in ``settings.HUEY``::

    INSTALLED_APPS = [..., "huey.contrib.djhuey", "versioned_tasks.contrib.djhuey"]
    HUEY = {"huey_class": "versioned_tasks.VersionedRedisHuey", "name": "shop"}

Then declare tasks in any app's ``tasks.py`` without importing the instance::

    from versioned_tasks.contrib.djhuey import db_versioned_task, upcaster

    @db_versioned_task(version=2, name="shop.send_receipt")
    def send_receipt(order_id: int, channel: str) -> None: ...

    @upcaster("shop.send_receipt", from_version=1)
    def add_channel(payload: dict) -> dict:
        return {**payload, "channel": "email"}

``load_tasks()`` imports every installed app's ``tasks`` module, as
``manage.py run_huey`` does (for a test session's ``conftest.py``, say).

The other names are bound to djhuey's instance, ``HUEY``: they are resolved
on first use, so importing this package reads no setting (Django imports it
while it loads the apps; ``versioned-tasks`` imports it before
``django.setup()``). The app brings ``manage.py versioned_tasks ...`` and a
system check that runs ``HUEY.check_schemas()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._bound import (
        HUEY,
        close_db,
        db_versioned_periodic_task,
        db_versioned_task,
        downcaster,
        rename,
        tombstone,
        upcaster,
        versioned_periodic_task,
        versioned_task,
    )
    from .project import load_tasks

__all__ = [
    "HUEY",
    "close_db",
    "db_versioned_periodic_task",
    "db_versioned_task",
    "downcaster",
    "load_tasks",
    "rename",
    "tombstone",
    "upcaster",
    "versioned_periodic_task",
    "versioned_task",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the instance is built from settings.HUEY by huey.contrib.djhuey the
    # first time one of these names is read, not when this package is imported.
    if name == "load_tasks":
        from .project import load_tasks

        return load_tasks
    if name in __all__:
        from . import _bound

        return getattr(_bound, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
