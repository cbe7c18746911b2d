"""A migration seen from outside, shared by the signal, log, metric and trace tests.

An "old" app writes messages that today's app must upcast, redirect (rename),
hand to a tombstone's handler, or dead-letter; ``run_migration`` drains them
through a real consumer of the "new" app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helpers import Recorder, running_consumer, wait_for

from versioned_tasks import RetiredMessage, VersionedHuey

OLD_NAME = "billing.send_bill"
NEW_NAME = "billing.send_invoice"
HANDLED = "reports.export"
UNHANDLED = "reports.legacy"
JUNK = b"not an envelope at all"


def declare_old(app: VersionedHuey) -> dict[str, Any]:
    """Yesterday's tasks: send_bill v1, and two tasks retired since."""

    @app.versioned_task(version=1, name=OLD_NAME)
    def send_bill(invoice_id: int) -> None: ...

    @app.versioned_task(version=1, name=HANDLED)
    def export(n: int) -> None: ...

    @app.versioned_task(version=1, name=UNHANDLED)
    def legacy(n: int) -> None: ...

    return {"send_bill": send_bill, "export": export, "legacy": legacy}


@dataclass
class NewApp:
    """Today's app and what its tasks and tombstone handler saw."""

    app: VersionedHuey
    ran: Recorder = field(default_factory=Recorder)
    handled: Recorder = field(default_factory=Recorder)
    send_invoice: Any = None


def declare_new(app: VersionedHuey) -> NewApp:
    """Today's tasks: send_invoice v2 (renamed from send_bill, upcast from v1),
    a tombstone with a handler and one without."""
    new = NewApp(app)

    @app.versioned_task(version=2, name=NEW_NAME)
    def send_invoice(invoice_id: int, currency: str) -> None:
        new.ran(invoice_id, currency)

    @app.upcaster(NEW_NAME, from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    app.rename(OLD_NAME, NEW_NAME)

    @app.tombstone(HANDLED)
    def exported(retired: RetiredMessage) -> None:
        new.handled(retired.task, retired.version, retired.id)

    app.tombstone(UNHANDLED)
    new.send_invoice = send_invoice
    return new


@dataclass(frozen=True)
class Sent:
    """The ids of the messages the old app wrote."""

    bill: str
    export: str
    legacy: str


def write_old_messages(old: VersionedHuey) -> Sent:
    """One message of each kind, plus bytes that are no envelope at all."""
    tasks = declare_old(old)
    bill = tasks["send_bill"](7)
    export = tasks["export"](1)
    legacy = tasks["legacy"](2)
    old.storage.enqueue(JUNK)
    return Sent(bill.id, export.id, legacy.id)


def run_migration(
    new: NewApp, *, extra: Callable[[], bool] = lambda: True, **options: Any
) -> None:
    """Drain the queue through a real consumer of the new app."""
    app = new.app
    with running_consumer(app, **options):
        wait_for(
            lambda: (
                len(new.ran) == 1
                and len(new.handled) == 1
                and len(app.dead_letters) == 2
                and app.pending_count() == 0
                and extra()
            ),
            timeout=30,
        )
