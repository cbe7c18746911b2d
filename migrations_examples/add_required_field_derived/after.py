"""After the migration: version 2 carries the order's total, discounts included.

The shop now computes ``total_cents`` when it enqueues the charge; messages
written at version 1 are upcast with the total they meant: there were no
discounts before version 2, so it is quantity times unit price.
"""

from __future__ import annotations

from typing import Any

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("billing")


@huey.versioned_task(version=2, name="billing.charge_order")
def charge_order(order_id: int, quantity: int, unit_price_cents: int, total_cents: int) -> str:
    """Charge an order its total, as the shop computed it."""
    return f"charged {total_cents} cents for order {order_id}"


@huey.upcaster("billing.charge_order", from_version=1)
def add_total(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: before discounts, the total was quantity times unit price."""
    return {**payload, "total_cents": payload["quantity"] * payload["unit_price_cents"]}
