"""Before the migration: ``crm.send_welcome`` at version 1, with one ``full_name``."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("crm")


@huey.versioned_task(version=1, name="crm.send_welcome")
def send_welcome(email: str, full_name: str) -> str:
    """Send the welcome email of a new customer."""
    return f"Welcome, {full_name}! (to {email})"
