"""versioned_tasks.testing: assert_upcasts, check_corpus, capture_payloads, payloads."""

from __future__ import annotations

import datetime
import json
import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import MakeHuey, examples
from huey.storage import SqliteStorage
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel, field_validator

from versioned_tasks import (
    ConfigurationError,
    LockFileError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedSerializer,
    VersionedSqliteHuey,
)
from versioned_tasks.ops.lock import build_lock, write_lock
from versioned_tasks.testing import (
    Captured,
    Skipped,
    assert_upcasts,
    capture_payloads,
    check_corpus,
    immediate,
    payloads,
)

INVOICE = "billing.send_invoice"


def invoice_app(huey: VersionedHuey | None = None) -> VersionedHuey:
    """Version 3 of an invoice task: v1 had a full name, v2 added the currency."""
    huey = huey if huey is not None else VersionedMemoryHuey("billing")

    @huey.versioned_task(version=3, name=INVOICE)
    def send_invoice(
        invoice_id: int, currency: str, first: str, last: str, amount: Decimal = Decimal("0")
    ) -> str:
        return f"{invoice_id} {currency} {first} {last} {amount}"

    @huey.upcaster(INVOICE, from_version=1)
    def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

    @huey.upcaster(INVOICE, from_version=2)
    def split_name(payload: dict[str, Any]) -> dict[str, Any]:
        rest = dict(payload)
        first, last = rest.pop("name").split(" ", 1)
        return {**rest, "first": first, "last": last}

    return huey


def v1_app(huey: VersionedHuey) -> Any:
    """Version 1 of the invoice task, as the old code declared it."""

    @huey.versioned_task(version=1, name=INVOICE)
    def send_invoice(invoice_id: int, name: str) -> None: ...

    return send_invoice


def write(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


# -- assert_upcasts ---------------------------------------------------------------------


def test_assert_upcasts_returns_the_current_payload_in_json_form() -> None:
    """A v1 payload runs the whole chain; defaults are filled, the Decimal is a string."""
    huey = invoice_app()

    current = assert_upcasts(
        huey, INVOICE, {"invoice_id": 7, "name": "Ada Lovelace"}, from_version=1
    )

    assert current == {
        "invoice_id": 7,
        "currency": "EUR",
        "first": "Ada",
        "last": "Lovelace",
        "amount": "0",
    }


def test_assert_upcasts_compares_with_expected() -> None:
    """``expected`` is the JSON form of the current payload."""
    huey = invoice_app()
    expected = {"invoice_id": 7, "currency": "USD", "first": "A", "last": "B", "amount": "2.5"}

    assert assert_upcasts(huey, INVOICE, expected, from_version=3, expected=expected) == expected


def test_assert_upcasts_names_each_field_that_differs_from_expected() -> None:
    """A mismatch lists missing, unexpected and different fields."""
    huey = invoice_app()

    with pytest.raises(AssertionError) as caught:
        assert_upcasts(
            huey,
            INVOICE,
            {"invoice_id": 7, "name": "Ada Lovelace"},
            from_version=1,
            expected={"invoice_id": 8, "currency": "EUR", "first": "Ada", "amount": "0", "x": 1},
        )

    assert str(caught.value).splitlines()[:5] == [
        f"Task {INVOICE!r} version 1 upcasts to a different payload:",
        "  x: missing (expected 1)",
        '  last: not expected (got "Lovelace")',
        "  invoice_id: got 7, expected 8",
        '  whole payload: {"amount":"0","currency":"EUR","first":"Ada","invoice_id":7,'
        '"last":"Lovelace"}',
    ]


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        pytest.param(True, "got 1, expected true", id="bool-for-int"),
        pytest.param(1.0, "got 1, expected 1.0", id="float-for-int"),
    ],
)
def test_expected_values_are_compared_with_their_json_types(amount: Any, shown: str) -> None:
    """``True == 1`` and ``1.0 == 1`` in Python, not on the wire: a mismatch."""
    huey = VersionedMemoryHuey("typed")

    @huey.versioned_task(version=1, name="shop.pay")
    def pay(amount: int) -> None: ...

    with pytest.raises(AssertionError) as caught:
        assert_upcasts(
            huey, "shop.pay", {"amount": 1}, from_version=1, expected={"amount": amount}
        )

    assert str(caught.value).splitlines()[1] == f"  amount: {shown}"
    assert assert_upcasts(huey, "shop.pay", {"amount": 1}, from_version=1, expected={"amount": 1})


def test_a_failing_upcaster_is_named_with_its_input() -> None:
    """The message names the task, version, the upcaster function and what it was given."""
    huey = invoice_app()

    with pytest.raises(AssertionError) as caught:
        assert_upcasts(huey, INVOICE, {"invoice_id": 7, "name": "Ada"}, from_version=1)

    assert str(caught.value).splitlines() == [
        f"Task {INVOICE!r} version 1 would be dead-lettered as 'upcast_failed' by the worker: "
        f"Upcaster test_testing.invoice_app.<locals>.split_name of {INVOICE!r} from version "
        f"2 to 3 raised ValueError: not enough values to unpack (expected 2, got 1); fix it "
        f"and replay.",
        "  upcaster test_testing.invoice_app.<locals>.add_currency (from_version=1): ok",
        "  failing upcaster: test_testing.invoice_app.<locals>.split_name (from_version=2) "
        "raised ValueError: not enough values to unpack (expected 2, got 1)",
        '  its input: {"currency":"EUR","invoice_id":7,"name":"Ada"}',
    ]


def test_a_field_that_fails_validation_after_upcasting_is_named() -> None:
    """invalid_payload names the field and shows the payload the model got."""
    huey = invoice_app()

    with pytest.raises(AssertionError) as caught:
        assert_upcasts(huey, INVOICE, {"invoice_id": "seven", "name": "A B"}, from_version=1)

    message = str(caught.value)
    assert message.startswith(
        f"Task {INVOICE!r} version 1 would be dead-lettered as 'invalid_payload' by the worker: "
        f"Payload of {INVOICE!r} (wire version 1, current 3) does not fit today's model: "
        f"invoice_id: Input should be a valid integer"
    )
    assert message.endswith(
        '  payload given to the version 3 model: {"currency":"EUR","first":"A",'
        '"invoice_id":"seven","last":"B"}'
    )


def test_a_version_below_the_chain_fails_with_the_fix() -> None:
    """No upcaster from version 1: the message says which one to register."""
    huey = VersionedMemoryHuey("billing")

    @huey.versioned_task(version=3, name=INVOICE)
    def send_invoice(invoice_id: int) -> None: ...

    @huey.upcaster(INVOICE, from_version=2)
    def noop(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    with pytest.raises(AssertionError, match=re.escape("from_version=1) and replay")):
        assert_upcasts(huey, send_invoice, {"invoice_id": 1}, from_version=1)


def test_a_renamed_task_is_upcast_under_its_old_name() -> None:
    """The old name on the wire follows the rename, as in the worker."""
    huey = invoice_app()
    huey.rename("billing.send_bill", INVOICE)

    current = assert_upcasts(
        huey, "billing.send_bill", {"invoice_id": 1, "name": "A B"}, from_version=1
    )

    assert current["first"] == "A"


def test_a_retired_task_has_no_current_payload() -> None:
    """A tombstoned task fails, saying where its messages go."""
    huey = invoice_app()
    huey.tombstone("reports.export")

    with pytest.raises(AssertionError) as caught:
        assert_upcasts(huey, "reports.export", {"day": 1}, from_version=1)

    assert str(caught.value) == (
        "Task 'reports.export' version 1 is retired (tombstone 'reports.export'): it is "
        "dead-lettered as 'retired' (the tombstone has no handler) and has no current "
        "payload to upcast to."
    )


def test_a_version_newer_than_the_app_fails() -> None:
    """A payload from the future would be deferred, not run."""
    huey = invoice_app()

    with pytest.raises(AssertionError, match=re.escape("is newer than the app knows (version 3)")):
        assert_upcasts(huey, INVOICE, {"invoice_id": 1}, from_version=4)


def test_an_unknown_task_fails_with_the_fix() -> None:
    """unknown_task is what the worker would do."""
    huey = invoice_app()

    with pytest.raises(AssertionError, match=re.escape("as 'unknown_task' by the worker")):
        assert_upcasts(huey, "billing.gone", {}, from_version=1)


def test_a_broken_chain_fails_as_the_worker_would_refuse_to_start() -> None:
    """A gap in the chain is a schema problem, reported before any payload."""
    huey = VersionedMemoryHuey("billing")

    @huey.versioned_task(version=3, name=INVOICE)
    def send_invoice(invoice_id: int) -> None: ...

    @huey.upcaster(INVOICE, from_version=1)
    def step(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    with pytest.raises(AssertionError, match=re.escape("no upcaster from version 2 to 3")):
        assert_upcasts(huey, INVOICE, {"invoice_id": 1}, from_version=1)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ([1, 2], "the payload is a list; a payload is a JSON object of named fields."),
        ({"ids": {1, 2}}, "the payload is not what an envelope carries"),
    ],
)
def test_a_payload_not_in_json_form_is_refused(payload: Any, why: str) -> None:
    """Payloads are named fields in JSON form, as on the wire."""
    with pytest.raises(AssertionError, match=re.escape(f"Task {INVOICE!r} version 1: {why}")):
        assert_upcasts(invoice_app(), INVOICE, payload, from_version=1)


def test_a_task_with_an_args_model_gives_back_the_model_fields() -> None:
    """args_model tasks upcast and return the model's JSON form (aliases as on the wire)."""
    huey = VersionedMemoryHuey("shop")

    class Order(BaseModel):
        order_id: int
        placed: datetime.date

    @huey.versioned_task(version=2, name="shop.ship", args_model=Order)
    def ship(order: Order) -> None: ...

    @huey.upcaster("shop.ship", from_version=1)
    def add_date(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "placed": "2024-01-31"}

    current = assert_upcasts(huey, ship, {"order_id": 3}, from_version=1)

    assert current == {"order_id": 3, "placed": "2024-01-31"}


def test_a_signing_app_checks_payloads_through_its_signature() -> None:
    """The envelope is framed and verified with the app's keys, as in production."""
    serializer = VersionedSerializer(secret_keys={"k1": "s" * 32}, signing_key="k1")
    huey = invoice_app(VersionedMemoryHuey("billing", serializer=serializer))

    current = assert_upcasts(huey, INVOICE, {"invoice_id": 1, "name": "A B"}, from_version=1)

    assert current["last"] == "B"


# -- check_corpus -----------------------------------------------------------------------


def test_check_corpus_counts_the_cases(tmp_path: Path) -> None:
    """Every <task>/v<N>/<case>.json is checked; non-JSON files are ignored."""
    write(tmp_path / INVOICE / "v1" / "basic.json", {"invoice_id": 1, "name": "A B"})
    write(
        tmp_path / INVOICE / "v2" / "usd.json", {"invoice_id": 2, "name": "C D", "currency": "USD"}
    )
    write(
        tmp_path / INVOICE / "v3" / "today.json",
        {"invoice_id": 3, "currency": "EUR", "first": "E", "last": "F"},
    )
    (tmp_path / "README.md").write_text("captured payloads", encoding="utf-8")

    assert check_corpus(invoice_app(), tmp_path) == 3


def test_check_corpus_names_every_failing_file(tmp_path: Path) -> None:
    """All failures are reported at once, each with its file."""
    write(tmp_path / INVOICE / "v1" / "ok.json", {"invoice_id": 1, "name": "A B"})
    bad = write(tmp_path / INVOICE / "v1" / "one_name.json", {"invoice_id": 1, "name": "Ada"})
    gone = write(tmp_path / "billing.gone" / "v1" / "x.json", {})

    with pytest.raises(AssertionError) as caught:
        check_corpus(invoice_app(), tmp_path)

    message = str(caught.value)
    assert message.startswith(f"2 of 3 payload file(s) in {tmp_path} fail:\n\n")
    assert (
        f"Payload file {gone}: Task 'billing.gone' version 1 would be dead-lettered as " in message
    )
    assert f"Payload file {bad}: Task {INVOICE!r} version 1 would be dead-lettered" in message
    assert "split_name (from_version=2) raised ValueError" in message


@pytest.mark.parametrize(
    "relative", ["loose.json", f"{INVOICE}/basic.json", f"{INVOICE}/1/basic.json", "a/v1/b/c.json"]
)
def test_a_file_outside_the_layout_fails(tmp_path: Path, relative: str) -> None:
    """A misplaced payload is an error, not silently skipped."""
    path = write(tmp_path / relative, {})

    with pytest.raises(AssertionError, match=re.escape(f"Payload file {path}: corpus files live")):
        check_corpus(invoice_app(), tmp_path)


def test_a_file_that_is_not_json_fails(tmp_path: Path) -> None:
    """The file is named with the parse error."""
    path = tmp_path / INVOICE / "v1" / "broken.json"
    path.parent.mkdir(parents=True)
    path.write_text("{", encoding="utf-8")

    with pytest.raises(AssertionError, match=re.escape(f"Payload file {path}: cannot be read")):
        check_corpus(invoice_app(), tmp_path)


def test_a_renamed_task_keeps_its_old_directory(tmp_path: Path) -> None:
    """Cases captured under the old name still run through the rename."""
    huey = invoice_app()
    huey.rename("billing.send_bill", INVOICE)
    write(tmp_path / "billing.send_bill" / "v1" / "old.json", {"invoice_id": 1, "name": "A B"})

    assert check_corpus(huey, tmp_path) == 1


def test_a_retired_task_passes_only_with_a_handler(tmp_path: Path) -> None:
    """With a handler the worker hands such messages over; without one they dead-letter."""
    write(tmp_path / "reports.export" / "v1" / "one.json", {"day": 1})
    with_handler = invoice_app()
    with_handler.tombstone("reports.export", lambda retired: None)
    without = invoice_app()
    without.tombstone("reports.export")

    assert check_corpus(with_handler, tmp_path) == 1
    with pytest.raises(AssertionError, match="retired by a tombstone without a handler"):
        check_corpus(without, tmp_path)


def test_a_missing_corpus_directory_fails(tmp_path: Path) -> None:
    """A typo in the path does not pass as an empty corpus."""
    with pytest.raises(AssertionError, match="is not a directory"):
        check_corpus(invoice_app(), tmp_path / "nope")


# -- capture_payloads -------------------------------------------------------------------


def test_capture_from_the_queue_writes_each_message_and_removes_nothing(
    make_huey: MakeHuey, tmp_path: Path
) -> None:
    """One pretty, sorted file per message, named by its id; the queue is untouched."""
    old = make_huey()
    send_invoice = v1_app(old)
    first = send_invoice(1, "Ada Lovelace")
    second = send_invoice(2, name="Grace Hopper")
    new = invoice_app(make_huey())

    written = capture_payloads(new, tmp_path / "payloads")

    assert [p.relative_to(tmp_path) for p in written] == [
        Path("payloads", INVOICE, "v1", f"{first.id}.json"),
        Path("payloads", INVOICE, "v1", f"{second.id}.json"),
    ]
    assert written[0].read_text(encoding="utf-8") == (
        '{\n  "invoice_id": 1,\n  "name": "Ada Lovelace"\n}\n'
    )
    assert new.pending_count() == 2
    assert check_corpus(new, tmp_path / "payloads") == 2


def test_capture_from_the_schedule(make_huey: MakeHuey, tmp_path: Path) -> None:
    """Messages waiting with an eta are captured too, and stay scheduled."""
    old = make_huey()
    send_invoice = v1_app(old)
    result = send_invoice.schedule((5, "Ada Lovelace"), delay=3600)
    old.add_schedule(old.dequeue())  # what the consumer does with a task not yet due
    huey = invoice_app(make_huey())

    (path,) = capture_payloads(huey, tmp_path, source="schedule")

    assert path == tmp_path / INVOICE / "v1" / f"{result.id}.json"
    assert huey.scheduled_count() == 1


def test_capture_from_the_dead_letters_keeps_them(make_huey: MakeHuey, tmp_path: Path) -> None:
    """A dead-lettered payload becomes a (failing) case to fix; the entry stays."""
    send_invoice = v1_app(make_huey())
    result = send_invoice(9, "Ada")
    huey = invoice_app(make_huey())
    assert huey.dequeue() is None  # "Ada" has no last name: upcast_failed

    (path,) = capture_payloads(huey, tmp_path, source="dead_letters")

    assert path.name == f"{result.id}.json"
    assert len(huey.dead_letters) == 1
    with pytest.raises(AssertionError, match=re.escape(f"Payload file {path}: ")):
        check_corpus(huey, tmp_path)


def test_capture_skips_what_is_not_a_versioned_task_message(
    make_huey: MakeHuey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk, plain Huey tasks and files already captured are skipped, with the reason."""
    huey = make_huey()
    send_invoice = v1_app(huey)

    @huey.task()
    def plain(x: int) -> None: ...

    huey.storage.enqueue(b"not an envelope")
    plain(1)
    result = send_invoice(1, "A B")
    existing = write(tmp_path / INVOICE / "v1" / f"{result.id}.json", {"kept": True})

    with caplog.at_level(logging.INFO, logger="versioned_tasks"):
        captured = capture_payloads(huey, tmp_path)

    assert isinstance(captured, Captured)
    assert captured == []
    assert [s.message for s in captured.skipped] == [
        "queue message #0",
        "queue message #1",
        "queue message #2",
    ]
    reasons = [s.reason for s in captured.skipped]
    assert reasons[0].startswith("not a readable envelope")
    assert (
        reasons[1]
        == "task 'test_testing.plain' is not a versioned task message (no schema version)"
    )
    assert reasons[2] == f"{existing} exists already"
    assert json.loads(existing.read_text(encoding="utf-8")) == {"kept": True}
    assert f"capture_payloads: skipped queue message #2: {existing} exists already" in caplog.text


def test_scrub_rewrites_or_leaves_out_payloads(make_huey: MakeHuey, tmp_path: Path) -> None:
    """scrub(task, version, payload) runs before writing; None leaves the message out."""
    huey = make_huey()
    send_invoice = v1_app(huey)
    send_invoice(1, "Ada Lovelace")
    send_invoice(2, "Grace Hopper")
    seen: list[tuple[str, int]] = []

    def scrub(task: str, version: int, payload: dict[str, Any]) -> dict[str, Any] | None:
        seen.append((task, version))
        if payload["invoice_id"] == 2:
            return None
        return {**payload, "name": "Jane Doe"}

    captured = capture_payloads(huey, tmp_path, scrub=scrub)

    assert seen == [(INVOICE, 1), (INVOICE, 1)]
    assert json.loads(captured[0].read_text(encoding="utf-8"))["name"] == "Jane Doe"
    assert captured.skipped == [
        Skipped("queue message #1", f"task {INVOICE!r} version 1: left out by scrub")
    ]


def test_limit_caps_the_files_written(make_huey: MakeHuey, tmp_path: Path) -> None:
    """limit counts files written."""
    huey = make_huey()
    send_invoice = v1_app(huey)
    for n in range(3):
        send_invoice(n, "A B")

    assert len(capture_payloads(huey, tmp_path, limit=2)) == 2


def test_a_scrub_that_returns_something_else_is_an_error(tmp_path: Path) -> None:
    """Nothing is written for a scrub that forgot to return the payload."""
    huey = VersionedMemoryHuey("billing")
    v1_app(huey)(1, "A B")

    with pytest.raises(ConfigurationError, match=re.escape("returned a str; return the payload")):
        capture_payloads(huey, tmp_path, scrub=lambda task, version, payload: "oops")  # type: ignore[arg-type, return-value]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "results"}, "source='results'): use one of queue, schedule, dead_letters."),
        ({"limit": -1}, "limit=-1): use None or an integer >= 0."),
    ],
)
def test_capture_refuses_bad_options(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """An unknown source or a negative limit is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        capture_payloads(VersionedMemoryHuey("x"), tmp_path, **options)


# -- immediate ------------------------------------------------------------------------


def test_immediate_runs_tasks_and_puts_the_storage_back(tmp_path: Path) -> None:
    """Inside the block calls run at once on memory; afterwards the same storage is back."""
    huey = VersionedSqliteHuey("billing", filename=str(tmp_path / "q.db"))

    @huey.versioned_task(version=1, name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    storage = huey.storage

    with immediate(huey) as same:
        assert same is huey
        assert huey.immediate
        assert not isinstance(huey.storage, SqliteStorage)
        assert add(1, 2)() == 3

    assert huey.immediate is False
    assert huey.storage is storage
    assert huey.pending_count() == 0


def test_immediate_gives_a_fresh_memory_storage_each_time() -> None:
    """Also for an app in immediate mode already: nothing carries over between blocks."""
    huey = VersionedMemoryHuey("fresh", immediate=True)
    storage = huey.storage

    @huey.versioned_task(version=1, name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    with immediate(huey):
        assert huey.storage is not storage
        add.schedule((1, 2), delay=3600)
        huey.dead_letters.add(reason="undecodable", raw=b"x", error="test")
        assert huey.scheduled_count() == 1
        assert len(huey.dead_letters) == 1

    assert huey.immediate is True
    assert huey.storage is storage
    with immediate(huey):
        assert huey.scheduled_count() == 0
        assert len(huey.dead_letters) == 0
    assert huey.storage is storage
    assert huey.scheduled_count() == 0


# -- payloads -----------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def lock_with_v1(tmp_path: Path) -> Path:
    """The lock file written while the invoice task was at version 1."""
    old = VersionedMemoryHuey("old")
    v1_app(old)
    path = tmp_path / "versioned-tasks.lock"
    write_lock(path, build_lock(old))
    return path


STRICT = VersionedMemoryHuey("strict")


class Even(BaseModel):
    """A model stricter than its schema: the schema says integer, the model says even."""

    n: int
    when: datetime.datetime
    tags: list[str] = []

    @field_validator("n")
    @classmethod
    def even(cls, n: int) -> int:
        if n % 2:
            raise ValueError("odd")
        return n


@STRICT.versioned_task(version=1, name="strict.even", args_model=Even)
def even(args: Even) -> None: ...


@PROPERTY
@given(payloads(STRICT, "strict.even"))
def test_current_payloads_fit_the_model_even_where_it_is_stricter(payload: dict[str, Any]) -> None:
    """Payloads of the current version validate through the read pipeline."""
    assert payload["n"] % 2 == 0
    assert assert_upcasts(STRICT, even, payload, from_version=1)["n"] == payload["n"]


APP = invoice_app()


def test_older_payloads_come_from_the_lock_history(tmp_path: Path) -> None:
    """Every valid v1 payload (from the lock's schema) has the shape v1 had."""
    lock = lock_with_v1(tmp_path)
    drawn: list[dict[str, Any]] = []

    @PROPERTY
    @given(payloads(APP, INVOICE, version=1, lock=lock))
    def collect(payload: dict[str, Any]) -> None:
        assert set(payload) == {"invoice_id", "name"}
        drawn.append(payload)

    collect()
    assert drawn


def test_payloads_of_a_retired_or_renamed_name_come_from_the_lock(tmp_path: Path) -> None:
    """The lock keeps the history of tombstoned and renamed-away names after `lock`."""
    old = VersionedMemoryHuey("old")
    v1_app(old)

    @old.versioned_task(version=1, name="billing.export")
    def export(quarter: str) -> None: ...

    now = VersionedMemoryHuey("now")
    now.tombstone("billing.export")
    now.rename(INVOICE, "billing.invoice")

    @now.versioned_task(version=1, name="billing.invoice")
    def invoice(invoice_id: int, name: str) -> None: ...

    lock = build_lock(now, build_lock(old))
    drawn: list[tuple[str, dict[str, Any]]] = []

    @PROPERTY
    @given(payloads(now, "billing.export", version=1, lock=lock))
    def retired(payload: dict[str, Any]) -> None:
        drawn.append(("export", payload))
        assert set(payload) == {"quarter"}

    @PROPERTY
    @given(payloads(now, INVOICE, version=1, lock=lock))
    def renamed(payload: dict[str, Any]) -> None:
        drawn.append(("invoice", payload))
        assert_upcasts(now, INVOICE, payload, from_version=1)

    retired()
    renamed()
    assert {kind for kind, _ in drawn} == {"export", "invoice"}


def test_a_lock_loaded_as_a_dict_works_too(tmp_path: Path) -> None:
    """lock= takes the parsed lock as well as a path."""
    lock = json.loads(lock_with_v1(tmp_path).read_text(encoding="utf-8"))

    @PROPERTY
    @given(payloads(APP, INVOICE, version=1, lock=lock))
    def check(payload: dict[str, Any]) -> None:
        assert isinstance(payload["invoice_id"], int)

    check()


@pytest.mark.parametrize(
    ("task", "version", "message"),
    [
        ("billing.gone", None, "'billing.gone' is not a versioned task of this app"),
        (INVOICE, 4, f"task {INVOICE!r} is at version 3; version 4 does not exist yet."),
        (
            INVOICE,
            2,
            f"the lock file has no schema for task {INVOICE!r} version 2; versions there: 1.",
        ),
    ],
)
def test_payloads_refuses_what_it_cannot_draw(
    tmp_path: Path, task: str, version: int | None, message: str
) -> None:
    """Problems surface when the test draws, as a ConfigurationError."""
    lock = lock_with_v1(tmp_path)

    @settings(max_examples=1, database=None)
    @given(payloads(APP, task, version=version, lock=lock))
    def draw(payload: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        draw()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No lock file at "),
        ("{", "is not valid JSON"),
        ('{"lock_format": 7}', "has lock_format 7"),
    ],
)
def test_a_missing_or_nonsensical_lock_file_is_a_lock_file_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """The lock file's own error (a ConfigurationError) reaches the test."""
    path = tmp_path / "versioned-tasks.lock"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    @settings(max_examples=1, database=None)
    @given(payloads(APP, INVOICE, version=1, lock=path))
    def draw(payload: dict[str, Any]) -> None: ...

    with pytest.raises(LockFileError, match=re.escape(message)):
        draw()
