"""The test settings with the versioned options set in settings.HUEY."""

from versioned_tasks import VersionedSerializer

from .settings import *  # noqa: F403
from .settings import HUEY

HUEY = {
    **HUEY,
    "newer_version": "dead_letter",
    "newer_version_max_age": 600,
    "app_build": "shop-2026.12",
    "legacy_pickle": True,
    "emit_versions": {"shop.send_receipt": 1},
    "fleet": False,
    "serializer": VersionedSerializer(
        secret_keys={"k1": b"k1-secret-only-for-the-test-suite-0001"}, signing_key="k1"
    ),
}
