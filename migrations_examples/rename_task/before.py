"""Before the migration: the task is called ``notifications.send_sms``."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("notifications")


@huey.versioned_task(version=1, name="notifications.send_sms")
def send_sms(phone: str, text: str) -> str:
    """Send a text message through the SMS gateway."""
    return f"SMS to {phone}: {text}"
