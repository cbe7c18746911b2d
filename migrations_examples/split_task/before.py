"""Before the split: one task ships an order and emails the confirmation."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("orders")


@huey.versioned_task(version=1, name="orders.fulfil")
def fulfil(order_id: int, email: str) -> str:
    """Ship an order, then email its confirmation."""
    return f"order {order_id} shipped; confirmation sent to {email}"
