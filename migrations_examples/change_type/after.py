"""After the migration: version 2 takes a ``Decimal`` amount instead of cents.

A ``Decimal`` travels as a string ("19.99"), so the upcaster writes one:
exact, with no float in between.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("billing")

Amount = Annotated[Decimal, Field(gt=0, decimal_places=2)]


@huey.versioned_task(version=2, name="billing.refund")
def refund(order_id: int, amount: Amount, currency: str = "EUR") -> str:
    """Refund part of an order, as an amount of the currency."""
    return f"refunded {amount} {currency} on order {order_id}"


@huey.upcaster("billing.refund", from_version=1)
def cents_to_amount(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: 1999 cents is the amount "19.99"."""
    payload = dict(payload)
    cents = payload.pop("amount_cents")
    return {**payload, "amount": str(Decimal(cents).scaleb(-2))}
