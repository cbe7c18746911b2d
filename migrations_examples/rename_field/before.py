"""Before the migration: ``accounts.send_password_reset`` at version 1."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("accounts")


@huey.versioned_task(version=1, name="accounts.send_password_reset")
def send_password_reset(user_id: int, email: str) -> str:
    """Email a password-reset link to a user."""
    return f"reset link for user {user_id} sent to {email}"
