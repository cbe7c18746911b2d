"""Edge cases at the borders of the envelope: all-or-nothing groups, dead-letter
writes that fail, types that do not survive JSON, out-of-range header fields,
callbacks newer than the worker, on_error handlers and replays to a tombstone.

Storage-dependent tests run on every backend of ``make_huey``;
two apps made in one test share one queue.
"""

import contextlib
import datetime
import os
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import queued
from huey.api import chord, group
from huey.signals import SIGNAL_ENQUEUED
from pydantic import BaseModel, Field, Json, SecretBytes, SecretStr

from versioned_tasks import (
    DecodeError,
    InvalidArguments,
    RemoteException,
    RetiredMessage,
    SchemaError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedSerializer,
    VersionedTaskError,
)

MakeHuey = Callable[..., VersionedHuey]

PAST = datetime.datetime(2000, 1, 1)
EARLIER = datetime.datetime(1999, 1, 1)
FUTURE = datetime.datetime(2100, 1, 1)


def record_enqueued(app: VersionedHuey) -> list[str]:
    """Ids of the tasks for which SIGNAL_ENQUEUED fires."""
    fired: list[str] = []

    @app.signal(SIGNAL_ENQUEUED)
    def on_enqueued(signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        fired.append(task.id)

    return fired


def envelope(header: dict[str, Any], body: bytes = b'{"a":1}') -> bytes:
    return b"VTE1" + orjson.dumps(header) + b"\n" + body


# -- 1. groups, chords and .map() are all or nothing -----------------------------


def declare_add(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="edge.add")
    def add(a: int, b: int) -> int:
        return a + b

    return add


def declare_total(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="edge.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return total


def enqueue_group(app: VersionedHuey, add: Any, total: Any) -> None:
    app.enqueue(group([add.s(1, 1), add.s(2, 2), add.s("x", 3)]))


def enqueue_chord(app: VersionedHuey, add: Any, total: Any) -> None:
    app.enqueue(chord([add.s(1, 1), add.s(2, 2), add.s("x", 3)], total.s()))


def enqueue_map(app: VersionedHuey, add: Any, total: Any) -> None:
    add.map([(1, 1), (2, 2), ("x", 3)])


@pytest.mark.parametrize(
    "enqueue", [enqueue_group, enqueue_chord, enqueue_map], ids=["group", "chord", "map"]
)
def test_one_invalid_member_raises_and_stores_nothing_and_fires_no_signal(
    make_huey: MakeHuey, enqueue: Callable[[VersionedHuey, Any, Any], None]
) -> None:
    """A group, a chord or .map() with one bad member writes no member at all."""
    app = make_huey()
    add, total = declare_add(app), declare_total(app)
    fired = record_enqueued(app)

    with pytest.raises(
        InvalidArguments,
        match=re.escape("Invalid arguments for task 'edge.add' version 1: a: "),
    ) as info:
        enqueue(app, add, total)

    assert (info.value.task, info.value.version) == ("edge.add", 1)
    assert app.pending_count() == 0
    assert app.scheduled_count() == 0
    assert fired == []
    assert len(app.dead_letters) == 0


# -- 2. a failing dead-letter write loses nothing --------------------------------


def break_dead_letter_store(app: VersionedHuey, backend: str) -> tuple[type[Exception], str]:
    """Make every dead-letter write fail; returns the error it fails with."""
    if backend == "sqlite":
        # A foreign table under the store's name, created before its first use.
        with contextlib.closing(sqlite3.connect(app.storage.filename)) as conn, conn:
            conn.execute("create table vt_dead_letters (unrelated integer)")
        return sqlite3.OperationalError, "no such column"
    if backend == "file":
        # A plain file where the store's directory belongs.
        with open(os.path.join(app.storage.path, "deadletters"), "wb"):
            pass
        return FileExistsError, "deadletters"
    import redis

    # HSET on a string key fails with WRONGTYPE.
    app.storage.conn.set(f"huey.deadletters.{app.storage.name}", b"not a hash")
    return redis.exceptions.ResponseError, "WRONGTYPE"


def repair_dead_letter_store(app: VersionedHuey, backend: str) -> None:
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(app.storage.filename)) as conn, conn:
            conn.execute("drop table vt_dead_letters")
    elif backend == "file":
        os.remove(os.path.join(app.storage.path, "deadletters"))
    else:
        app.storage.conn.delete(f"huey.deadletters.{app.storage.name}")


def declare_good(app: VersionedHuey, ran: list[int]) -> Any:
    @app.versioned_task(version=1, name="edge.good")
    def good(x: int) -> int:
        ran.append(x)
        return x

    return good


@pytest.mark.parametrize("backend", ["sqlite", "redis", "file"], indirect=True)
def test_read_schedule_returns_the_good_tasks_and_requeues_a_message_it_cannot_dead_letter(
    make_huey: MakeHuey, backend: str
) -> None:
    """A failed dead-letter write in a due batch keeps the good tasks and the bad bytes.

    On SQLite the bad message never leaves the schedule (its pop and its dead
    letter share one transaction); elsewhere its bytes go back on the queue.
    """
    app = make_huey()
    ran: list[int] = []
    good = declare_good(app, ran)
    junk = b"junk-not-an-envelope"
    app.storage.add_to_schedule(junk, EARLIER)
    for i in range(3):
        app.add_schedule(good.s(i, eta=PAST))
    assert app.scheduled_count() == 4
    break_dead_letter_store(app, backend)

    tasks = app.read_schedule(FUTURE)

    assert sorted(task.kwargs["x"] for task in tasks) == [0, 1, 2]
    repair_dead_letter_store(app, backend)
    if backend == "sqlite":
        assert app.scheduled_count() == 1
        assert queued(app) == []
        assert app.read_schedule(FUTURE) == []
    else:
        assert app.scheduled_count() == 0
        assert queued(app) == [junk]
        assert app.dequeue() is None
    assert [entry.raw for entry in app.dead_letters] == [junk]


@pytest.mark.parametrize("backend", ["sqlite", "redis", "file"], indirect=True)
def test_dequeue_raises_when_it_cannot_dead_letter_but_puts_the_bytes_back_on_the_queue(
    make_huey: MakeHuey, backend: str
) -> None:
    """dequeue() raises the storage error of a failed dead-letter write; the bytes stay."""
    app = make_huey()
    declare_good(app, [])
    junk = b"junk-not-an-envelope"
    app.storage.enqueue(junk)
    error, pattern = break_dead_letter_store(app, backend)

    with pytest.raises(error, match=pattern):
        app.dequeue()

    assert queued(app) == [junk]

    repair_dead_letter_store(app, backend)
    assert app.dequeue() is None
    assert [entry.raw for entry in app.dead_letters] == [junk]


# -- 3. declarations refuse types that do not survive JSON -----------------------


class WithExcluded(BaseModel):
    a: int
    note: str = Field(default="default", exclude=True)


class Inner(BaseModel):
    a: int
    note: str = Field(default="default", exclude=True)


class Outer(BaseModel):
    inner: Inner


def declare_secret_str(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login")
    def login(user: str, password: SecretStr) -> None:
        pass


def declare_secret_bytes(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login")
    def login(user: str, password: SecretBytes) -> None:
        pass


def declare_optional_secret(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login")
    def login(user: str, password: list[SecretStr] | None = None) -> None:
        pass


def declare_excluded_field(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login", args_model=WithExcluded)
    def login(args: WithExcluded) -> None:
        pass


def declare_nested_excluded_field(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login", args_model=Outer)
    def login(args: Outer) -> None:
        pass


def declare_nested_excluded_parameter(app: VersionedHuey) -> None:
    @app.versioned_task(version=3, name="edge.login")
    def login(inner: Inner) -> None:
        pass


@pytest.mark.parametrize(
    ("declare", "field", "why"),
    [
        (declare_secret_str, "password", "is a SecretStr"),
        (declare_secret_bytes, "password", "is a SecretBytes"),
        (declare_optional_secret, "password", "is a SecretStr"),
        (declare_excluded_field, "note", "is a field with exclude=True"),
        (declare_nested_excluded_field, "inner.note", "is a field with exclude=True"),
        (declare_nested_excluded_parameter, "inner.note", "is a field with exclude=True"),
    ],
    ids=[
        "secret-str",
        "secret-bytes",
        "secret-in-optional-list",
        "excluded-field",
        "nested-excluded-field",
        "nested-model-parameter",
    ],
)
def test_types_that_do_not_survive_json_are_refused_naming_task_version_and_field(
    declare: Callable[[VersionedHuey], None], field: str, why: str
) -> None:
    """SecretStr/SecretBytes and exclude=True fields (nested too) raise SchemaError."""
    app = VersionedMemoryHuey("edge-declare")

    with pytest.raises(
        SchemaError,
        match=re.escape(f"Task 'edge.login' version 3: argument {field!r} {why}"),
    ) as info:
        declare(app)

    assert info.value.task == "edge.login"
    assert "edge.login" not in app.schema.specs


class Invoice(BaseModel):
    invoice_id: int = Field(alias="invoiceId")


def test_an_args_model_with_an_aliased_field_round_trips(make_huey: MakeHuey) -> None:
    """Field(alias=...) travels by its alias and the task sees the value."""
    app = make_huey()
    seen: list[int] = []

    @app.versioned_task(version=1, name="edge.invoice", args_model=Invoice)
    def invoice(args: Invoice) -> None:
        seen.append(args.invoice_id)

    invoice(Invoice(invoiceId=7))
    task = app.dequeue()
    assert task is not None
    app.execute(task)

    assert seen == [7]
    assert len(app.dead_letters) == 0


def test_a_json_field_round_trips(make_huey: MakeHuey) -> None:
    """A Json[list[int]] parameter given a JSON string reaches the task as the list."""
    app = make_huey()
    seen: list[Any] = []

    @app.versioned_task(version=1, name="edge.numbers")
    def numbers(data: Json[list[int]]) -> None:
        seen.append(data)

    numbers("[1, 2, 3]")
    task = app.dequeue()
    assert task is not None
    app.execute(task)

    assert seen == [[1, 2, 3]]
    assert len(app.dead_letters) == 0


# -- 4. and 6. header fields out of range -----------------------------------------

BASE_HEADER: dict[str, Any] = {"kind": "task", "task": "edge.t", "v": 1, "id": "i-1", "at": 1.0}


@pytest.mark.parametrize(
    "overrides",
    [
        {"v": 0},
        {"v": 2**31},
        {"v": 2**63 + 5},
        {"retries": -1},
        {"retry_delay": -1},
        {"retry_delay": 1e308, "retries": 1},
        {"timeout": 1e308},
        {"priority": "high"},
    ],
    ids=[
        "v-zero",
        "v-2**31",
        "v-2**63+5",
        "retries-negative",
        "retry_delay-negative",
        "retry_delay-huge",
        "timeout-huge",
        "priority-string",
    ],
)
def test_header_fields_out_of_range_are_dead_lettered_as_undecodable_and_never_run(
    make_huey: MakeHuey, overrides: dict[str, Any]
) -> None:
    """An out-of-range header field is an undecodable dead letter; dequeue() never raises."""
    app = make_huey()
    ran: list[int] = []

    @app.versioned_task(version=1, name="edge.t")
    def t(a: int) -> None:
        ran.append(a)

    raw = envelope({**BASE_HEADER, **overrides})
    app.storage.enqueue(raw)

    assert app.dequeue() is None

    [entry] = app.dead_letters
    assert entry.reason == "undecodable"
    assert entry.raw == raw
    assert entry.task == "edge.t"
    assert entry.version == (None if "v" in overrides else 1)
    assert ran == []
    assert app.pending_count() == 0
    assert app.scheduled_count() == 0


@pytest.mark.parametrize("version", ["2", 0, -1, 1.5, True, 2**63 + 5], ids=repr)
def test_a_header_naming_the_task_with_an_invalid_version_keeps_the_task_name(
    make_huey: MakeHuey, version: Any
) -> None:
    """The dead letter of a message with a bad ``v`` names its task, with version None."""
    app = make_huey()

    @app.versioned_task(version=2, name="billing.send_invoice")
    def send_invoice(invoice_id: int) -> None:
        pass

    raw = envelope({**BASE_HEADER, "task": "billing.send_invoice", "v": version}, b"{}")
    app.storage.enqueue(raw)

    assert app.dequeue() is None

    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == (
        "undecodable",
        "billing.send_invoice",
        None,
    )
    assert entry.raw == raw
    assert re.search(r"version \('v'\)", entry.error), entry.error


# -- 5. a callback newer than the worker -------------------------------------------


def declare_parent_and_callback(app: VersionedHuey, callback_version: int) -> tuple[Any, Any]:
    @app.versioned_task(version=1, name="edge.parent")
    def parent(a: int) -> int:
        return a

    @app.versioned_task(version=callback_version, name="edge.callback")
    def callback(x: int) -> None:
        pass

    return parent, callback


def enqueue_with_newer_callback(make_huey: MakeHuey) -> bytes:
    """The new deploy enqueues edge.parent v1 with edge.callback v2 as on_complete."""
    new = make_huey()
    parent, callback = declare_parent_and_callback(new, callback_version=2)
    new.enqueue(parent.s(1).then(callback))
    [raw] = queued(new)
    return raw


def test_a_message_whose_callback_is_newer_is_deferred_to_the_schedule_with_its_exact_bytes(
    make_huey: MakeHuey,
) -> None:
    """An old worker puts a message with a too-new on_complete back on the schedule."""
    raw = enqueue_with_newer_callback(make_huey)
    old = make_huey()
    declare_parent_and_callback(old, callback_version=1)

    assert old.dequeue() is None

    assert [bytes(item) for item in old.storage.scheduled_items()] == [raw]
    assert old.pending_count() == 0
    assert len(old.dead_letters) == 0


def test_a_message_whose_callback_stays_newer_past_the_max_age_is_dead_lettered_as_the_parent(
    make_huey: MakeHuey,
) -> None:
    """With newer_version_max_age=0 the entry has the parent's task/version and names the
    callback in its error."""
    raw = enqueue_with_newer_callback(make_huey)
    old = make_huey(newer_version_max_age=0)
    declare_parent_and_callback(old, callback_version=1)
    enqueued_at = orjson.loads(raw[4:].partition(b"\n")[0])["at"]
    while time.time() <= enqueued_at:
        time.sleep(0.001)

    assert old.dequeue() is None

    [entry] = old.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("newer_version", "edge.parent", 1)
    assert entry.raw == raw
    assert re.search(
        re.escape("Task 'edge.callback' version 2 (a callback of 'edge.parent') is newer"),
        entry.error,
    ), entry.error
    assert old.scheduled_count() == 0
    assert old.pending_count() == 0


# -- 7. on_error handlers -----------------------------------------------------------


def declare_boom(app: VersionedHuey) -> Any:
    @app.versioned_task(version=1, name="edge.boom")
    def boom(x: int) -> None:
        raise ValueError("bad x")

    return boom


def run_next(app: VersionedHuey) -> None:
    task = app.dequeue()
    assert task is not None
    app.execute(task)


def test_a_versioned_on_error_handler_that_cannot_take_the_exception_is_dead_lettered(
    make_huey: MakeHuey,
) -> None:
    """Huey's appended exception does not fit ``exc: str``: the handler's message is an
    invalid_payload dead letter, neither raised nor lost."""
    app = make_huey()
    boom = declare_boom(app)
    ran: list[Any] = []

    @app.versioned_task(version=1, name="edge.handler")
    def handler(x: int, exc: str) -> None:
        ran.append(exc)

    app.enqueue(boom.s(1).error(handler.s(1)))
    run_next(app)

    assert ran == []
    assert app.pending_count() == 0
    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("invalid_payload", "edge.handler", 1)
    assert re.search(
        re.escape("Huey enqueued 'edge.handler' version 1 inside the worker"), entry.error
    ), entry.error
    assert re.search(r"exc: ", entry.error), entry.error


def test_a_plain_on_error_handler_receives_a_remote_exception(make_huey: MakeHuey) -> None:
    """A @huey.task() handler gets the failure as versioned_tasks.RemoteException."""
    app = make_huey()
    boom = declare_boom(app)
    received: list[Any] = []

    @app.task()
    def plain_handler(x: int, exc: Any) -> None:
        received.append((x, exc))

    app.enqueue(boom.s(1).error(plain_handler.s(1)))
    run_next(app)
    run_next(app)

    [(x, exc)] = received
    assert x == 1
    assert isinstance(exc, RemoteException)
    assert exc.type_name.endswith("ValueError")
    assert exc.message == "bad x"
    assert len(app.dead_letters) == 0


# -- 8. value envelopes that decode with errors of their own -------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"$timedelta":[1e300,0,0]}', "Malformed $timedelta value"),
        (b'{"$timedelta":[100000000000000000000,0,0]}', "Malformed $timedelta value"),
        (b'{"$timedelta":[1000000000,0,0]}', "Malformed $timedelta value"),
        (b"[" * 5000 + b"]" * 5000, "Envelope body is not valid JSON"),
        (b"[" * 1000 + b"]" * 1000, "Envelope body is nested too deeply to decode"),
    ],
    ids=[
        "timedelta-float-overflow",
        "timedelta-int-overflow",
        "timedelta-days-out-of-range",
        "5000-nested-lists",
        "1000-nested-lists",
    ],
)
def test_deserialize_raises_decode_error_for_overflowing_or_deeply_nested_values(
    body: bytes, message: str
) -> None:
    """VersionedSerializer.deserialize turns overflow and deep nesting into DecodeError."""
    serializer = VersionedSerializer()

    with pytest.raises(DecodeError, match=re.escape(message)) as info:
        serializer.deserialize(b'VTE1{"kind":"value"}\n' + body)

    assert isinstance(info.value, VersionedTaskError)


# -- 9. replay to a tombstone handler --------------------------------------------------


def test_replay_of_a_retired_entry_whose_tombstone_now_has_a_handler_returns_none(
    make_huey: MakeHuey,
) -> None:
    """replay() returns None and the handler runs when the worker dequeues the message."""
    old = make_huey()

    @old.versioned_task(version=1, name="shop.gone")
    def gone(order_id: int) -> None:
        pass

    gone(7)
    [raw] = queued(old)
    retired = make_huey()
    retired.tombstone("shop.gone")
    assert retired.dequeue() is None
    [entry] = retired.dead_letters
    assert (entry.reason, entry.raw) == ("retired", raw)

    fixed = make_huey()
    seen: list[RetiredMessage] = []
    fixed.tombstone("shop.gone", seen.append)

    assert fixed.dead_letters.replay(entry.id) is None

    assert len(fixed.dead_letters) == 0
    assert seen == []
    assert queued(fixed) == [raw]

    assert fixed.dequeue() is None

    assert [(m.task, m.version, m.payload) for m in seen] == [("shop.gone", 1, {"order_id": 7})]
    assert fixed.pending_count() == 0
    assert len(fixed.dead_letters) == 0
