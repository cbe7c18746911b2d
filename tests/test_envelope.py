"""The wire format, the value codec, and a read path that never loses a message."""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import math
import pickle
import re
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import MakeHuey, examples
from huey import MemoryHuey, SqliteHuey
from huey.api import Huey, chord
from huey.exceptions import TaskException
from huey.registry import Message
from huey.utils import Error
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from strategies import codec_values, frame, json_values, mutated_envelopes, same, split

from versioned_tasks import (
    REASONS,
    DecodeError,
    EncodeError,
    RetiredMessage,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedSerializer,
)

# -- layout ------------------------------------------------------------------------------


def only_message(huey: Huey) -> bytes:
    (raw,) = (bytes(item) for item in huey.storage.enqueued_items())
    return raw


def test_task_envelope_layout(make_huey: MakeHuey) -> None:
    """b"VTE1" + header JSON + newline + a JSON object of named fields."""
    huey = make_huey(app_build="build-42")

    @huey.versioned_task(version=3, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str = "EUR") -> None:
        pass

    result = send_invoice(7)
    raw = only_message(huey)
    assert raw.startswith(b"VTE1")
    head, _, body = raw[4:].partition(b"\n")
    header = json.loads(head)
    assert header["kind"] == "task"
    assert header["task"] == "billing.send_invoice"
    assert header["v"] == 3
    assert header["id"] == result.id
    assert header["by"].startswith("versioned_tasks/")
    assert header["build"] == "build-42"
    assert isinstance(header["at"], float)
    assert json.loads(body) == {"invoice_id": 7, "currency": "EUR"}
    assert b"\n" not in head
    assert b"\n" not in body


def test_header_is_readable_without_the_body() -> None:
    """unpack() parses the header alone and hands back the body bytes untouched."""
    huey = VersionedMemoryHuey("layout")

    @huey.versioned_task(version=1, name="layout.job")
    def job(n: int) -> None:
        pass

    job(1)
    raw = only_message(huey)
    cut = raw.index(b"\n") + 1
    serializer = VersionedSerializer()
    header, body = serializer.unpack(raw[:cut] + b"\xff not json at all")
    assert (header["task"], header["v"]) == ("layout.job", 1)
    assert body == b"\xff not json at all"
    assert serializer.unpack(raw) == (header, raw[cut:])


def test_envelope_does_not_start_like_pickle_or_compressed_data() -> None:
    """The first byte is neither 0x80 (pickle) nor 0x1f/0x78 (what Huey sniffs as zlib/gzip)."""
    huey = VersionedMemoryHuey("layout")

    @huey.versioned_task(version=1, name="layout.job")
    def job(n: int) -> None:
        pass

    job(1)
    serializer = VersionedSerializer()
    for raw in (only_message(huey), serializer.serialize(None), serializer.serialize((1,))):
        assert raw[:1] not in (b"\x80", b"\x1f", b"\x78")
        assert raw[:4] == b"VTE1"


@settings(max_examples=examples(100), deadline=None)
@given(value=codec_values)
def test_value_envelopes_never_start_like_pickle_or_compressed(value: Any) -> None:
    """Every encoded value starts with the magic."""
    raw = VersionedSerializer().serialize(value)
    assert raw.startswith(b"VTE1")
    assert raw[:1] not in (b"\x80", b"\x1f", b"\x78")


# -- VersionedSerializer on a plain Huey ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def plain_huey(request: pytest.FixtureRequest, tmp_path: Path) -> Huey:
    """A plain huey.Huey (not a VersionedHuey) using VersionedSerializer."""
    if request.param == "memory":
        return MemoryHuey("plain", serializer=VersionedSerializer())
    return SqliteHuey(
        "plain", filename=str(tmp_path / "plain.db"), serializer=VersionedSerializer()
    )


def test_plain_huey_runs_tasks_and_keeps_result_types(plain_huey: Huey) -> None:
    """Tuples, datetimes, sets and int-keyed dicts come back from the result store."""
    huey = plain_huey
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)

    @huey.task()
    def echo(a: Any, b: Any = None) -> Any:
        return (a, b, when, {1: "one"}, frozenset({2}))

    result = echo((1, 2), b={"$tuple": "looks like a tag"})
    raw = only_message(huey)
    assert raw.startswith(b"VTE1")
    assert b"pickle" not in raw
    task = huey.dequeue()
    assert task.args == ((1, 2),)
    assert task.kwargs == {"b": {"$tuple": "looks like a tag"}}
    huey.execute(task)
    value = result.get()
    assert same(
        value,
        ((1, 2), {"$tuple": "looks like a tag"}, when, {1: "one"}, frozenset({2})),
    )


def test_plain_huey_stores_errors_as_errors(plain_huey: Huey) -> None:
    """A failed task's Error result comes back as a TaskException with its metadata."""
    huey = plain_huey

    @huey.task()
    def boom() -> None:
        raise ValueError("no way")

    result = boom()
    huey.execute(huey.dequeue())
    with pytest.raises(TaskException, match="no way") as info:
        result.get()
    assert info.value.metadata["error"] == "ValueError('no way')"

    huey.put("err", Error({"a": (1, 2)}))
    stored = huey.get("err")
    assert isinstance(stored, Error)
    assert stored.metadata == {"a": (1, 2)}


def test_plain_huey_pipeline_and_schedule(plain_huey: Huey) -> None:
    """Pipelines (args extended with the parent's result) and eta survive the envelope."""
    huey = plain_huey

    @huey.task()
    def add(a: int, b: int) -> int:
        return a + b

    pipeline = add.s(1, 2).then(add, 10)
    results = huey.enqueue(pipeline)
    huey.execute(huey.dequeue())
    huey.execute(huey.dequeue())
    assert [r.get() for r in results] == [3, 13]

    eta = datetime.datetime(2030, 1, 1)
    add.schedule((1, 1), eta=eta)
    task = huey.dequeue()
    assert task.eta == huey_naive_utc(eta)


def huey_naive_utc(eta: datetime.datetime) -> datetime.datetime:
    # Huey treats a naive eta as local time and stores naive UTC.
    return eta.astimezone(datetime.UTC).replace(tzinfo=None)


def test_plain_huey_refuses_pickle_bytes(plain_huey: Huey) -> None:
    """Legacy pickle is never unpickled: DecodeError, naming what it saw."""
    huey = plain_huey
    message = Message("id", "name", None, 0, 0, None, (), {}, None, None, None, None, None)
    huey.storage.enqueue(pickle.dumps(message))
    with pytest.raises(DecodeError, match=re.escape("Legacy pickle data (starts with 0x80)")):
        huey.dequeue()
    with pytest.raises(DecodeError, match="never unpickled"):
        huey.serializer.deserialize(pickle.dumps({"a": 1}))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "Empty message"),
        (zlib.compress(b"x"), "Compressed data"),
        (b"VTE1{}", "Truncated envelope"),
        (b"VTE1{nope\n{}", "Envelope header is not valid JSON"),
        (b"VTE1[1]\n{}", "Envelope header is not a JSON object"),
        (b'VTE1{"kind":"alien"}\n{}', "Envelope of unknown kind 'alien'"),
        (b'VTE1{"kind":"value"}\n{"$nope": 1}', "Unknown value tag '$nope'"),
        (b'VTE1{"kind":"value"}\n{"$datetime": "x"}', "Malformed $datetime value"),
        (b'VTE1{"kind":"value"}\n{"$set": [[1]]}', "Malformed $set value"),
        (b'VTE1{"kind":"value"}\nnot json', "Envelope body is not valid JSON"),
        (b"junkjunk", "Not an envelope"),
    ],
)
def test_serializer_refuses_what_is_not_an_envelope(raw: bytes, message: str) -> None:
    """Every refusal is a DecodeError saying what was wrong."""
    with pytest.raises(DecodeError, match=re.escape(message)):
        VersionedSerializer().deserialize(raw)


# -- the value codec ------------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(value=codec_values)
def test_value_codec_round_trip(value: Any) -> None:
    """Nested JSON, tuples, sets, datetimes, bytes, UUIDs, Decimals, odd-keyed dicts: intact."""
    serializer = VersionedSerializer()
    back = serializer.deserialize(serializer.serialize(value))
    assert same(back, value), (back, value)


@settings(max_examples=examples(100), deadline=None)
@given(value=json_values)
def test_plain_json_values_are_stored_as_plain_json(value: Any) -> None:
    """A JSON value without tag-like keys is written as itself (readable by any tool)."""
    raw = VersionedSerializer().serialize(value)
    header, body = split(raw) or ({}, b"")
    assert header == {"kind": "value"}
    if not _has_tag_like_key(value):
        assert json.loads(body) == value


def _has_tag_like_key(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_tag_like_key(v) for v in value)
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith("$"):
            return True
        return any(_has_tag_like_key(v) for v in value.values())
    return False


@pytest.mark.parametrize(
    "value",
    [
        {"$tuple": [1, 2]},
        {"$datetime": "2024-01-01T00:00:00"},
        {"$dict": [[1, 2]]},
        {1: "a", "1": "b"},
        {(1, "a"): {None: [b"x"]}},
        {"$set": "not a set", "other": 1},
        [uuid.UUID(int=5), decimal.Decimal("-0.00"), datetime.timedelta(days=-1, seconds=5)],
        datetime.time(1, 2, 3, 4),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
        {frozenset({1, 2}), (1, (2, 3))},
        b"\x00\xff",
        Error({"error": "x", "traceback": None}),
    ],
)
def test_value_codec_examples(value: Any) -> None:
    """Values that look like tags, or nest odd types, come back as they went in."""
    serializer = VersionedSerializer()
    back = serializer.deserialize(serializer.serialize(value))
    if isinstance(value, Error):
        assert isinstance(back, Error)
        assert back.metadata == value.metadata
    else:
        assert same(back, value)


def test_exceptions_travel_as_remote_exceptions() -> None:
    """An exception value comes back as RemoteException naming its type and message."""
    from versioned_tasks import RemoteException

    serializer = VersionedSerializer()
    back = serializer.deserialize(serializer.serialize(KeyError("k")))
    assert isinstance(back, RemoteException)
    assert back.type_name == "builtins.KeyError"
    assert back.message == "'k'"


def test_an_unencodable_value_raises_encode_error_with_its_path() -> None:
    """A value JSON cannot carry raises EncodeError naming where it sits."""
    with pytest.raises(EncodeError, match=re.escape("Cannot encode object at value[1].x")) as info:
        VersionedSerializer().serialize([1, {"x": object()}])
    assert info.value.path == "value[1].x"
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, {"big": 10**30}]])
def test_integers_beyond_64_bits_round_trip_or_raise_encode_error(value: Any) -> None:
    """A too-big integer survives or raises EncodeError, never a bare TypeError."""
    serializer = VersionedSerializer()
    try:
        raw = serializer.serialize(value)
    except EncodeError:
        return
    assert same(serializer.deserialize(raw), value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, {"x": math.inf}]])
def test_non_finite_floats_round_trip_or_raise_encode_error(value: Any) -> None:
    """NaN and infinities are not silently turned into None."""
    serializer = VersionedSerializer()
    try:
        raw = serializer.serialize(value)
    except EncodeError:
        return
    back = serializer.deserialize(raw)
    assert repr(back) == repr(value)


def test_unknown_header_keys_are_ignored(make_huey: MakeHuey) -> None:
    """A header key this release does not know (from a newer producer) is ignored."""
    huey = make_huey()
    seen: list[int] = []

    @huey.versioned_task(version=1, name="fwd.job")
    def job(n: int) -> None:
        seen.append(n)

    job(5)
    raw = only_message(huey)
    huey.storage.flush_queue()
    header, body = split(raw) or ({}, b"")
    header.update(future_field={"nested": [1, 2]}, signature="abc", zz=None)
    future = frame(header, body)
    huey.storage.enqueue(future)
    task = huey.dequeue()
    assert task is not None
    huey.execute(task)
    assert seen == [5]
    assert len(huey.dead_letters) == 0

    value = VersionedSerializer().serialize((1, 2))
    value_header, value_body = split(value) or ({}, b"")
    value_header["future"] = True
    assert VersionedSerializer().deserialize(frame(value_header, value_body)) == (1, 2)


def test_a_higher_format_number_is_undecodable(make_huey: MakeHuey) -> None:
    """b"VTE2..." is refused (never guessed at) and dead-lettered as undecodable."""
    huey = make_huey()

    @huey.versioned_task(version=1, name="fmt.job")
    def job(n: int) -> None:
        pass

    job(1)
    raw = only_message(huey)
    huey.storage.flush_queue()
    newer = b"VTE2" + raw[4:]
    huey.storage.enqueue(newer)
    assert huey.dequeue() is None
    (entry,) = huey.dead_letters
    assert (entry.reason, entry.raw, entry.task, entry.version) == (
        "undecodable",
        newer,
        None,
        None,
    )
    assert "Envelope format b'2' is not understood" in entry.error
    with pytest.raises(DecodeError, match="upgrade versioned_tasks on this worker"):
        VersionedSerializer().deserialize(newer)


def test_pickle_in_a_versioned_queue_is_dead_lettered(make_huey: MakeHuey) -> None:
    """Legacy pickle bytes on a VersionedHuey queue land in the store, exactly as they were."""
    huey = make_huey()
    raw = pickle.dumps(("legacy", 1))
    huey.storage.enqueue(raw)
    assert huey.dequeue() is None
    (entry,) = huey.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)


# -- the key property: nothing read from the queue is lost or raises ------------------------


@dataclass
class Fuzz:
    """An app with versioned, plain, renamed and retired tasks, and what it saw."""

    huey: VersionedHuey
    send: Any = None
    plain: Any = None
    handled: list[RetiredMessage] = field(default_factory=list)

    def reset(self) -> None:
        self.huey.storage.flush_all()
        self.huey.dead_letters.purge()
        self.handled.clear()


def build_fuzz_app(huey: VersionedHuey) -> Fuzz:
    @huey.versioned_task(version=2, name="fuzz.send")
    def send(
        a: int,
        b: str = "x",
        when: datetime.datetime | None = None,
        items: list[int] | None = None,
    ) -> int:
        return a

    @huey.upcaster("fuzz.send", from_version=1)
    def add_b(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "b": str(payload.get("b", "up"))}

    @huey.task()
    def plain(*args: Any, **kwargs: Any) -> int:
        return len(args) + len(kwargs)

    huey.rename("fuzz.old_send", "fuzz.send")
    huey.tombstone("fuzz.retired")
    fuzz = Fuzz(huey, send, plain)

    @huey.tombstone("fuzz.handled")
    def handle(retired: RetiredMessage) -> None:
        fuzz.handled.append(retired)

    huey.check_schemas()
    return fuzz


TASK_NAMES = ["fuzz.send", "fuzz.old_send", "fuzz.retired", "fuzz.handled", "fuzz.unknown"]


@functools.cache
def encoder() -> Fuzz:
    """A producer app whose messages seed the mutations."""
    return build_fuzz_app(VersionedMemoryHuey("fuzz-encoder"))


@st.composite
def valid_envelopes(draw: st.DrawFn) -> bytes:
    """Real envelopes: versioned calls with options, pipelines, error handlers, chords, plain."""
    fuzz = encoder()
    huey, send, plain = fuzz.huey, fuzz.send, fuzz.plain
    huey.storage.flush_queue()
    kwargs = {
        "a": draw(st.integers(-(2**31), 2**31)),
        "b": draw(st.text(max_size=5)),
        "when": draw(st.none() | st.datetimes(min_value=datetime.datetime(2000, 1, 1))),
        "items": draw(st.none() | st.lists(st.integers(0, 9), max_size=3)),
    }
    options = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "retries": st.integers(0, 3),
                "retry_delay": st.integers(0, 5),
                "priority": st.integers(0, 9),
                "timeout": st.integers(1, 60),
                "expires": st.integers(1, 3600) | st.just(datetime.timedelta(minutes=5)),
                "delay": st.integers(1, 60),
            },
        )
    )
    shape = draw(st.sampled_from(["call", "pipeline", "on_error", "chord", "plain"]))
    if shape == "call":
        huey.enqueue(send.s(**kwargs, **options))
    elif shape == "pipeline":
        huey.enqueue(send.s(**kwargs, **options).then(send).then(plain, 1))
    elif shape == "on_error":
        huey.enqueue(send.s(**kwargs).error(plain, "failed"))
    elif shape == "chord":
        huey.enqueue(chord([send.s(a=1), send.s(a=2)], plain.s("done")))
    else:
        huey.enqueue(plain.s(*draw(st.lists(json_values, max_size=3)), k=(1, 2)))
    items = [bytes(item) for item in huey.storage.enqueued_items()]
    return draw(st.sampled_from(items))


envelopes_under_test = mutated_envelopes(valid_envelopes(), TASK_NAMES)


def check_one_message(fuzz: Fuzz, raw: bytes) -> None:
    """Push ``raw`` through dequeue(): a task, a dead letter, a deferral or a handler call."""
    huey = fuzz.huey
    fuzz.reset()
    huey.storage.enqueue(raw)

    listed = huey.pending()  # read-only: skips what cannot run, removes nothing
    assert huey.pending_count() == 1
    assert len(huey.dead_letters) == 0

    task = huey.dequeue()
    assert huey.pending_count() == 0
    entries = huey.dead_letters.list()
    scheduled = [bytes(item) for item in huey.storage.scheduled_items()]

    event(
        "task"
        if task is not None
        else entries[0].reason
        if entries
        else "deferred"
        if scheduled
        else "tombstone handler"
    )
    if task is not None:
        assert entries == []
        assert scheduled == []
        assert [t.id for t in listed] == [task.id]
        huey.execute(task)  # runs it, or re-serializes it onto the schedule if not due
        return
    assert listed == []
    outcomes = [
        len(entries) == 1,
        scheduled == [raw],
        len(fuzz.handled) == 1,
    ]
    assert outcomes.count(True) == 1, (raw, entries, scheduled, fuzz.handled)
    if entries:
        (entry,) = entries
        assert entry.reason in REASONS
        assert entry.raw == raw
        assert huey.dead_letters.get(entry.id).raw == raw
        # The stage that fails names the reason: the catch-all is for the unforeseeable.
        assert not entry.error.startswith("Unreadable message ("), entry.error


def _send_envelope(**header: Any) -> bytes:
    base = {
        "kind": "task",
        "task": "fuzz.send",
        "v": 2,
        "id": "0d6f4c1e-0000-4000-8000-000000000000",
        "at": 1_700_000_000.0,
        "by": "versioned_tasks/0.1.0",
    }
    return frame({**base, **header}, b'{"a":1,"b":"","when":null,"items":null}')


AWARE_ETA = _send_envelope(eta="2024-01-01T00:00:00+05:00")
AWARE_EXPIRES_RESOLVED = _send_envelope(expires=60, expires_resolved="2024-01-01T00:00:00Z")
DICT_TASK_NAME = _send_envelope(task={"name": "fuzz.send"})


@pytest.mark.parametrize(
    "raw",
    [AWARE_ETA, AWARE_EXPIRES_RESOLVED],
    ids=["eta", "expires_resolved"],
)
def test_a_timezone_aware_datetime_in_the_header_cannot_break_execution(raw: bytes) -> None:
    """An aware eta/expires_resolved is refused or normalized; execute() must not raise.

    Huey compares them with its naive timestamps; a TypeError there happens after
    the pop, so the consumer would log it and the message would be lost.
    """
    fuzz = memory_fuzz()
    fuzz.reset()
    fuzz.huey.storage.enqueue(raw)
    task = fuzz.huey.dequeue()
    if task is None:
        (entry,) = fuzz.huey.dead_letters
        assert (entry.reason, entry.raw) == ("undecodable", raw)
        return
    fuzz.huey.execute(task)


@pytest.mark.parametrize("name", [{"name": "fuzz.send"}, ["fuzz.send"], 7, None, ""])
def test_a_task_name_that_is_not_a_string_is_named_as_the_problem(name: Any) -> None:
    """A header whose task name is not a non-empty string dead-letters saying so."""
    fuzz = memory_fuzz()
    fuzz.reset()
    raw = _send_envelope(task=name)
    fuzz.huey.storage.enqueue(raw)
    assert fuzz.huey.dequeue() is None
    (entry,) = fuzz.huey.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)
    assert "lacks a valid task name" in entry.error


@pytest.mark.parametrize("ident", [0, "", None, 1.5, True, ["x"], 7, "custom-id"])
def test_a_task_id_on_the_wire_is_kept_or_the_message_refused(ident: Any) -> None:
    """The id a message carries is the id it runs under, or the message is dead-lettered.

    Huey replaces a falsy id with a fresh random one, so listing and dequeuing the
    same bytes would disagree, and the result would land under an unknown id.
    """
    fuzz = memory_fuzz()
    fuzz.reset()
    raw = _send_envelope(id=ident)
    fuzz.huey.storage.enqueue(raw)
    listed = fuzz.huey.pending()
    task = fuzz.huey.dequeue()
    if task is None:
        (entry,) = fuzz.huey.dead_letters
        assert (entry.reason, entry.raw) == ("undecodable", raw)
        assert listed == []
        return
    assert task.id == ident
    assert [t.id for t in listed] == [ident]


def test_a_retired_message_with_a_priority_read_from_the_schedule_is_kept(
    make_huey: MakeHuey,
) -> None:
    """The scheduler hands a handled tombstone's message to the worker, priority or not.

    On a storage without priorities (plain Redis) the header's priority must not
    make read_schedule() raise after the storage already removed the message.
    """
    fuzz = fuzz_on(make_huey)
    fuzz.reset()
    huey = fuzz.huey
    raw = _send_envelope(task="fuzz.handled", priority=5)
    huey.storage.add_to_schedule(raw, datetime.datetime(2000, 1, 1))
    assert huey.read_schedule(datetime.datetime(2001, 1, 1)) == []
    queued = [bytes(item) for item in huey.storage.enqueued_items()]
    entries = huey.dead_letters.list()
    assert (queued, [e.raw for e in entries]) in (([raw], []), ([], [raw]))
    if queued:
        assert huey.dequeue() is None
        assert [m.task for m in fuzz.handled] == ["fuzz.handled"]


@functools.cache
def memory_fuzz() -> Fuzz:
    return build_fuzz_app(VersionedMemoryHuey("fuzz-memory"))


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=envelopes_under_test)
@example(raw=AWARE_ETA)
@example(raw=AWARE_EXPIRES_RESOLVED)
@example(raw=DICT_TASK_NAME)
@example(raw=_send_envelope(id=0))
def test_any_bytes_in_the_queue_become_a_task_or_a_dead_letter(raw: bytes) -> None:
    """dequeue() never raises and never loses a message, whatever the bytes (Memory)."""
    check_one_message(memory_fuzz(), raw)


_BACKEND_APPS: weakref.WeakKeyDictionary[Any, Fuzz] = weakref.WeakKeyDictionary()


def fuzz_on(make_huey: MakeHuey) -> Fuzz:
    """One fuzz app per test on the backend under test (examples share it)."""
    if make_huey not in _BACKEND_APPS:
        _BACKEND_APPS[make_huey] = build_fuzz_app(make_huey())
    return _BACKEND_APPS[make_huey]


@settings(
    max_examples=examples(50),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(raw=envelopes_under_test)
def test_any_bytes_in_any_backend_queue_become_a_task_or_a_dead_letter(
    make_huey: MakeHuey, raw: bytes
) -> None:
    """dequeue() never raises and never loses a message on SQLite and Redis either."""
    check_one_message(fuzz_on(make_huey), raw)


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=envelopes_under_test)
def test_any_bytes_on_the_schedule_become_a_task_or_a_dead_letter(raw: bytes) -> None:
    """read_schedule() never raises either; what it cannot run is kept somewhere."""
    check_one_scheduled(memory_fuzz(), raw)


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(raw=envelopes_under_test)
def test_any_bytes_on_any_backend_schedule_become_a_task_or_a_dead_letter(
    make_huey: MakeHuey, raw: bytes
) -> None:
    """read_schedule() never raises and keeps what it cannot run, on every backend."""
    check_one_scheduled(fuzz_on(make_huey), raw)


def check_one_scheduled(fuzz: Fuzz, raw: bytes) -> None:
    """Put ``raw`` on the schedule, due: read_schedule() returns it or keeps it somewhere."""
    huey = fuzz.huey
    fuzz.reset()
    huey.storage.add_to_schedule(raw, datetime.datetime(2000, 1, 1))
    due = huey.read_schedule(datetime.datetime(2001, 1, 1))
    entries = huey.dead_letters.list()
    queued = [bytes(item) for item in huey.storage.enqueued_items()]
    rescheduled = [bytes(item) for item in huey.storage.scheduled_items()]
    outcomes = [len(due) == 1, len(entries) == 1, queued == [raw], rescheduled == [raw]]
    assert outcomes.count(True) == 1, (raw, due, entries, queued, rescheduled)
    event(["task", "dead letter", "to the worker", "deferred"][outcomes.index(True)])
    if entries:
        assert entries[0].reason in REASONS
        assert entries[0].raw == raw
        assert not entries[0].error.startswith("Unreadable message ("), entries[0].error
