"""Revocation records the worker cannot interpret: the task they name is
dead-lettered with the exact bytes it was dequeued from, never lost inside Huey.

Huey reads ``r:<id>`` and ``rt:<task class>`` after the message left the queue,
unpacks the value as ``(revoke_until, revoke_once)`` and compares the time.
Any other value there (``huey.put()`` data, a copied result, junk) used to make
Huey log "Unhandled error during execution" and drop the task.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from helpers import MakeHuey, Recorder, examples, queued, running_consumer, signer, wait_for
from huey.signals import SIGNAL_REVOKED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import datetimes, json_scalars, json_values

from versioned_tasks import DecodeError, SignatureError, VersionedHuey

#: Records of every shape Huey cannot read: (case name, how to store it).
Store = Callable[[VersionedHuey, str], None]


def put(value: Any) -> Store:
    """Store ``value`` as Huey stores any value (a value envelope)."""
    return lambda app, key: app.put(key, value)


def put_raw(data: bytes) -> Store:
    """Store ``data`` as the record's bytes, as they are."""
    return lambda app, key: app.storage.put_data(key, data)


AWARE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

BAD_RECORDS: dict[str, Store] = {
    "int": put(1),
    "list of three": put([1, 2, 3]),
    "string": put("revoked"),
    "two-letter string": put("ab"),  # Huey would unpack it as ('a', 'b')
    "dict": put({"revoke_until": None, "revoke_once": True}),
    "tuple of wrong types": put(("tomorrow", 1)),
    "int as revoke_until": put((1, False)),
    "aware revoke_until": put((AWARE, False)),  # naive <= aware raises
    "junk bytes": put_raw(b"\x00\xffnot an envelope"),
}


@pytest.fixture
def huey_errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """What Huey's consumer and core logged at ERROR or above."""
    with caplog.at_level(logging.ERROR, logger="huey"):
        yield lambda: [r.getMessage() for r in caplog.records if r.name.startswith("huey")]


def test_every_record_huey_cannot_read_dead_letters_its_task_with_the_dequeued_bytes(
    make_huey: MakeHuey, huey_errors: Callable[[], list[str]]
) -> None:
    """Per-task and class-level records of each bad shape: not run, not lost, the exact
    bytes in the dead-letter store, nothing logged by Huey; fixed and replayed, they run."""
    app = make_huey()
    ran = Recorder()
    tasks: dict[tuple[str, str], Any] = {}
    for number, case in enumerate(BAD_RECORDS):
        for level in ("task", "class"):
            tasks[case, level] = declare(app, f"rev.case{number}_{level}", ran)

    @app.versioned_task(version=1, name="rev.control")
    def control(n: int) -> None:
        ran("rev.control", n)

    ids: dict[str, tuple[str, str]] = {}
    for (case, level), task in tasks.items():
        if level == "class":
            BAD_RECORDS[case](app, app._task_key(task, "rt"))
            # One class-level record used to swallow every message of the task.
            ids.update({task(n).id: (case, level) for n in (1, 2)})
        else:
            call = task.s(1)
            BAD_RECORDS[case](app, call.revoke_id)
            ids[app.enqueue(call).id] = (case, level)
    control(7)
    enqueued = queued(app)

    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == len(ids) and len(ran) == 1)

    assert ran.calls == [("rev.control", 7)]
    entries = list(app.dead_letters)
    assert sorted(e.raw for e in entries) == sorted(
        raw for raw in enqueued if b"control" not in raw
    )
    for entry in entries:
        case, level = ids[task_id(entry.raw)]
        assert (entry.reason, entry.version) == ("undecodable", 1), case
        key = "rt:" if level == "class" else f"r:{task_id(entry.raw)}"
        assert f"The revocation record '{key}" in entry.error, case
        assert f"task {entry.task!r} version 1" in entry.error, case
        fix = "huey.restore_all(" if level == "class" else "huey.restore_by_id("
        assert fix in entry.error, case
        assert "then replay this dead letter" in entry.error, case
    assert huey_errors() == []

    for task in tasks.values():
        app.restore_all(task)
    for task_ident in ids:
        app.restore_by_id(task_ident)
    for entry in entries:
        app.dead_letters.replay(entry.id)
    with running_consumer(app):
        wait_for(lambda: len(ran) == 1 + len(ids))
    assert len(app.dead_letters) == 0


def test_a_signed_result_or_a_foreign_signature_in_a_revocation_key_dead_letters_the_task(
    make_huey: MakeHuey, huey_errors: Callable[[], list[str]]
) -> None:
    """On a signed app, a genuine signed result copied into a revocation key reads
    as a value of the wrong shape (``undecodable``), and a record signed with a key
    the worker does not hold is ``bad_signature``; the tasks keep their bytes."""
    app = make_huey(serializer=signer("k1"))
    ran = Recorder()
    by_task = declare(app, "rev.signed_task", ran)
    by_class = declare(app, "rev.signed_class", ran)
    foreign = declare(app, "rev.foreign", ran)
    app.put_result("a-result", {"total": 3})
    result_bytes = app.storage.peek_data("a-result")
    assert result_bytes.startswith(b"VTS1k1:")

    call = by_task.s(1)
    app.storage.put_data(call.revoke_id, result_bytes)
    app.enqueue(call)
    app.storage.put_data(app._task_key(by_class, "rt"), result_bytes)
    by_class(2)
    other_key = signer("k2").serialize((None, False))
    app.storage.put_data(app._task_key(foreign, "rt"), other_key)
    foreign(3)
    enqueued = queued(app)

    with running_consumer(app):
        wait_for(lambda: len(app.dead_letters) == 3)

    assert ran.calls == []
    assert sorted(e.raw for e in app.dead_letters) == sorted(enqueued)
    reasons = {e.task: e.reason for e in app.dead_letters}
    assert reasons == {
        "rev.signed_task": "undecodable",
        "rev.signed_class": "undecodable",
        "rev.foreign": "bad_signature",
    }
    assert huey_errors() == []


def test_outside_the_worker_a_bad_record_raises_an_error_naming_the_task_key_and_fix(
    make_huey: MakeHuey,
) -> None:
    """``is_revoked()`` called by application code raises; nothing is dead-lettered."""
    app = make_huey()
    guarded = declare(app, "rev.guarded", Recorder())
    app.put(app._task_key(guarded, "rt"), [1, 2, 3])
    key = app._task_key(guarded, "rt")
    with pytest.raises(DecodeError) as caught:
        guarded.is_revoked()
    assert str(caught.value) == (
        f"The revocation record {key!r} of task 'rev.guarded' version 1 cannot be read: "
        f"it holds list [1, 2, 3], not the pair (revoke_until, revoke_once) that "
        f"huey.revoke() writes. Delete it with huey.restore_all(<the task>) (a record "
        f"for every message of the task)."
    )
    app.restore_all(guarded)
    result = guarded(1)
    app.put(f"r:{result.id}", (None, "yes"))
    with pytest.raises(DecodeError, match=re.escape(f"huey.restore_by_id({result.id!r})")):
        result.is_revoked()
    app.storage.put_data(f"r:{result.id}", signer("k2").serialize((None, False)))
    with pytest.raises(SignatureError, match=re.escape("task 'rev.guarded' version 1")):
        app.is_revoked(result.task)
    assert len(app.dead_letters) == 0


def test_well_formed_records_still_revoke_as_huey_means_them(make_huey: MakeHuey) -> None:
    """Revoke, revoke once, revoke until a time past or to come: Huey's meanings kept."""
    app = make_huey()
    ran = Recorder()
    task = declare(app, "rev.normal", ran)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    once, forever, lifted, later = (task.s(n) for n in range(4))
    app.revoke(once, revoke_once=True)
    app.revoke(forever)
    app.revoke(lifted, revoke_until=now - datetime.timedelta(hours=1))
    app.revoke(later, revoke_until=now + datetime.timedelta(hours=1))
    revoked = Recorder()
    app.signal(SIGNAL_REVOKED)(lambda signal, task: revoked(task.id))
    for call in (once, forever, lifted, later):
        app.enqueue(call)
    with running_consumer(app):
        wait_for(lambda: len(ran) == 1 and len(revoked) == 3)
    assert ran.calls == [("rev.normal", 2)]
    assert not app.is_revoked(once.id)  # a revoke-once record is used up
    assert app.is_revoked(forever.id)
    assert app.is_revoked(later.id)
    assert len(app.dead_letters) == 0


#: Records as huey.put() writes them: pairs as huey.revoke() writes them (naive
#: times, past and to come), pairs of any types, and other values.
put_records = st.one_of(
    st.tuples(
        st.none() | st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2200, 1, 1)),
        st.booleans(),
    ),
    st.tuples(st.none() | datetimes | json_scalars, st.booleans() | json_scalars),
    json_values,
)


def test_any_json_record_leaves_the_task_run_revoked_or_dead_lettered_never_lost(
    make_huey: MakeHuey,
) -> None:
    """Whatever JSON value a revocation key holds (raw in a value envelope, or written
    by ``huey.put()``), the consumer runs the task, skips it as revoked, or
    dead-letters it with the bytes that were enqueued."""
    app = make_huey()
    ran = Recorder()
    task = declare(app, "rev.any", ran)
    revoked = Recorder()
    app.signal(SIGNAL_REVOKED)(lambda signal, task: revoked(task.id))
    calls = itertools.count()

    @settings(
        max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        call = task.s(next(calls))
        key = data.draw(st.sampled_from([call.revoke_id, app._task_key(task, "rt")]))
        if data.draw(st.booleans(), label="raw JSON"):
            value = data.draw(json_values, label="record")
            app.storage.put_data(key, b'VTE1{"kind":"value"}\n' + orjson.dumps(value))
        else:
            app.put(key, data.draw(put_records, label="record"))
        # Enqueued by hand to know the exact bytes before a worker takes them.
        raw = app.serialize_task(call)
        app.storage.enqueue(raw)
        wait_for(lambda: ("rev.any", call.args[0]) in ran.calls or (call.id,) in revoked.calls)
        letters = [e for e in app.dead_letters if task_id(e.raw) == call.id]
        assert [e.raw for e in letters] in ([], [raw])
        assert ("rev.any", call.args[0]) not in ran.calls or not letters
        app.delete(key)

    with running_consumer(app):
        check()


def declare(app: VersionedHuey, name: str, ran: Recorder) -> Any:
    """A versioned task ``name(n)`` that records its task id when it runs."""

    @app.versioned_task(version=1, name=name)
    def job(n: int) -> None:
        ran(name, n)

    return job


def task_id(raw: bytes) -> str:
    """The task id in an envelope's header."""
    header = raw[raw.index(b"VTE1") + 4 : raw.index(b"\n")]
    ident: str = orjson.loads(header)["id"]
    return ident


def test_a_task_whose_records_the_storage_cannot_look_up_is_kept_not_dropped(
    make_huey: MakeHuey, backend: str, huey_errors: Callable[[], list[str]]
) -> None:
    """A task id holding NUL: PostgreSQL refuses the revocation lookup, so the task is
    dead-lettered with its exact bytes (not dropped inside Huey); the other storages
    look it up and run it."""
    app = make_huey()
    ran = Recorder()

    @app.versioned_task(version=1, name="rev.nul")
    def nul(n: int) -> None:
        ran("rev.nul", n)

    app.enqueue(nul.s(1, id="a\x00b"))
    [raw] = queued(app)
    with running_consumer(app):
        if backend == "postgres":
            wait_for(lambda: len(app.dead_letters) == 1)
        else:
            wait_for(lambda: ran.calls == [("rev.nul", 1)])
    if backend == "postgres":
        [entry] = app.dead_letters
        assert (entry.raw, entry.reason, entry.task) == (raw, "undecodable", "rev.nul")
        assert "cannot be looked up" in entry.error
        assert ran.calls == []
    assert huey_errors() == []
