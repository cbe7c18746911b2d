"""After the migration: version 2 splits ``full_name`` into first and last name.

Messages written at version 1 are upcast: the first word is the first name,
the rest is the last name; a one-word name has an empty last name.
"""

from __future__ import annotations

from typing import Any

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("crm")


@huey.versioned_task(version=2, name="crm.send_welcome")
def send_welcome(email: str, first_name: str, last_name: str = "") -> str:
    """Send the welcome email of a new customer, addressed by first name."""
    return f"Welcome, {first_name}! (to {email})"


@huey.upcaster("crm.send_welcome", from_version=1)
def split_full_name(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: split at the first run of whitespace, ignoring stray spaces."""
    payload = dict(payload)
    words = payload.pop("full_name").split()
    first_name = words[0] if words else ""
    return {**payload, "first_name": first_name, "last_name": " ".join(words[1:])}
