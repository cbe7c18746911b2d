"""Declaring versioned tasks: argument models, calls, Huey options, refusals."""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import REDIS_URL, MakeHuey, require_redis
from huey.signals import SIGNAL_ENQUEUED
from pydantic import BaseModel, create_model

from versioned_tasks import (
    RESERVED_PARAMETERS,
    InvalidArguments,
    SchemaError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedPriorityRedisHuey,
    VersionedSqliteHuey,
)

UTC = datetime.UTC
REF = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    number: int


class Line(BaseModel):
    sku: str
    quantity: int = 1


class InvoiceArgs(BaseModel):
    invoice_id: int
    currency: str = "EUR"
    lines: list[Line] = []


# -- helpers ------------------------------------------------------------------------


def messages(huey: VersionedHuey) -> list[bytes]:
    return [bytes(raw) for raw in huey.storage.enqueued_items()]


def only_message(huey: VersionedHuey) -> bytes:
    items = messages(huey)
    assert len(items) == 1, items
    return items[0]


def header_and_body(raw: bytes) -> tuple[dict[str, Any], Any]:
    assert raw.startswith(b"VTE1")
    end = raw.index(b"\n")
    return json.loads(raw[4:end]), json.loads(raw[end + 1 :])


def run_next(huey: VersionedHuey) -> Any:
    task = huey.dequeue()
    assert task is not None
    return huey.execute(task)


def record_enqueued(huey: VersionedHuey) -> list[Any]:
    fired: list[Any] = []

    @huey.signal(SIGNAL_ENQUEUED)
    def on_enqueued(signal: str, task: Any, *args: Any) -> None:
        fired.append(task)

    return fired


# -- argument model from the signature --------------------------------------------


def test_annotated_signature_values_reach_the_function_as_python_types(
    make_huey: MakeHuey,
) -> None:
    """Strings on the wire come back as datetime, Enum, UUID, Decimal, models, lists."""
    huey = make_huey()
    seen: dict[str, Any] = {}

    @huey.versioned_task(version=1, name="shop.place_order")
    def place_order(
        order_id: int,
        placed_at: datetime.datetime,
        color: Color,
        ref: uuid.UUID,
        amount: Decimal,
        address: Address,
        tags: list[str],
        lines: list[Line],
        note: Optional[str] = None,  # noqa: UP045 - Optional is what is under test
        quantity: int = 1,
        due: datetime.date | None = None,
    ) -> None:
        seen.update(
            order_id=order_id,
            placed_at=placed_at,
            color=color,
            ref=ref,
            amount=amount,
            address=address,
            tags=tags,
            lines=lines,
            note=note,
            quantity=quantity,
            due=due,
        )

    place_order(
        order_id=7,
        placed_at=datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        color=Color.RED,
        ref=REF,
        amount=Decimal("12.50"),
        address=Address(street="Main", number=3),
        tags=["a", "b"],
        lines=[Line(sku="x"), {"sku": "y", "quantity": 2}],
        due=datetime.date(2024, 6, 1),
    )
    run_next(huey)

    assert seen == {
        "order_id": 7,
        "placed_at": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        "color": Color.RED,
        "ref": REF,
        "amount": Decimal("12.50"),
        "address": Address(street="Main", number=3),
        "tags": ["a", "b"],
        "lines": [Line(sku="x", quantity=1), Line(sku="y", quantity=2)],
        "note": None,
        "quantity": 1,
        "due": datetime.date(2024, 6, 1),
    }
    assert type(seen["placed_at"]) is datetime.datetime
    assert seen["placed_at"].utcoffset() == datetime.timedelta(0)
    assert type(seen["color"]) is Color
    assert type(seen["ref"]) is uuid.UUID
    assert type(seen["amount"]) is Decimal
    assert type(seen["address"]) is Address
    assert all(type(line) is Line for line in seen["lines"])


def test_lax_inputs_are_coerced_at_enqueue(make_huey: MakeHuey) -> None:
    """Strings that pydantic accepts for int, datetime, UUID and Decimal arrive converted."""
    huey = make_huey()
    seen: dict[str, Any] = {}

    @huey.versioned_task(version=1, name="shop.coerce")
    def coerce(
        n: int, when: datetime.datetime, ref: uuid.UUID, amount: Decimal, color: Color
    ) -> None:
        seen.update(n=n, when=when, ref=ref, amount=amount, color=color)

    coerce(n="7", when="2024-01-02T03:04:05", ref=str(REF), amount="1.5", color="green")
    _, body = header_and_body(only_message(huey))
    assert body == {
        "n": 7,
        "when": "2024-01-02T03:04:05",
        "ref": str(REF),
        "amount": "1.5",
        "color": "green",
    }
    run_next(huey)
    assert seen == {
        "n": 7,
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "ref": REF,
        "amount": Decimal("1.5"),
        "color": Color.GREEN,
    }


def test_optional_parameter_accepts_none_and_a_value(make_huey: MakeHuey) -> None:
    """An Optional parameter takes None or a value; both reach the function."""
    huey = make_huey()
    seen: list[Any] = []

    @huey.versioned_task(version=1, name="shop.optional")
    def optional(note: str | None = None) -> None:
        seen.append(note)

    optional()
    optional(note="hi")
    optional(None)
    for _ in range(3):
        run_next(huey)
    assert sorted(seen, key=repr) == sorted([None, "hi", None], key=repr)


def test_full_validated_payload_with_defaults_is_on_the_wire(make_huey: MakeHuey) -> None:
    """The body holds every field, defaults included, in JSON mode."""
    huey = make_huey()

    @huey.versioned_task(version=3, name="billing.send_invoice")
    def send_invoice(
        invoice_id: int,
        currency: str = "EUR",
        copies: list[int] | None = None,
        when: datetime.datetime = datetime.datetime(2020, 1, 1, 12, 0),
        amount: Decimal = Decimal("0.10"),
    ) -> None:
        pass

    send_invoice(5)
    header, body = header_and_body(only_message(huey))
    assert header["kind"] == "task"
    assert header["task"] == "billing.send_invoice"
    assert header["v"] == 3
    assert "form" not in header
    assert body == {
        "invoice_id": 5,
        "currency": "EUR",
        "copies": None,
        "when": "2020-01-01T12:00:00",
        "amount": "0.10",
    }


def test_default_logical_name_is_module_and_function(make_huey: MakeHuey) -> None:
    """Without name=, the wire name is Huey's ``module.function``."""
    huey = make_huey()

    @huey.versioned_task(version=1)
    def nameless(x: int) -> None:
        pass

    nameless(1)
    header, _ = header_and_body(only_message(huey))
    assert header["task"] == f"{nameless.func.__module__}.nameless"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_float_accepted_at_enqueue_reaches_the_function(
    make_huey: MakeHuey, value: float
) -> None:
    """NaN and infinities are either refused at enqueue or arrive as they were sent."""
    huey = make_huey()
    seen: list[float] = []

    @huey.versioned_task(version=1, name="calc.ratio")
    def ratio(x: float) -> None:
        seen.append(x)

    try:
        ratio(value)
    except InvalidArguments:
        assert huey.pending_count() == 0
        return
    run_next(huey)
    assert len(huey.dead_letters) == 0
    assert repr(seen) == repr([value])


def test_integers_beyond_64_bits_reach_the_function_and_the_result(make_huey: MakeHuey) -> None:
    """A big int argument and a big int result survive the envelope."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="calc.big")
    def big(n: int) -> int:
        return n * 2

    result = big(2**70)
    run_next(huey)
    assert result.get() == 2**71


# -- args_model= ------------------------------------------------------------------


def test_args_model_function_receives_the_model_instance(make_huey: MakeHuey) -> None:
    """With args_model=, callers pass an instance or its fields; the function gets an instance."""
    huey = make_huey()
    seen: list[Any] = []

    @huey.versioned_task(version=2, name="billing.invoice", args_model=InvoiceArgs)
    def invoice(args: InvoiceArgs) -> int:
        seen.append(args)
        return args.invoice_id

    invoice(InvoiceArgs(invoice_id=1, lines=[Line(sku="a")]))
    invoice(invoice_id="2", currency="USD")
    bodies = sorted((header_and_body(raw)[1] for raw in messages(huey)), key=repr)
    assert bodies == [
        {"invoice_id": 1, "currency": "EUR", "lines": [{"sku": "a", "quantity": 1}]},
        {"invoice_id": 2, "currency": "USD", "lines": []},
    ]
    run_next(huey)
    run_next(huey)
    assert all(type(args) is InvoiceArgs for args in seen)
    assert sorted(seen, key=lambda a: a.invoice_id) == [
        InvoiceArgs(invoice_id=1, currency="EUR", lines=[Line(sku="a", quantity=1)]),
        InvoiceArgs(invoice_id=2, currency="USD"),
    ]


def test_args_model_refuses_positional_fields() -> None:
    """With args_model=, positional values other than one instance are refused."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="billing.invoice", args_model=InvoiceArgs)
    def invoice(args: InvoiceArgs) -> None:
        pass

    with pytest.raises(
        InvalidArguments,
        match=re.escape("pass one InvoiceArgs instance or its fields as keyword arguments"),
    ):
        invoice(1, "EUR")
    assert huey.pending_count() == 0


def test_args_model_refuses_unknown_and_missing_fields() -> None:
    """With args_model=, a missing field is named in the error."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="billing.invoice", args_model=InvoiceArgs)
    def invoice(args: InvoiceArgs) -> None:
        pass

    with pytest.raises(InvalidArguments, match=r"invoice_id: Field required") as info:
        invoice(currency="USD")
    assert info.value.errors[0]["loc"] == ("invoice_id",)
    assert huey.pending_count() == 0


def test_args_model_call_local_receives_an_instance() -> None:
    """call_local with args_model= validates and hands over a model instance."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="billing.invoice", args_model=InvoiceArgs)
    def invoice(args: InvoiceArgs) -> InvoiceArgs:
        return args

    assert invoice.call_local(invoice_id="3") == InvoiceArgs(invoice_id=3)
    assert invoice.call_local(InvoiceArgs(invoice_id=4)) == InvoiceArgs(invoice_id=4)


# -- positional and keyword calls ---------------------------------------------------


def test_positional_arguments_become_named_fields_on_the_wire(make_huey: MakeHuey) -> None:
    """``f(1, "USD")`` is written as ``{"invoice_id": 1, "currency": "USD"}``."""
    huey = make_huey()
    seen: list[tuple[int, str]] = []

    @huey.versioned_task(version=1, name="billing.pay")
    def pay(invoice_id: int, currency: str, note: str = "") -> None:
        seen.append((invoice_id, currency))

    pay(1, "USD")
    raw = only_message(huey)
    end = raw.index(b"\n")
    assert raw[end + 1 :] == b'{"invoice_id":1,"currency":"USD","note":""}'
    header, _ = header_and_body(raw)
    assert "form" not in header
    assert "params" not in header
    run_next(huey)
    assert seen == [(1, "USD")]


def test_mixed_positional_and_keyword_calls_bind_like_python(make_huey: MakeHuey) -> None:
    """Positional and keyword arguments combine as in a Python call."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="billing.pay")
    def pay(invoice_id: int, currency: str, note: str = "") -> None:
        pass

    pay(2, note="n", currency="GBP")
    _, body = header_and_body(only_message(huey))
    assert body == {"invoice_id": 2, "currency": "GBP", "note": "n"}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1, "USD"), {"currency": "EUR"}, "currency: got multiple values for argument"),
        ((1, "USD", "n", "extra"), {}, "takes 3 positional arguments but 4 were given"),
        ((1,), {"colour": "red"}, "colour: Extra inputs are not permitted"),
        ((), {"currency": "USD"}, "invoice_id: Field required"),
        (("x", "USD"), {}, "invoice_id: Input should be a valid integer"),
    ],
)
def test_bad_calls_raise_invalid_arguments_naming_the_field(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    """Duplicate, surplus, unknown, missing and wrong-typed arguments are named."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=4, name="billing.pay")
    def pay(invoice_id: int, currency: str, note: str = "") -> None:
        pass

    with pytest.raises(InvalidArguments, match=re.escape(message)) as info:
        pay(*args, **kwargs)
    assert info.value.task == "billing.pay"
    assert info.value.version == 4
    assert huey.pending_count() == 0


# -- InvalidArguments at enqueue ------------------------------------------------------


def test_invalid_arguments_enqueue_nothing_and_fire_no_signal(make_huey: MakeHuey) -> None:
    """A bad call names task, version and field; storage and SIGNAL_ENQUEUED are untouched."""
    huey = make_huey()
    fired = record_enqueued(huey)

    @huey.versioned_task(version=2, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str) -> None:
        pass

    with pytest.raises(
        InvalidArguments,
        match=re.escape(
            "Invalid arguments for task 'billing.send_invoice' version 2: invoice_id: "
            "Input should be a valid integer"
        ),
    ) as info:
        send_invoice("not a number", "EUR")

    error = info.value
    assert isinstance(error, ValueError)
    assert (error.task, error.version) == ("billing.send_invoice", 2)
    assert [e["loc"] for e in error.errors] == [("invoice_id",)]
    assert huey.pending_count() == 0
    assert huey.scheduled_count() == 0
    assert fired == []
    assert len(huey.dead_letters) == 0

    send_invoice(1, "EUR")
    assert len(fired) == 1
    assert huey.pending_count() == 1


def test_invalid_schedule_enqueues_nothing(make_huey: MakeHuey) -> None:
    """``.schedule()`` with bad arguments raises and writes nothing."""
    huey = make_huey()
    fired = record_enqueued(huey)

    @huey.versioned_task(version=1, name="billing.remind")
    def remind(invoice_id: int) -> None:
        pass

    with pytest.raises(InvalidArguments, match=r"'billing\.remind' version 1: invoice_id"):
        remind.schedule(args=("x",), delay=10)
    assert huey.pending_count() == 0
    assert huey.scheduled_count() == 0
    assert fired == []


def test_many_errors_are_all_listed() -> None:
    """Every invalid field is in ``.errors``; the message names each of them."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="many")
    def many(a: int, b: int, c: datetime.date) -> None:
        pass

    with pytest.raises(InvalidArguments, match=r"a: .*; b: .*; c: ") as info:
        many("x", "y", "z")
    assert {e["loc"] for e in info.value.errors} == {("a",), ("b",), ("c",)}


# -- .s(), .schedule(), .call_local() ------------------------------------------------


def test_s_builds_the_call_without_validating(make_huey: MakeHuey) -> None:
    """``.s()`` only builds a call; validation happens when it is enqueued."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="billing.pay")
    def pay(invoice_id: int, currency: str = "EUR") -> str:
        return f"{invoice_id} {currency}"

    bad = pay.s("nope")
    assert huey.pending_count() == 0
    with pytest.raises(InvalidArguments, match="invoice_id"):
        huey.enqueue(bad)
    assert huey.pending_count() == 0

    result = huey.enqueue(pay.s(3, currency="USD"))
    _, body = header_and_body(only_message(huey))
    assert body == {"invoice_id": 3, "currency": "USD"}
    run_next(huey)
    assert result.get() == "3 USD"


def test_schedule_with_delay_keeps_version_and_fields_through_the_schedule(
    make_huey: MakeHuey,
) -> None:
    """A delayed task goes queue -> schedule -> runs, keeping its version and fields."""
    huey = make_huey()
    seen: list[tuple[int, str]] = []

    @huey.versioned_task(version=2, name="billing.remind")
    def remind(invoice_id: int, channel: str = "email") -> None:
        seen.append((invoice_id, channel))

    before = datetime.datetime.now(UTC).replace(tzinfo=None)
    remind.schedule(args=(9,), kwargs={"channel": "sms"}, delay=60)
    header, body = header_and_body(only_message(huey))
    assert (header["v"], body) == (2, {"invoice_id": 9, "channel": "sms"})
    eta = datetime.datetime.fromisoformat(header["eta"])
    assert before + datetime.timedelta(seconds=59) <= eta
    assert eta <= before + datetime.timedelta(seconds=62)

    task = huey.dequeue()
    assert task is not None
    assert task.eta == eta
    huey.execute(task)  # not due yet: Huey re-serializes it onto the schedule
    assert seen == []
    assert huey.scheduled_count() == 1

    (due,) = huey.read_schedule(eta + datetime.timedelta(seconds=1))
    assert due.id == task.id
    huey.execute(due, eta + datetime.timedelta(seconds=1))
    assert seen == [(9, "sms")]


def test_schedule_with_an_aware_eta_is_kept_as_utc(make_huey: MakeHuey) -> None:
    """``.schedule(eta=aware)`` arrives as Huey's naive UTC eta."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="billing.remind")
    def remind(invoice_id: int) -> None:
        pass

    eta = datetime.datetime(2031, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    remind.schedule(kwargs={"invoice_id": 1}, eta=eta)
    task = huey.dequeue()
    assert task is not None
    assert task.eta == eta.replace(tzinfo=None)
    assert task.kwargs == {"invoice_id": 1}


def test_call_local_validates_and_coerces() -> None:
    """call_local runs here with the values a worker would see, and refuses bad ones."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="calc.add")
    def add(a: int, b: int = 10, when: datetime.date | None = None) -> tuple[int, Any]:
        return a + b, when

    assert add.call_local("5") == (15, None)
    assert add.call_local(1, 2, "2024-02-03") == (3, datetime.date(2024, 2, 3))
    with pytest.raises(InvalidArguments, match=r"'calc\.add' version 1: a: "):
        add.call_local("five")
    assert huey.pending_count() == 0


# -- Huey task options ------------------------------------------------------------------


def test_declared_huey_options_travel_in_the_envelope(make_huey: MakeHuey) -> None:
    """retries, retry_delay, retry_backoff, expires and timeout survive the wire.

    (priority is in test_priority_orders_the_queue: plain Redis storage refuses it.)
    """
    huey = make_huey()

    @huey.versioned_task(
        version=1,
        name="opts.declared",
        retries=2,
        retry_delay=5,
        retry_backoff=1.5,
        expires=60,
        timeout=9,
    )
    def declared(x: int) -> None:
        pass

    declared(1)
    header, body = header_and_body(only_message(huey))
    assert body == {"x": 1}
    assert {k: header[k] for k in ("retries", "retry_delay", "retry_backoff")} == {
        "retries": 2,
        "retry_delay": 5,
        "retry_backoff": 1.5,
    }
    assert (header["expires"], header["timeout"]) == (60, 9)
    task = huey.dequeue()
    assert task is not None
    assert (task.retries, task.retry_delay, task.retry_backoff) == (2, 5, 1.5)
    assert (task.priority, task.expires, task.timeout) == (None, 60, 9)
    assert isinstance(task.expires_resolved, datetime.datetime)
    assert task.kwargs == {"x": 1}


def test_per_call_huey_options_override_the_declared_ones(make_huey: MakeHuey) -> None:
    """Options given to ``.s()`` / ``.schedule()`` win over the declaration."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="opts.call", retries=2, timeout=7)
    def call(x: int) -> None:
        pass

    huey.enqueue(call.s(1, retries=4, retry_delay=2, timeout=1.5, id="fixed-id"))
    task = huey.dequeue()
    assert task is not None
    assert (task.id, task.retries, task.retry_delay, task.timeout) == ("fixed-id", 4, 2, 1.5)
    assert task.kwargs == {"x": 1}

    call.schedule(args=(2,), delay=1, retries=0, expires=datetime.timedelta(seconds=30))
    task = huey.dequeue()
    assert task is not None
    assert task.retries == 0
    assert task.expires == datetime.timedelta(seconds=30)
    assert task.expires_resolved is not None


def test_a_failing_task_is_retried_with_its_version_and_fields(make_huey: MakeHuey) -> None:
    """A retry re-serializes the task: same version, named fields, one retry fewer."""
    huey = make_huey()
    calls: list[int] = []

    @huey.versioned_task(version=3, name="opts.flaky", retries=1)
    def flaky(n: int, label: str = "x") -> str:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return f"{label}{n}"

    result = flaky(4)
    run_next(huey)
    header, body = header_and_body(only_message(huey))
    assert (header["task"], header["v"], body) == ("opts.flaky", 3, {"n": 4, "label": "x"})
    assert header.get("retries", 0) == 0
    run_next(huey)
    assert calls == [4, 4]
    assert result.get() == "x4"


def test_context_task_receives_the_running_task(make_huey: MakeHuey) -> None:
    """context=True passes Huey's Task as ``task``; it is not part of the payload."""
    huey = make_huey()
    seen: dict[str, Any] = {}

    @huey.versioned_task(version=1, name="ctx.job", context=True)
    def job(n: int, task: Any = None) -> int:
        seen["id"] = task.id
        seen["n"] = n
        return n * 2

    result = job(21)
    _, body = header_and_body(only_message(huey))
    assert body == {"n": 21}
    run_next(huey)
    assert seen == {"id": result.id, "n": 21}
    assert result.get() == 42


def test_context_true_without_a_task_parameter_is_refused() -> None:
    """context=True needs a ``task`` parameter to receive Huey's Task."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError,
        match=re.escape(
            "Task 'ctx.missing' version 1 is declared with context=True but its function "
            "has no 'task' parameter"
        ),
    ):

        @huey.versioned_task(version=1, name="ctx.missing", context=True)
        def missing(n: int) -> None:
            pass


# -- priorities ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "priority-redis"])
def priority_huey(
    request: pytest.FixtureRequest, tmp_path: Path, queue_name: str
) -> Iterator[VersionedHuey]:
    """A VersionedHuey on a storage that orders by priority."""
    if request.param == "memory":
        yield VersionedMemoryHuey(queue_name)
    elif request.param == "sqlite":
        yield VersionedSqliteHuey(queue_name, filename=str(tmp_path / "q.db"))
    else:
        require_redis()
        huey = VersionedPriorityRedisHuey(queue_name, url=REDIS_URL, blocking=False)
        yield huey
        huey.storage.flush_all()
        huey.dead_letters.purge()


def test_priority_orders_the_queue(priority_huey: VersionedHuey) -> None:
    """Per-call and declared priorities reach the storage, highest first."""
    huey = priority_huey

    @huey.versioned_task(version=1, name="prio.job", priority=5)
    def job(n: int) -> None:
        pass

    huey.enqueue(job.s(1, priority=1))
    job(2)
    huey.enqueue(job.s(3, priority=9))
    order = []
    while (task := huey.dequeue()) is not None:
        order.append((task.kwargs["n"], task.priority))
    assert order == [(3, 9), (2, 5), (1, 1)]


# -- refused declarations ------------------------------------------------------------------


def _function_with_parameter(name: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(f"def job(x: int, {name}: int = 0) -> None:\n    pass\n", namespace)
    return namespace["job"]


@pytest.mark.parametrize("name", sorted(RESERVED_PARAMETERS))
def test_reserved_parameter_names_are_refused(name: str) -> None:
    """A parameter Huey's ``.s()`` consumes could never arrive: refused at declaration."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError,
        match=re.escape(f"Task 'reserved' version 1: argument {name!r} is taken by Huey's .s()"),
    ) as info:
        huey.versioned_task(version=1, name="reserved")(_function_with_parameter(name))
    assert info.value.task == "reserved"
    assert "reserved" not in huey.schema.specs


@pytest.mark.parametrize(
    "name", ["eta", "delay", "id", "retries", "retry_delay", "retry_backoff", "priority"]
)
def test_reserved_names_are_refused_in_args_model(name: str) -> None:
    """An args_model field with a reserved name is refused too."""
    huey = VersionedMemoryHuey("declare")
    model = create_model("Args", **{name: (int, 0)})
    with pytest.raises(SchemaError, match=re.escape(f"argument {name!r} is taken")):

        @huey.versioned_task(version=1, name="reserved.model", args_model=model)
        def job(args: Any) -> None:
            pass


def test_reserved_names_list_covers_timeout_and_expires() -> None:
    """Every name Huey's ``.s()`` pops is reserved."""
    assert {"eta", "delay", "id", "retries", "retry_delay", "retry_backoff"} <= set(
        RESERVED_PARAMETERS
    )
    assert {"priority", "expires", "timeout"} <= set(RESERVED_PARAMETERS)


def test_var_positional_is_refused() -> None:
    """``*args`` cannot become named fields."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError, match=re.escape("*args and **kwargs cannot become named fields")
    ):

        @huey.versioned_task(version=1, name="var.args")
        def job(x: int, *rest: int) -> None:
            pass


def test_var_keyword_is_refused() -> None:
    """``**kwargs`` cannot become named fields."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError, match=re.escape("*args and **kwargs cannot become named fields")
    ):

        @huey.versioned_task(version=1, name="var.kwargs")
        def job(x: int, **options: int) -> None:
            pass


def test_positional_only_is_refused() -> None:
    """A positional-only parameter is refused: arguments travel as named fields."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError,
        match=re.escape("Task 'pos.only' version 1: parameter 'x' is positional-only"),
    ):

        @huey.versioned_task(version=1, name="pos.only")
        def job(x: int, /, y: int) -> None:
            pass


def test_keyword_only_parameters_are_accepted(make_huey: MakeHuey) -> None:
    """Keyword-only parameters are named fields like any other."""
    huey = make_huey()
    seen: list[tuple[int, int]] = []

    @huey.versioned_task(version=1, name="kw.only")
    def job(x: int, *, y: int = 2) -> None:
        seen.append((x, y))

    job(1, y=3)
    with pytest.raises(InvalidArguments, match="takes 1 positional arguments but 2"):
        job(1, 3)
    run_next(huey)
    assert seen == [(1, 3)]


@pytest.mark.parametrize(
    ("annotation", "default"),
    [("int", '"x"'), ("datetime.date", '"not a date"'), ("list[int]", '["a"]'), ("str", "None")],
)
def test_default_that_does_not_fit_its_annotation_is_refused(
    annotation: str, default: str
) -> None:
    """A default that would fail validation is refused when the task is declared."""
    namespace: dict[str, Any] = {"datetime": datetime}
    exec(f"def job(n: {annotation} = {default}) -> None:\n    pass\n", namespace)
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(SchemaError, match=r"the default .* of 'n' does not fit its annotation"):
        huey.versioned_task(version=1, name="bad.default")(namespace["job"])


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "2"])
def test_version_must_be_a_positive_integer(version: Any) -> None:
    """Versions are integers starting at 1."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(SchemaError, match="versions are integers starting at 1"):

        @huey.versioned_task(version=version, name="bad.version")
        def job(x: int) -> None:
            pass


@pytest.mark.parametrize("version", [2**31, 2**63])
def test_a_version_above_the_largest_a_message_carries_is_refused(version: int) -> None:
    """The bound a header's version is read with (2**31 - 1) is checked at declaration:
    a task declared above it is refused, naming the bound."""
    huey = VersionedMemoryHuey("declare")
    with pytest.raises(
        SchemaError, match=r"above the largest version a message can carry \(2147483647"
    ):

        @huey.versioned_task(version=version, name="huge.version")
        def job(x: int) -> None:
            pass


def test_the_largest_version_a_message_carries_runs_through_every_path() -> None:
    """A task at version 2**31 - 1 runs through the fast path and, with retries set,
    through the general path alike."""
    huey = VersionedMemoryHuey("declare", immediate=True)

    @huey.versioned_task(version=2**31 - 1, name="top.version")
    def plain(x: int) -> int:
        return x * 2

    @huey.versioned_task(version=2**31 - 1, name="top.version.retried", retries=1)
    def retried(x: int) -> int:
        return x * 3

    assert plain(21)() == 42
    assert retried(14)() == 42
    assert len(huey.dead_letters) == 0


def test_a_task_name_declared_twice_is_refused() -> None:
    """Two declarations of one logical name are refused."""
    huey = VersionedMemoryHuey("declare")

    @huey.versioned_task(version=1, name="twice")
    def first(x: int) -> None:
        pass

    with pytest.raises(SchemaError, match=re.escape("Task 'twice' is declared twice")):

        @huey.versioned_task(version=2, name="twice")
        def second(x: int) -> None:
            pass


# -- plain tasks beside versioned ones ------------------------------------------------------


def test_plain_huey_tasks_work_beside_versioned_ones(make_huey: MakeHuey) -> None:
    """``@huey.task()`` keeps working, positionally, next to versioned tasks."""
    huey = make_huey()

    @huey.task()
    def plain(a: Any, b: Any = 2) -> Any:
        return (a, b)

    @huey.versioned_task(version=1, name="typed.add")
    def typed(a: int, b: int) -> int:
        return a + b

    plain_result = plain((1, 2), b=datetime.date(2024, 1, 1))
    typed_result = typed(1, 2)
    headers = [header_and_body(raw)[0] for raw in messages(huey)]
    forms = sorted(h.get("form", "named") for h in headers)
    assert forms == ["named", "positional"]
    run_next(huey)
    run_next(huey)
    assert plain_result.get() == ((1, 2), datetime.date(2024, 1, 1))
    assert typed_result.get() == 3
    huey.check_schemas()


# -- immediate mode ------------------------------------------------------------------------


def test_immediate_mode_runs_the_full_round_trip(make_huey: MakeHuey) -> None:
    """In immediate mode the function gets validated, coerced values."""
    huey = make_huey(immediate=True)
    seen: dict[str, Any] = {}

    @huey.versioned_task(version=2, name="imm.job")
    def job(n: int, when: datetime.datetime, amount: Decimal = Decimal("1")) -> int:
        seen.update(n=n, when=when, amount=amount)
        return n + 1

    result = job("41", "2024-01-02T03:04:05")
    assert result.get() == 42
    assert seen == {
        "n": 41,
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "amount": Decimal("1"),
    }
    assert type(seen["when"]) is datetime.datetime


def test_immediate_mode_refuses_invalid_calls(make_huey: MakeHuey) -> None:
    """An invalid call raises InvalidArguments in immediate mode and never runs."""
    huey = make_huey(immediate=True)
    fired = record_enqueued(huey)
    ran: list[int] = []

    @huey.versioned_task(version=1, name="imm.strict")
    def strict(n: int) -> None:
        ran.append(n)

    with pytest.raises(InvalidArguments, match=r"'imm\.strict' version 1: n: "):
        strict("many")
    assert ran == []
    assert fired == []


def test_immediate_mode_args_model_round_trip(make_huey: MakeHuey) -> None:
    """In immediate mode an args_model task gets a fresh, validated instance."""
    huey = make_huey(immediate=True)
    seen: list[InvoiceArgs] = []

    @huey.versioned_task(version=1, name="imm.model", args_model=InvoiceArgs)
    def job(args: InvoiceArgs) -> int:
        seen.append(args)
        return len(args.lines)

    given = InvoiceArgs(invoice_id=1, lines=[Line(sku="a")])
    assert job(given).get() == 1
    assert seen == [given]
    assert seen[0] is not given
