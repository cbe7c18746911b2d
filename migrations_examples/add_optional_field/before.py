"""Before the migration: ``orders.send_receipt`` at version 1."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("orders")


@huey.versioned_task(version=1, name="orders.send_receipt")
def send_receipt(order_id: int, email: str) -> str:
    """Send the receipt of an order."""
    return f"receipt for order {order_id} to {email}"
