"""Before the migration: ``billing.refund`` at version 1, in integer cents."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("billing")


@huey.versioned_task(version=1, name="billing.refund")
def refund(order_id: int, amount_cents: int, currency: str = "EUR") -> str:
    """Refund part of an order, in cents of the currency."""
    return f"refunded {amount_cents} cents {currency} on order {order_id}"
