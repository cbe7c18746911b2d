"""Settings of the test project: two apps declaring versioned tasks, SQLite, Redis.

The test sets VT_DJANGO_DB (the SQLite file), VT_DJANGO_QUEUE (a queue name
unique to the test) and REDIS_URL.
"""

import os

SECRET_KEY = "only-for-the-test-suite"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "huey.contrib.djhuey",
    "versioned_tasks.contrib.djhuey",
    "shop",
    "reports",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("VT_DJANGO_DB", "db.sqlite3"),
    }
}

HUEY = {
    "huey_class": "versioned_tasks.VersionedRedisHuey",
    "name": os.environ.get("VT_DJANGO_QUEUE", "vt_django_project"),
    "immediate": False,
    "connection": {"url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")},
    "consumer": {
        "workers": 1,
        "worker_type": "thread",
        "periodic": False,
        "initial_delay": 0.05,
        "max_delay": 0.2,
        "backoff": 1.5,
        "check_worker_health": False,
    },
}
