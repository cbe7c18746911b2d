"""Before the migration: ``billing.charge_order`` at version 1."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("billing")


@huey.versioned_task(version=1, name="billing.charge_order")
def charge_order(order_id: int, quantity: int, unit_price_cents: int) -> str:
    """Charge an order: the worker multiplies quantity by unit price."""
    return f"charged {quantity * unit_price_cents} cents for order {order_id}"
