"""The shop app's tasks, declared without importing the Huey instance."""

from django.db import connection

from versioned_tasks.contrib.djhuey import (
    db_versioned_task,
    downcaster,
    rename,
    upcaster,
    versioned_task,
)

from .models import Event


@db_versioned_task(version=2, name="shop.send_receipt")
def send_receipt(order_id: int, channel: str) -> None:
    Event.objects.create(kind="receipt", detail=f"order {order_id} by {channel}")


@upcaster("shop.send_receipt", from_version=1)
def add_channel(payload: dict) -> dict:
    return {**payload, "channel": "email"}


@downcaster("shop.send_receipt", from_version=2)
def drop_channel(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key != "channel"}


@db_versioned_task(version=1, name="shop.notify_customer")
def notify_customer(customer_id: int) -> None:
    Event.objects.create(kind="notified", detail=f"customer {customer_id}")


rename("shop.notify_client", "shop.notify_customer")


def _probe(kind: str, label: str) -> None:
    # Read before any query: a query would open the connection.
    is_open = connection.connection is not None
    Event.objects.create(kind=kind, detail=label, connection_open=is_open)


@db_versioned_task(version=1, name="shop.probe_db")
def probe_db(label: str) -> None:
    _probe("probe_db", label)


@versioned_task(version=1, name="shop.probe_plain")
def probe_plain(label: str) -> None:
    _probe("probe_plain", label)
