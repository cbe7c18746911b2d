"""Envelope limits: a maximum size and a maximum nesting depth, refused where a
message is written and dead-lettered as ``undecodable`` where it is read.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import orjson
import pytest
from helpers import MakeHuey, Recorder, examples, queued, running_consumer, wait_for
from huey import MemoryHuey
from huey.signals import SIGNAL_ENQUEUED
from hypothesis import given, settings
from hypothesis import strategies as st

from versioned_tasks import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    EnvelopeTooLarge,
    VersionedMemoryHuey,
    VersionedSerializer,
    VersionedTaskError,
)

KEY = b"limits-secret-only-for-the-test-suite-01"


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep: nested(1) == [], nested(2) == [[]]."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def reference_depth(value: Any) -> int:
    """How deep arrays and objects nest in parsed JSON."""
    if isinstance(value, list):
        return 1 + max((reference_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(item) for item in value.values()), default=0)
    return 0


def test_the_defaults_are_4_mib_and_128_levels() -> None:
    """Sensible defaults: far above a normal message, well under the JSON parsers' limits."""
    serializer = VersionedSerializer()
    assert serializer.max_size == 4 * 1024 * 1024
    assert serializer.max_depth == 128
    assert repr(VersionedSerializer(max_size=2048, max_depth=10)) == (
        "VersionedSerializer(max_size=2048, max_depth=10)"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": 100}, "max_size must be an integer at least 1024, not 100."),
        ({"max_size": 2.5e6}, "max_size must be an integer at least 1024, not 2500000.0."),
        ({"max_depth": 0}, "max_depth must be an integer from 1 to 200, not 0."),
        ({"max_depth": 201}, "max_depth must be an integer from 1 to 200, not 201."),
        ({"max_depth": True}, "max_depth must be an integer from 1 to 200, not True."),
    ],
)
def test_limits_out_of_range_are_refused(options: dict[str, Any], message: str) -> None:
    """A limit that cannot work is a ConfigurationError at construction."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        VersionedSerializer(**options)


# -- at the producer ------------------------------------------------------------------------


def test_an_oversized_message_fails_at_enqueue_naming_task_size_and_limit(
    make_huey: MakeHuey,
) -> None:
    """EnvelopeTooLarge (an EncodeError) is raised and nothing reaches storage."""
    app = make_huey(serializer=VersionedSerializer(max_size=4096))

    @app.versioned_task(version=3, name="limits.upload")
    def upload(data: str) -> None: ...

    enqueued: list[str] = []
    app.signal(SIGNAL_ENQUEUED)(lambda signal, task, *rest: enqueued.append(task.id))
    with pytest.raises(EnvelopeTooLarge) as info:
        upload("x" * 5000)
    assert enqueued == []
    error = info.value
    assert isinstance(error, EncodeError)
    assert isinstance(error, VersionedTaskError)
    assert (error.task, error.version, error.limit) == ("limits.upload", 3, 4096)
    assert 5000 < error.size < 5300
    assert str(error).startswith(
        f"Task 'limits.upload' version 3: the envelope is {error.size:,} bytes, more than "
        f"max_size (4,096 bytes); nothing was written. Pass large data by reference"
    )
    assert app.pending_count() == 0
    upload("x" * 3000)
    assert app.pending_count() == 1
    assert len(enqueued) == 1


def test_a_plain_task_and_a_plain_huey_name_the_task_too() -> None:
    """Plain @huey.task() messages are measured the same way, on either kind of Huey."""
    versioned = VersionedMemoryHuey("limits", serializer=VersionedSerializer(max_size=2048))
    plain = MemoryHuey("limits", serializer=VersionedSerializer(max_size=2048))
    for huey in (versioned, plain):

        @huey.task(name="limits.plain")
        def plain_task(data: str) -> None: ...

        with pytest.raises(
            EnvelopeTooLarge, match=r"^Task '\w+\.limits\.plain': the envelope is "
        ):
            plain_task("y" * 3000)
        assert huey.pending_count() == 0


def test_an_oversized_stored_value_fails_where_it_is_put() -> None:
    """A result, lock or huey.put() value over the limit raises when it is written."""
    huey = VersionedMemoryHuey("limits", serializer=VersionedSerializer(max_size=2048))
    with pytest.raises(EnvelopeTooLarge, match=re.escape("A stored value (a result")) as info:
        huey.put("big", "z" * 3000)
    assert info.value.task is None
    huey.put("small", "z" * 100)
    assert huey.get("small") == "z" * 100


def test_the_size_limit_counts_every_byte_written_signature_included() -> None:
    """An envelope of exactly max_size bytes is written and read; one byte more is not."""
    for serializer in (
        VersionedSerializer(max_size=1024),
        VersionedSerializer(max_size=1024, secret_keys={"k1": KEY}),
    ):
        overhead = len(serializer.serialize(""))
        fits = "a" * (1024 - overhead)
        raw = serializer.serialize(fits)
        assert len(raw) == 1024
        assert serializer.deserialize(raw) == fits
        with pytest.raises(EnvelopeTooLarge, match=r"1,025 bytes, more than max_size \(1,024"):
            serializer.serialize(fits + "a")


def test_arguments_nested_deeper_than_max_depth_fail_at_enqueue(make_huey: MakeHuey) -> None:
    """The error names the task, the version, the depth and the limit."""
    app = make_huey(serializer=VersionedSerializer(max_depth=20))

    @app.versioned_task(version=1, name="limits.tree")
    def tree(node: Any) -> None: ...

    message = (
        "Task 'limits.tree' version 1: the envelope body nests 25 levels deep, more than "
        "max_depth (20); nothing was written."
    )
    with pytest.raises(EncodeError, match=re.escape(message)):
        tree(nested(24))  # the argument object adds one level
    assert app.pending_count() == 0
    tree(nested(19))
    assert app.pending_count() == 1


def test_a_pipeline_deeper_than_max_depth_fails_at_enqueue() -> None:
    """Each pipeline step nests in the header of the step before it."""
    app = VersionedMemoryHuey("limits", serializer=VersionedSerializer(max_depth=16))

    @app.versioned_task(version=1, name="limits.step")
    def step(n: int = 0) -> int:
        return n

    short = step.s(1)
    for _ in range(10):
        short = short.then(step)
    app.enqueue(short)
    long = step.s(1)
    for _ in range(20):
        long = long.then(step)
    with pytest.raises(EncodeError, match=r"envelope header nests \d+ levels deep"):
        app.enqueue(long)
    assert app.pending_count() == 1


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    """Only arrays and objects nest: a string full of brackets is depth 0."""
    serializer = VersionedSerializer(max_depth=4)
    text = "[{" * 5000 + '\\"[' * 100
    assert serializer.deserialize(serializer.serialize([text, {"k": text}])) == [
        text,
        {"k": text},
    ]


# -- at the worker --------------------------------------------------------------------------


def test_an_oversized_message_is_dead_lettered_undecodable_and_replays_after_raising_the_limit(
    make_huey: MakeHuey,
) -> None:
    """A producer with a larger limit wrote it; the worker keeps its exact bytes."""
    producer = make_huey(serializer=VersionedSerializer(max_size=64 * 1024))

    @producer.versioned_task(version=1, name="limits.upload")
    def upload(data: str) -> None: ...

    upload("x" * 20_000)
    [raw] = queued(producer)
    worker = make_huey(serializer=VersionedSerializer(max_size=8192))
    ran = Recorder()

    @worker.versioned_task(version=1, name="limits.upload")
    def upload_in_worker(data: str) -> None:
        ran(len(data))

    assert worker.dequeue() is None
    [entry] = worker.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)
    assert entry.error == (
        f"Message of {len(raw):,} bytes is larger than max_size (8,192 bytes): not read. "
        f"Raise max_size on this reader's VersionedSerializer, then replay it."
    )

    raised = make_huey(serializer=VersionedSerializer(max_size=64 * 1024))

    @raised.versioned_task(version=1, name="limits.upload")
    def upload_raised(data: str) -> None:
        ran(len(data))

    raised.dead_letters.replay(entry.id)
    raised.execute(raised.dequeue())
    assert ran.calls == [(20_000,)]


def test_a_message_deeper_than_the_parsers_read_is_dead_lettered_undecodable(
    make_huey: MakeHuey,
) -> None:
    """On reading, depth is left to the parsers (pydantic reads 200 levels of a
    task's arguments): deeper bytes, which no writer here produces, are undecodable."""
    worker = make_huey()

    @worker.versioned_task(version=1, name="limits.tree")
    def tree_in_worker(node: Any) -> None:
        raise AssertionError("never runs")

    raw = (
        b'VTE1{"kind":"task","task":"limits.tree","v":1,"id":"deep","at":1}\n{"node":'
        + b"[" * 250
        + b"]" * 250
        + b"}"
    )
    worker.storage.enqueue(raw)
    assert worker.dequeue() is None
    [entry] = worker.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)
    assert "recursion limit exceeded" in entry.error


def test_a_reader_takes_what_its_parsers_read_whatever_its_own_max_depth() -> None:
    """max_depth bounds what is written; a message within the parsers' limits is read
    by a worker with a lower max_depth (a rolling change of the limit loses nothing)."""
    deep = VersionedSerializer(max_depth=200).serialize(nested(150))
    assert VersionedSerializer(max_depth=10).deserialize(deep) == nested(150)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"VTE1" + b'{"a":' * 1100 + b"1" + b"}" * 1100 + b"\n{}", "header is not valid JSON"),
        (b'VTE1{"kind":"value"}\n' + b"[" * 5000 + b"]" * 5000, "body is not valid JSON"),
        (b'VTE1{"kind":"value"}\n' + b"[" * 300, "body is not valid JSON"),
        (b'VTE1{"kind":"value"}\n' + b"[" * 900 + b"]" * 900, "nested too deeply"),
    ],
    ids=["deep-header", "deep-body", "unclosed-body", "deep-value"],
)
def test_hand_made_deep_bytes_are_decode_errors_and_dead_letters(raw: bytes, message: str) -> None:
    """deserialize() raises DecodeError; a VersionedHuey dead-letters them as undecodable."""
    with pytest.raises(DecodeError, match=re.escape(message)):
        VersionedSerializer().deserialize(raw)
    app = VersionedMemoryHuey("limits")
    app.storage.enqueue(raw)
    assert app.dequeue() is None
    [entry] = app.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)


@settings(max_examples=examples(200), deadline=None)
@given(
    value=st.recursive(
        st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(alphabet="[]{}ab", max_size=3), children, max_size=3)
        ),
        max_leaves=30,
    ),
    limit=st.integers(1, 12),
)
def test_the_depth_limit_is_exact_where_it_is_written(value: Any, limit: int) -> None:
    """A value is written when it nests at most max_depth levels, and refused
    (EncodeError naming the depth) when it nests deeper, brackets in strings aside;
    what was written reads back."""
    body = VersionedSerializer(max_depth=200).serialize(value).split(b"\n", 1)[1]
    depth = reference_depth(orjson.loads(body))
    writer = VersionedSerializer(max_depth=limit)
    if depth <= limit:
        assert writer.deserialize(writer.serialize(value)) == value
    else:
        with pytest.raises(EncodeError, match=f"body nests {depth} levels deep"):
            writer.serialize(value)


def test_a_consumer_dead_letters_oversized_and_too_deep_messages_and_runs_the_rest(
    make_huey: MakeHuey,
) -> None:
    """Both limits hold under a real consumer, beside messages that run."""
    producer = make_huey(serializer=VersionedSerializer(max_size=1 << 20, max_depth=200))

    @producer.versioned_task(version=1, name="limits.job")
    def job(data: Any) -> None: ...

    job("small")
    job("x" * 50_000)
    job([1, 2])
    producer.storage.enqueue(
        b'VTE1{"kind":"task","task":"limits.job","v":1,"id":"deep","at":1}\n{"data":'
        + b"[" * 250
        + b"]" * 250
        + b"}"
    )

    worker = make_huey(serializer=VersionedSerializer(max_size=16 * 1024))
    ran = Recorder()

    @worker.versioned_task(version=1, name="limits.job")
    def job_in_worker(data: Any) -> None:
        ran(data)

    with running_consumer(worker):
        wait_for(lambda: len(ran) == 2 and len(worker.dead_letters) == 2)
        time.sleep(0.2)

    assert sorted(map(repr, ran.calls)) == sorted(map(repr, [("small",), ([1, 2],)]))
    errors = sorted(entry.error for entry in worker.dead_letters)
    assert {entry.reason for entry in worker.dead_letters} == {"undecodable"}
    assert any("bytes is larger than max_size (16,384 bytes)" in error for error in errors)
    assert any("recursion limit exceeded" in error for error in errors)


@settings(max_examples=examples(300), deadline=None)
@given(
    body=st.lists(st.sampled_from(list(b'[]{}"\\:,1 a')), max_size=80).map(bytes),
    limit=st.integers(1, 6),
)
def test_any_bracket_soup_is_read_or_refused_with_a_decode_error(body: bytes, limit: int) -> None:
    """Malformed text is a DecodeError, never another exception; well-formed text is
    read whatever the reader's max_depth (the codec may still refuse the value)."""
    raw = b'VTE1{"kind":"value"}\n' + body
    reader = VersionedSerializer(max_depth=limit)
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        with pytest.raises(DecodeError):
            reader.deserialize(raw)
        return
    with contextlib.suppress(DecodeError):
        reader.deserialize(raw)
