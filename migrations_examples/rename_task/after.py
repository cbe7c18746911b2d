"""After the migration: the task is ``messaging.send_text``, and the old name leads to it.

The arguments did not change, so the version stays 1: a rename carries the
version over to the new name's upcaster chain.
"""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("notifications")


@huey.versioned_task(version=1, name="messaging.send_text")
def send_text(phone: str, text: str) -> str:
    """Send a text message, by SMS or by a messaging app."""
    return f"text to {phone}: {text}"


huey.rename("notifications.send_sms", "messaging.send_text")
