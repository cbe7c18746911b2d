"""After the migration: version 2 adds an optional ``locale``.

Messages written at version 1 are upcast: receipts were always English before.
"""

from __future__ import annotations

from typing import Any

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("orders")


@huey.versioned_task(version=2, name="orders.send_receipt")
def send_receipt(order_id: int, email: str, locale: str = "en") -> str:
    """Send the receipt of an order, in the customer's language."""
    return f"[{locale}] receipt for order {order_id} to {email}"


@huey.upcaster("orders.send_receipt", from_version=1)
def add_locale(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: every receipt before version 2 was sent in English."""
    return {**payload, "locale": "en"}
