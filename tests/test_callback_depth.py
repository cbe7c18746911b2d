"""Callbacks nested deeper than the worker's max_depth: the message is dead-lettered
whole, with its exact bytes, before any step runs; and what Huey enqueues inside
the worker that cannot be written is kept, never only logged as lost.

A worker reads what its parsers accept (orjson 1024 levels, pydantic 200), but
writes only up to its serializer's ``max_depth``. A pipeline written by a
producer with a higher limit used to run its first step, then fail to write the
rest of the chain: 149 of 150 steps lost.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from helpers import MakeHuey, Recorder, queued, running_consumer, wait_for
from huey.api import Task

from versioned_tasks import ReplayFailed, VersionedHuey, VersionedMemoryHuey, VersionedSerializer


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What was logged at ERROR or above (Huey's "Unhandled error during execution",
    a message logged as lost), but a task's own exception."""
    with caplog.at_level(logging.ERROR):
        yield lambda: [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR
            and not r.getMessage().startswith("Unhandled exception in task")
        ]


def deep_producer(make_huey: MakeHuey, **options: Any) -> VersionedHuey:
    return make_huey(serializer=VersionedSerializer(max_depth=200), **options)


def declare_step(app: VersionedHuey, ran: Recorder) -> Any:
    @app.versioned_task(version=1, name="depth.step")
    def step(n: int) -> int:
        ran(n)
        return n + 1

    return step


def pipeline(step: Any, steps: int, **options: Any) -> Task:
    """``step.s(0).then(step)...``: ``steps`` steps, each nested in the one before."""
    call: Task = step.s(0, **options)
    for _ in range(steps - 1):
        call = call.then(step)
    return call


def test_a_pipeline_nested_deeper_than_the_worker_writes_is_dead_lettered_whole_unrun(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """150 steps from a producer with max_depth=200, a worker with the default
    (128): the exact bytes in the dead-letter store, step 1 never run; replayed
    by a worker whose limit is raised, all 150 steps run."""
    producer = deep_producer(make_huey)
    producer.enqueue(pipeline(declare_step(producer, Recorder()), 150))
    [raw] = queued(producer)
    app = make_huey()
    ran = Recorder()
    declare_step(app, ran)

    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 1)

    assert ran.calls == []
    [entry] = app.dead_letters
    assert entry.raw == raw
    assert (entry.reason, entry.task, entry.version) == ("undecodable", "depth.step", 1)
    assert entry.error.startswith("Task 'depth.step' version 1 has callbacks nested so deep")
    assert "at least 151 levels" in entry.error
    assert "max_depth (128)" in entry.error
    assert "Raise max_depth on the workers' VersionedSerializer" in entry.error
    assert "split the pipeline, then replay" in entry.error
    assert errors() == []
    assert app.pending_count() == 0
    with pytest.raises(ReplayFailed, match=re.escape("max_depth (128)")):
        app.dead_letters.replay(entry.id)  # the same rule on replay
    assert app.pending_count() == 0

    raised = deep_producer(make_huey)
    raised_ran = Recorder()
    declare_step(raised, raised_ran)
    raised.dead_letters.replay(entry.id)
    with running_consumer(raised):
        wait_for(lambda: len(raised_ran) == 150, timeout=60)
    assert sorted(call[0] for call in raised_ran.calls) == list(range(150))


def test_a_pipeline_within_the_worker_limit_runs_every_step(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """100 steps from the same producer: the default worker runs them all, in order."""
    producer = deep_producer(make_huey)
    producer.enqueue(pipeline(declare_step(producer, Recorder()), 100))
    app = make_huey()
    ran = Recorder()
    declare_step(app, ran)
    with running_consumer(app):
        wait_for(lambda: len(ran) == 100, timeout=60)
    assert [call[0] for call in ran.calls] == list(range(100))
    assert len(app.dead_letters) == 0
    assert errors() == []


def test_a_deep_pipeline_due_later_is_dead_lettered_before_it_reaches_the_schedule(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """An eta in the future: the worker, which would move it to the schedule,
    dead-letters the bytes it dequeued instead."""
    producer = deep_producer(make_huey)
    eta = utc_now() + datetime.timedelta(hours=1)
    producer.enqueue(pipeline(declare_step(producer, Recorder()), 150, eta=eta))
    [raw] = queued(producer)
    app = make_huey()
    ran = Recorder()
    declare_step(app, ran)
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 1)
    [entry] = app.dead_letters
    assert (entry.raw, entry.reason) == (raw, "undecodable")
    assert app.scheduled_count() == 0
    assert ran.calls == []
    assert errors() == []


def test_a_deep_pipeline_on_the_schedule_is_dead_lettered_by_the_scheduler(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """Put on the schedule by the producer, and due: the consumer's scheduler
    dead-letters the exact bytes rather than enqueue a chain it cannot write."""
    producer = deep_producer(make_huey)
    eta = utc_now() - datetime.timedelta(seconds=1)
    producer.add_schedule(pipeline(declare_step(producer, Recorder()), 150, eta=eta))
    [raw] = [bytes(item) for item in producer.storage.scheduled_items()]
    app = make_huey()
    ran = Recorder()
    declare_step(app, ran)
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 1)
    [entry] = app.dead_letters
    assert (entry.raw, entry.reason) == (raw, "undecodable")
    assert "max_depth (128)" in entry.error
    assert app.scheduled_count() == 0
    assert app.pending_count() == 0
    assert ran.calls == []
    assert errors() == []


def nested_callbacks(levels: int) -> bytes:
    """A task envelope whose header holds ``levels`` callbacks, each inside the last."""
    callback = b'{"task":"depth.step","v":1,"params":["n"],"id":"c0","args":[],"kwargs":{}}'
    for level in range(1, levels):
        callback = (
            b'{"task":"depth.step","v":1,"params":["n"],"id":"c%d","args":[],"kwargs":{},'
            b'"on_complete":%s}' % (level, callback)
        )
    header = b'{"kind":"task","task":"depth.step","v":1,"id":"top-%d","on_complete":%s}' % (
        levels,
        callback,
    )
    return b"VTE1" + header + b"\n" + orjson.dumps({"n": 0})


def test_hand_built_envelopes_with_129_to_260_levels_of_callbacks_are_dead_lettered(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """Bytes no producer writes (orjson writes at most 255 levels) meet the same
    rule: dead-lettered with their exact bytes, nothing run, nothing logged."""
    app = make_huey()
    ran = Recorder()
    declare_step(app, ran)
    sent = [nested_callbacks(levels) for levels in (127, 129, 150, 200, 201, 255, 260)]
    for raw in sent:
        app.storage.enqueue(raw)
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == len(sent))
    assert sorted(e.raw for e in app.dead_letters) == sorted(sent)
    assert {e.reason for e in app.dead_letters} == {"undecodable"}
    assert ran.calls == []
    assert errors() == []


def test_the_reader_refuses_exactly_the_callbacks_its_app_could_not_write_again() -> None:
    """With max_depth N, callbacks nesting the header N levels deep (with their
    arguments) are read, one level more is refused; the same for the listings."""
    for limit in (16, 128, 200):
        app = VersionedMemoryHuey("depth", serializer=VersionedSerializer(max_depth=limit))
        declare_step(app, Recorder())
        for levels in range(limit - 6, 263):
            outcome = app._reader.read(nested_callbacks(levels))
            if levels + 2 <= limit:
                assert isinstance(outcome, Task), (limit, levels)
            else:
                assert outcome.reason == "undecodable", (limit, levels)
                assert f"at least {levels + 2} levels" in outcome.error, (limit, levels)
        app.storage.enqueue(nested_callbacks(limit - 2))
        app.storage.enqueue(nested_callbacks(limit - 1))
        assert len(app.pending()) == 1


def test_a_callback_nested_too_deep_in_a_chord_is_refused_like_one_in_a_pipeline(
    make_huey: MakeHuey,
) -> None:
    """A chord callback sits two levels below its member: counted as such."""
    app = make_huey()
    declare_step(app, Recorder())
    inner = nested_callbacks(126)
    header, body = inner[4:].split(b"\n", 1)
    callback = orjson.loads(header)
    del callback["kind"]
    chord = {"cid": "c", "size": 1, "idx": 0, "callback": callback}
    top = {"kind": "task", "task": "depth.step", "v": 1, "id": "m", "chord": chord}
    raw = b"VTE1" + orjson.dumps(top) + b"\n" + body
    outcome = app._reader.read(raw)
    assert outcome.reason == "undecodable"
    assert "at least 130 levels" in outcome.error


# -- what Huey writes inside the worker ------------------------------------------------


def nest(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def declare_deep(app: VersionedHuey, ran: Recorder) -> tuple[Any, Any]:
    @app.versioned_task(version=1, name="depth.deep")
    def deep(levels: int) -> Any:
        ran("deep", levels)
        return nest(levels)

    @app.versioned_task(version=1, name="depth.after")
    def after(value: Any) -> None:
        ran("after", value == nest(150))

    return deep, after


def test_a_callback_deeper_than_the_worker_writes_is_kept_written_at_the_ceiling(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """The parent's result nests 150 levels: the callback cannot be written at 128,
    so it is dead-lettered as written at 200, and replays where the limit is raised."""
    app = make_huey(results=False)
    ran = Recorder()
    deep, after = declare_deep(app, ran)
    app.enqueue(deep.s(150).then(after))
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 1)
    assert ran.calls == [("deep", 150)]
    [entry] = app.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("undecodable", "depth.after", 1)
    assert "kept as written with max_depth 200" in entry.error
    assert errors() == []

    raised = deep_producer(make_huey, results=False)
    raised_ran = Recorder()
    declare_deep(raised, raised_ran)
    raised.dead_letters.replay(entry.id)
    with running_consumer(raised):
        wait_for(lambda: len(raised_ran) == 1)
    assert raised_ran.calls == [("after", True)]


def test_a_callback_no_envelope_can_hold_keeps_the_bytes_of_the_step_that_ran(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """A result nested 300 levels cannot be written at any limit: the parent's
    dequeued bytes are dead-lettered, saying it already ran; nothing logged as lost."""
    app = make_huey(results=False)
    ran = Recorder()
    deep, after = declare_deep(app, ran)
    app.enqueue(deep.s(300).then(after))
    [raw] = queued(app)
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 1)
    assert ran.calls == [("deep", 300)]
    [entry] = app.dead_letters
    assert (entry.raw, entry.reason, entry.task) == (raw, "undecodable", "depth.deep")
    assert "Huey enqueued 'depth.after' version 1 inside the worker" in entry.error
    assert "which had already run" in entry.error
    assert errors() == []


def test_a_retry_or_schedule_move_the_worker_cannot_write_keeps_the_dequeued_bytes(
    make_huey: MakeHuey, errors: Callable[[], list[str]]
) -> None:
    """Arguments nested 150 levels, from a producer at 200: the worker (128) runs
    the task, which fails; its retry with a delay cannot be written, so the bytes it
    was dequeued from are kept. Another call due in an hour is kept the same way."""
    producer = deep_producer(make_huey)
    app = make_huey()
    ran = Recorder()
    tasks = []
    for target in (producer, app):

        @target.versioned_task(version=1, name="depth.flaky", retries=1, retry_delay=60)
        def flaky(value: Any) -> None:
            ran("flaky")
            raise RuntimeError("try again later")

        tasks.append(flaky)
    producer_flaky = tasks[0]
    producer_flaky(nest(150))
    producer.enqueue(producer_flaky.s(nest(150), eta=utc_now() + datetime.timedelta(hours=1)))
    sent = queued(producer)
    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 2)
    assert ran.calls == [("flaky",)]
    assert sorted(e.raw for e in app.dead_letters) == sorted(sent)
    assert {(e.reason, e.task) for e in app.dead_letters} == {("undecodable", "depth.flaky")}
    assert app.scheduled_count() == 0
    assert errors() == []


def utc_now() -> datetime.datetime:
    """Huey's clock: naive UTC."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
