"""After the migration: version 2 renames ``email`` to ``recipient_email``.

Messages written at version 1 are upcast: the field keeps its value under
its new name.
"""

from __future__ import annotations

from typing import Any

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("accounts")


@huey.versioned_task(version=2, name="accounts.send_password_reset")
def send_password_reset(user_id: int, recipient_email: str) -> str:
    """Email a password-reset link to a user."""
    return f"reset link for user {user_id} sent to {recipient_email}"


@huey.upcaster("accounts.send_password_reset", from_version=1)
def rename_email(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: ``email`` is now called ``recipient_email``."""
    payload = dict(payload)
    payload["recipient_email"] = payload.pop("email")
    return payload
