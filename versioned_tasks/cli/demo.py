"""The story that ``versioned-tasks demo`` tells: a deploy that changes tasks under a full queue.

Read it top to bottom; it is also an example of the library's whole surface.

1. **Yesterday's code** (:func:`old_code`) declares four tasks at version 1
   and fills the queue, one message scheduled a couple of seconds ahead.
2. **Today's code** (:func:`new_code`), a second app on the same SQLite file,
   moves ``billing.send_invoice`` to version 2 (a new ``currency`` field,
   with an upcaster from version 1), folds ``billing.send_bill`` into it with
   a rename, retires ``reports.legacy_export`` with a tombstone handler, and
   (by mistake) drops ``notifications.send_sms``.
3. Bytes that no current code wrote join the queue (:func:`stray_messages`):
   a truncated envelope and a pickle from before the migration.
4. A real Huey consumer drains the queue (:func:`drain`). Every message ends
   in exactly one place: it ran, its tombstone handler took it, or it sits in
   the dead-letter store with a reason.
5. **The fix** re-declares ``notifications.send_sms``; its dead letter is
   replayed and runs.

Nothing here is hidden machinery: the apps are plain ``VersionedSqliteHuey``
instances and the consumer is Huey's own.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from huey.api import Task
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..app.huey import VersionedHuey, VersionedSqliteHuey, VersionedTaskWrapper
from ..app.serializer import VersionedSerializer
from ..exceptions import DecodeError
from ..messages.readwrite import RetiredMessage
from ..storage.deadletters import DeadLetter

__all__ = ["run"]

QUEUE = "demo"
DB_NAME = "versioned-tasks-demo.db"
#: How far ahead yesterday's code schedules one of its messages.
SCHEDULE_DELAY = 2
#: The consumer stops once every message is accounted for, or after this long.
DEADLINE = 10.0


# -- yesterday's code -------------------------------------------------------------


def old_code(filename: str) -> list[Sent]:
    """Yesterday's release: four tasks at version 1, and the messages it left queued."""
    huey = VersionedSqliteHuey(QUEUE, filename=filename)

    @huey.versioned_task(version=1, name="billing.send_invoice")
    def send_invoice(invoice_id: int, amount_cents: int) -> None: ...

    @huey.versioned_task(version=1, name="billing.send_bill")
    def send_bill(invoice_id: int, amount_cents: int) -> None: ...

    @huey.versioned_task(version=1, name="reports.legacy_export")
    def legacy_export(quarter: str) -> None: ...

    @huey.versioned_task(version=1, name="notifications.send_sms")
    def send_sms(phone: str, text: str) -> None: ...

    sent = [
        Sent(
            "billing.send_invoice",
            1,
            "invoice_id=1001, amount_cents=1200",
            "ran",
            send_invoice(1001, 1200).id,
        ),
        Sent(
            "billing.send_bill",
            1,
            "invoice_id=1002, amount_cents=560",
            "ran",
            send_bill(1002, amount_cents=560).id,
        ),
        Sent(
            "billing.send_invoice",
            1,
            "invoice_id=1003, amount_cents=990",
            "ran",
            send_invoice.schedule(args=(1003, 990), delay=SCHEDULE_DELAY).id,
            note=f"due in {SCHEDULE_DELAY}s",
            timed=True,
        ),
        Sent(
            "reports.legacy_export",
            1,
            "quarter='2023-Q4'",
            "retired",
            legacy_export("2023-Q4").id,
        ),
        Sent(
            "notifications.send_sms",
            1,
            "phone='+32 470 12 34 56'",
            "dead:unknown_task",
            send_sms("+32 470 12 34 56", "Your invoice is ready").id,
        ),
    ]
    huey.storage.close()
    return sent


# -- today's code -----------------------------------------------------------------


class NewCode(NamedTuple):
    huey: VersionedHuey
    send_invoice: VersionedTaskWrapper[..., None]


def new_code(filename: str, journal: Journal, *, sms_restored: bool = False) -> NewCode:
    """Today's release, on the same queue; ``sms_restored=True`` is the fix deployed later."""
    huey = VersionedSqliteHuey(QUEUE, filename=filename)

    # Version 2 adds `currency`. context=True hands the running Task to the
    # function, so the journal can file the run under the message's id.
    @huey.versioned_task(version=2, name="billing.send_invoice", context=True)
    def send_invoice(invoice_id: int, amount_cents: int, currency: str, task: Task) -> None:
        journal.record_run(
            task,
            "billing.send_invoice",
            2,
            invoice_id=invoice_id,
            amount_cents=amount_cents,
            currency=currency,
        )

    # Version 1 messages still on the queue get the currency every old invoice had.
    @huey.upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    # send_bill took the same arguments as send_invoice v1: its queued
    # messages run as send_invoice, upcast from version 1 on the way.
    huey.rename("billing.send_bill", "billing.send_invoice")

    # The legacy export is gone; its queued messages reach this handler, once each.
    @huey.tombstone("reports.legacy_export")
    def legacy_export_retired(retired: RetiredMessage) -> None:
        journal.record_retired(retired)

    if sms_restored:

        @huey.versioned_task(version=1, name="notifications.send_sms", context=True)
        def send_sms(phone: str, text: str, task: Task) -> None:
            journal.record_run(task, "notifications.send_sms", 1, phone=phone, text=text)

    return NewCode(huey, send_invoice)


def stray_messages(huey: VersionedHuey) -> list[Sent]:
    """Bytes that no current code wrote, pushed straight onto the queue."""
    truncated = b'VTE1{"kind":"task","task":"billing.send_invoice","v":1,"id":"cut-off'
    legacy = pickle.dumps(("billing.send_invoice", (1004,), {"amount_cents": 100}))
    huey.storage.enqueue(truncated)
    huey.storage.enqueue(legacy)
    return [
        Sent(
            None,
            None,
            f"{truncated[:28]!r}...",
            "dead:undecodable",
            raw=truncated,
            note="truncated envelope",
        ),
        Sent(
            None,
            None,
            f"{len(legacy)} bytes starting {legacy[:2]!r}",
            "dead:undecodable",
            raw=legacy,
            note="legacy pickle",
        ),
    ]


# -- running a real consumer ------------------------------------------------------


def drain(huey: VersionedHuey, done: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Run Huey's consumer until ``done()`` holds with the queue and schedule empty."""
    consumer = huey.create_consumer(
        workers=1,
        worker_type="thread",
        periodic=False,
        initial_delay=0.05,
        max_delay=0.5,
        check_worker_health=False,
    )
    with _keep_signal_handlers():
        consumer.start()
    try:
        stop_at = time.monotonic() + deadline
        while time.monotonic() < stop_at:
            if done() and huey.pending_count() == 0 and huey.scheduled_count() == 0:
                break
            time.sleep(0.05)
    finally:
        consumer.stop(graceful=True)


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    # The consumer installs its own SIGINT/SIGTERM handlers for its run loop;
    # this program waits on its own loop instead, so Ctrl-C must keep working.
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        signals.append(signal.SIGHUP)
    saved = {signum: signal.getsignal(signum) for signum in signals}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in saved.items():
                signal.signal(signum, handler)


# -- what the worker did ----------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """One task run, as the task function itself saw it."""

    task: str
    version: int
    arguments: dict[str, Any]
    at: float


@dataclass
class Journal:
    """What the worker did, by Huey task id. Tasks write to it from the consumer's thread."""

    ran: dict[str, Ran] = field(default_factory=dict)
    retired: dict[str, RetiredMessage] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_run(self, task: Task, name: str, version: int, **arguments: Any) -> None:
        with self.lock:
            self.ran[task.id] = Ran(name, version, arguments, time.monotonic())

    def record_retired(self, retired: RetiredMessage) -> None:
        with self.lock:
            self.retired[retired.id] = retired


@dataclass(frozen=True)
class Sent:
    """One message the story put on the queue, and where it is expected to end up."""

    task: str | None  # the task name and version on the wire, for an envelope
    version: int | None
    detail: str
    expected: str  # "ran", "retired" or "dead:<reason>"
    id: str | None = None  # the Huey task id of an envelope
    raw: bytes | None = None  # the exact bytes of a message pushed by hand
    note: str = ""
    timed: bool = False  # say how long after sending it ran
    at: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        name = f"{self.task} v{self.version}" if self.task else self.note
        return f"{name}, {self.note}" if self.task and self.note else name


# -- where each message ended up -----------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "ran", "retired", "dead:<reason>" or "missing"
    text: str


class Ledger:
    """Finds each sent message's fate in the journal and the dead-letter store."""

    def __init__(self, huey: VersionedHuey, journal: Journal) -> None:
        self.huey = huey
        self.journal = journal
        self._unpack = VersionedSerializer().unpack

    def dead_letter_of(self, sent: Sent) -> DeadLetter | None:
        for entry in self.huey.dead_letters:
            if sent.raw is not None and entry.raw == sent.raw:
                return entry
            if sent.id is not None and self._header_id(entry.raw) == sent.id:
                return entry
        return None

    def _header_id(self, raw: bytes) -> object:
        try:
            header, _ = self._unpack(raw)
        except DecodeError:
            return None
        return header.get("id")

    def outcome(self, sent: Sent) -> Outcome:
        with self.journal.lock:
            ran = self.journal.ran.get(sent.id or "")
            retired = self.journal.retired.get(sent.id or "")
        if ran is not None:
            return Outcome("ran", _describe_run(sent, ran))
        if retired is not None:
            return Outcome(
                "retired",
                f"retired: the tombstone handler got {retired.task} v{retired.version} "
                f"with payload {retired.payload!r}",
            )
        entry = self.dead_letter_of(sent)
        if entry is not None:
            return Outcome(
                f"dead:{entry.reason}",
                f"dead-lettered as {entry.reason}: {_first_clause(entry.error)}",
            )
        return Outcome("missing", "not accounted for")

    def all_accounted(self, sent: list[Sent]) -> bool:
        return all(self.outcome(s).kind != "missing" for s in sent)


def _describe_run(sent: Sent, ran: Ran) -> str:
    steps = []
    if sent.task != ran.task:
        steps.append(f"renamed {sent.task} -> {ran.task}")
    if sent.version != ran.version:
        steps.append(f"upcast {sent.version}->{ran.version}")
    arguments = ", ".join(f"{key}={value!r}" for key, value in ran.arguments.items())
    steps.append(f"ran as {ran.task} v{ran.version} with {arguments}")
    timing = f" ({ran.at - sent.at:.1f}s after it was sent)" if sent.timed else ""
    return ", ".join(steps) + timing


# -- the story ----------------------------------------------------------------------


def run(console: Console, *, directory: Path | None = None, keep: bool = False) -> int:
    """Tell the whole story on a fresh SQLite file; returns the exit code (0: as expected)."""
    workdir = (
        Path(tempfile.mkdtemp(prefix="versioned-tasks-demo-")) if directory is None else directory
    )
    workdir.mkdir(parents=True, exist_ok=True)
    filename = str(workdir / DB_NAME)
    _remove_db(filename)
    try:
        with _quiet_logs():
            return _story(console, filename)
    finally:
        if keep:
            console.print(
                f"\nKept the queue's SQLite file: {filename}\nTo inspect its dead letters, "
                f"point an app at it, e.g. huey = VersionedSqliteHuey({QUEUE!r}, "
                f"filename={filename!r}) in mymodule.py, and run "
                f"`versioned-tasks dlq list --app mymodule:huey`.",
                highlight=False,
                markup=False,
            )
        elif directory is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _remove_db(filename)


def _story(console: Console, filename: str) -> int:
    console.rule("[bold]versioned_tasks demo[/bold]: a deploy under a full queue")
    console.print(Text(f"Queue {QUEUE!r} on the SQLite file {filename}\n"))

    console.print("[bold]1. Yesterday's code[/bold] enqueues version 1 messages.")
    sent = old_code(filename)

    console.print(
        "[bold]2. Today's code[/bold] is deployed on the same queue: send_invoice v2 "
        "(+currency, upcaster from v1), rename send_bill -> send_invoice, tombstone for "
        "legacy_export, and send_sms is gone."
    )
    journal = Journal()
    today = new_code(filename, journal)
    sent.append(
        Sent(
            "billing.send_invoice",
            2,
            "invoice_id=1005, amount_cents=4200, currency='USD'",
            "ran",
            today.send_invoice(1005, 4200, currency="USD").id,
        )
    )
    console.print("[bold]3. Stray bytes[/bold] reach the queue: a truncated envelope, a pickle.")
    sent += stray_messages(today.huey)

    console.print(
        f"[bold]4. A Huey consumer[/bold] (1 thread worker) drains the queue; one message "
        f"is due in {SCHEDULE_DELAY}s...\n"
    )
    ledger = Ledger(today.huey, journal)
    drain(today.huey, lambda: ledger.all_accounted(sent))
    outcomes = [ledger.outcome(s) for s in sent]
    console.print(_outcome_table(sent, outcomes))
    console.print(_dead_letter_table(today.huey.dead_letters.list()))
    today.huey.storage.close()

    replayed = _replay_after_fix(console, filename, journal, sent)
    return _verdict(console, sent, outcomes, replayed)


def _replay_after_fix(console: Console, filename: str, journal: Journal, sent: list[Sent]) -> bool:
    console.print(
        "\n[bold]5. The fix[/bold] is deployed: notifications.send_sms is declared again. "
        "Its dead letter is replayed through today's pipeline."
    )
    fixed = new_code(filename, journal, sms_restored=True).huey
    ledger = Ledger(fixed, journal)
    sms = next(s for s in sent if s.expected == "dead:unknown_task")
    entry = ledger.dead_letter_of(sms)
    if entry is None:
        console.print("[red]The send_sms dead letter is missing.[/red]")
        return False
    result = fixed.dead_letters.replay(entry.id)
    console.print(f"Replayed dead letter {entry.id}: enqueued again as task {result.id}.")
    drain(fixed, lambda: sms.id in journal.ran)
    outcome = ledger.outcome(sms)
    console.print(Text(f"{sms.label}: {outcome.text}"))
    left = fixed.dead_letters.list()
    console.print(
        f"Dead letters left: {len(left)} ({', '.join(sorted({e.reason for e in left}))})."
    )
    fixed.storage.close()
    still_dead = sum(s.expected.startswith("dead:") for s in sent) - 1
    return outcome.kind == "ran" and len(left) == still_dead


def _verdict(console: Console, sent: list[Sent], outcomes: list[Outcome], replayed: bool) -> int:
    wrong = [(s, o) for s, o in zip(sent, outcomes, strict=True) if o.kind != s.expected]
    for s, o in wrong:
        console.print(Text(f"Unexpected: {s.label} expected {s.expected}, got {o.kind}", "red"))
    if wrong or not replayed:
        return 1
    counts = {
        kind: sum(o.kind.startswith(kind) for o in outcomes) for kind in ("ran", "retired", "dead")
    }
    console.print(
        f"\n[green]All {len(sent)} messages accounted for[/green]: {counts['ran']} ran, "
        f"{counts['retired']} retired, {counts['dead']} dead-lettered, 1 replayed after the "
        f"fix. Nothing was lost and nothing was unpickled."
    )
    return 0


# -- showing it ---------------------------------------------------------------------


def _outcome_table(sent: list[Sent], outcomes: list[Outcome]) -> Table:
    table = Table(title="What happened to each message", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("message (as sent)")
    table.add_column("what happened")
    styles = {"ran": "green", "retired": "yellow"}
    for number, (s, o) in enumerate(zip(sent, outcomes, strict=True), start=1):
        style = styles.get(o.kind, "red")
        table.add_row(
            str(number),
            Text(f"{s.label}\n{s.detail}"),
            Text(o.text, style),
        )
    return table


def _dead_letter_table(entries: list[DeadLetter]) -> Table:
    table = Table(title="Dead-letter store (newest first)", show_lines=True)
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("reason")
    table.add_column("task")
    table.add_column("v", justify="right")
    table.add_column("error")
    for entry in entries:
        table.add_row(
            entry.id,
            entry.reason,
            Text(entry.task or "?"),
            "" if entry.version is None else str(entry.version),
            Text(_first_clause(entry.error)),
        )
    return table


def _first_clause(error: str) -> str:
    # The library's errors end with what to do about them; a table needs the "what".
    return error.split("; ")[0].rstrip(".")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    # The library logs every dead letter as a warning; the tables say it better here.
    handler = logging.NullHandler()
    loggers = [logging.getLogger("versioned_tasks"), logging.getLogger("huey")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _remove_db(filename: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(filename + suffix).unlink(missing_ok=True)
