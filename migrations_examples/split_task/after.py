"""After the split: shipping and the confirmation email are two tasks.

``orders.fulfil`` is retired by a tombstone whose handler forwards each of its
queued messages to both new tasks, so no order is left unshipped.
"""

from __future__ import annotations

from huey.api import group

from versioned_tasks import RetiredMessage, VersionedMemoryHuey

huey = VersionedMemoryHuey("orders")


@huey.versioned_task(version=1, name="orders.ship", retries=3)
def ship(order_id: int) -> str:
    """Hand an order to the carrier."""
    return f"order {order_id} shipped"


@huey.versioned_task(version=1, name="orders.send_confirmation")
def send_confirmation(order_id: int, email: str) -> str:
    """Email the confirmation of an order."""
    return f"confirmation of order {order_id} sent to {email}"


@huey.tombstone("orders.fulfil")
def forward_fulfil(retired: RetiredMessage) -> None:
    """A queued ``orders.fulfil`` becomes one ``orders.ship`` and one ``orders.send_confirmation``.

    Both are validated before either is enqueued; if the old payload does not
    fit, the handler raises and the message is dead-lettered as ``retired``.
    """
    order_id, email = retired.payload["order_id"], retired.payload["email"]
    huey.enqueue(group([ship.s(order_id), send_confirmation.s(order_id, email)]))
