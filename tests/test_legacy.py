"""Adopting a live queue: pickled messages written by a plain Huey on the same storage
are read by ``VersionedHuey(legacy_pickle=True)`` and rewritten by ``migrate-queue``.

The legacy side is a real ``huey.Huey`` with Huey's own pickle serializer (plain,
gzip and zlib), sharing the app's storage and name; its tasks have the same
registry keys (``module.function``) as the app's, as after a real switch.
"""

from __future__ import annotations

import datetime
import gzip
import logging
import pickle
import re
import sys
import threading
import types
import uuid
import zlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import REDIS_URL, Recorder, require_redis, running_consumer, wait_for
from huey import Huey
from huey.api import chord
from huey.storage import MemoryStorage

from versioned_tasks import (
    DecodeError,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedPriorityRedisHuey,
    VersionedSqliteHuey,
)
from versioned_tasks.cli import main
from versioned_tasks.storage.rewrite import _Op, _RedisList
from versioned_tasks.wire.envelope import MAGIC

MakeHuey = Callable[..., VersionedHuey]

NAMES = {"ship": (f"{__name__}.ship", ("order_id",))}
SHIP = f"{__name__}.ship"


def legacy_huey(app: VersionedHuey, **options: Any) -> Huey:
    """A plain Huey with Huey's pickle serializer on the app's storage and name."""
    legacy = Huey(app.name, storage_class=MemoryStorage, **options)
    legacy.storage = app.storage
    return legacy


def declare_legacy(legacy: Huey) -> SimpleNamespace:
    """The tasks as the team had them before the switch (plain Huey tasks)."""

    @legacy.task()
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    @legacy.task()
    def send_invoice(invoice_id, currency="EUR"):  # type: ignore[no-untyped-def]
        return f"{invoice_id} {currency}"

    @legacy.task()
    def ship(order_id):  # type: ignore[no-untyped-def]
        return order_id

    @legacy.task()
    def notify(text):  # type: ignore[no-untyped-def]
        return text

    @legacy.task()
    def fail(code):  # type: ignore[no-untyped-def]
        raise ValueError(code)

    @legacy.task()
    def caught(code, error):  # type: ignore[no-untyped-def]
        return code

    @legacy.task()
    def total(values):  # type: ignore[no-untyped-def]
        return sum(values)

    @legacy.task()
    def gone(x):  # type: ignore[no-untyped-def]
        return x

    return SimpleNamespace(
        add=add,
        send_invoice=send_invoice,
        ship=ship,
        notify=notify,
        fail=fail,
        caught=caught,
        total=total,
        gone=gone,
    )


def declare_new(app: VersionedHuey, ran: Callable[..., None]) -> SimpleNamespace:
    """The same tasks after the switch: plain ones stay plain, others are versioned.

    Without ``name=``, a versioned task keeps Huey's name ``module.function``.
    ``ship`` has moved on to version 2 with an upcaster from version 1.
    """

    @app.task()
    def add(a: int, b: int) -> int:
        ran("add", a, b)
        return a + b

    @app.versioned_task(version=1)
    def send_invoice(invoice_id: int, currency: str = "EUR") -> str:
        ran("send_invoice", invoice_id, currency)
        return f"{invoice_id} {currency}"

    @app.versioned_task(version=2)
    def ship(order_id: int, carrier: str) -> str:
        ran("ship", order_id, carrier)
        return f"{order_id} via {carrier}"

    @app.upcaster(SHIP, from_version=1)
    def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "carrier": "post"}

    @app.versioned_task(version=1)
    def notify(text: str) -> None:
        ran("notify", text)

    @app.task()
    def fail(code: int) -> None:
        raise ValueError(code)

    @app.task()
    def caught(code: int, error: Exception) -> None:
        ran("caught", code, isinstance(error, ValueError))

    @app.versioned_task(version=1)
    def total(values: list[int]) -> int:
        ran("total", sorted(values))
        return sum(values)

    return SimpleNamespace(
        add=add,
        send_invoice=send_invoice,
        ship=ship,
        notify=notify,
        fail=fail,
        caught=caught,
        total=total,
    )


def stored(app: VersionedHuey) -> list[bytes]:
    """The bytes on the queue, in the order a worker takes them."""
    return [bytes(raw) for raw in app.storage.enqueued_items()]


def stored_schedule(app: VersionedHuey) -> list[bytes]:
    return [bytes(raw) for raw in app.storage.scheduled_items()]


def drain(app: VersionedHuey) -> list[Any]:
    """Pop and run every message as a worker would; returns the results."""
    results = []
    while (task := app.dequeue()) is not None:
        results.append(app.execute(task))
    return results


def naive_utc(**delta: float) -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now + datetime.timedelta(**delta)


# -- reading with legacy_pickle=True -------------------------------------------------


def test_legacy_messages_of_every_kind_run_on_a_real_consumer(make_huey: MakeHuey) -> None:
    """Plain and versioned tasks, kwargs, gzip and zlib, the schedule, a pipeline, an
    on_error handler and a chord: all written with pickle, all run once."""
    app = make_huey(legacy_pickle=dict([NAMES["ship"]]))
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    gz = declare_legacy(legacy_huey(app, compression=True))
    zl = declare_legacy(legacy_huey(app, compression=True, use_zlib=True))

    old.add(1, 2)
    old.send_invoice(7)
    old.send_invoice(invoice_id=8, currency="USD")
    gz.send_invoice(9, "CHF")
    zl.add(3, 4)
    old.ship(5)
    legacy.enqueue(old.send_invoice.s(10).then(old.notify))
    legacy.enqueue(old.fail.s(11).error(old.caught, 11))
    legacy.enqueue(chord([old.add.s(1, 1), old.add.s(2, 2)], old.total.s()))
    legacy.add_schedule(old.add.s(5, 6, eta=naive_utc(seconds=-1)))
    later = old.add.s(7, 8, eta=naive_utc(hours=1))
    legacy.add_schedule(later)
    assert all(raw[:1] in (b"\x80", b"\x1f", b"\x78") for raw in stored(app))

    ran = Recorder()
    declare_new(app, ran)
    with running_consumer(app):
        wait_for(lambda: len(ran) == 13)

    assert sorted(ran.calls, key=repr) == sorted(
        [
            ("add", 1, 2),
            ("send_invoice", 7, "EUR"),
            ("send_invoice", 8, "USD"),
            ("send_invoice", 9, "CHF"),
            ("add", 3, 4),
            ("ship", 5, "post"),
            ("send_invoice", 10, "EUR"),
            ("notify", "10 EUR"),
            ("caught", 11, True),
            ("add", 1, 1),
            ("add", 2, 2),
            ("total", [2, 4]),
            ("add", 5, 6),
        ],
        key=repr,
    )
    assert len(app.dead_letters) == 0
    (waiting,) = app.scheduled()
    assert (waiting.id, waiting.args, waiting.eta) == (later.id, (7, 8), later.eta)


def test_without_the_flag_legacy_pickle_is_dead_lettered_undecodable_with_its_bytes(
    make_huey: MakeHuey,
) -> None:
    app = make_huey()
    declare_legacy(legacy_huey(app)).add(1, 2)
    (raw,) = stored(app)
    declare_new(app, Recorder())

    assert app.dequeue() is None

    (entry,) = app.dead_letters
    assert (entry.reason, entry.raw) == ("undecodable", raw)
    assert "never unpickled" in entry.error


def test_the_flag_logs_a_warning_that_names_the_risk(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="versioned_tasks"):
        VersionedMemoryHuey("quiet")
        assert caplog.records == []
        VersionedMemoryHuey("adopting", legacy_pickle=True)

    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "'adopting'" in message
    assert "runs code" in message
    assert "versioned-tasks migrate-queue" in message
    assert "turn legacy_pickle off" in message


def test_a_bad_legacy_pickle_option_is_refused_at_construction() -> None:
    from versioned_tasks import ConfigurationError

    with pytest.raises(ConfigurationError, match=re.escape("legacy_pickle: 'shop.ship'")):
        VersionedMemoryHuey("q", legacy_pickle={"shop.ship": "order_id"})
    with pytest.raises(ConfigurationError, match="legacy_pickle must be True, False or"):
        VersionedMemoryHuey("q", legacy_pickle="yes")  # type: ignore[arg-type]


def test_a_legacy_message_is_upcast_from_version_1_to_the_current_version() -> None:
    """Positional arguments are named by the version-1 names given to the flag."""
    app = VersionedMemoryHuey("ship", legacy_pickle=dict([NAMES["ship"]]))
    old = declare_legacy(legacy_huey(app))
    old.ship(5)
    old.ship(order_id=6)
    declare_new(app, Recorder())

    assert drain(app) == ["5 via post", "6 via post"]


def test_without_version_1_names_only_positional_arguments_fail_to_upcast() -> None:
    app = VersionedMemoryHuey("ship", legacy_pickle=True)
    old = declare_legacy(legacy_huey(app))
    old.ship(5)
    old.ship(order_id=6)
    (positional, _) = stored(app)
    declare_new(app, Recorder())

    assert drain(app) == ["6 via post"]

    (entry,) = app.dead_letters
    assert (entry.reason, entry.task, entry.version, entry.raw) == (
        "upcast_failed",
        SHIP,
        1,
        positional,
    )
    assert f"legacy_pickle={{{SHIP!r}: ('first', 'second', ...)}}" in entry.error


def test_unknown_tasks_bad_arguments_and_junk_are_dead_lettered_with_their_bytes(
    make_huey: MakeHuey,
) -> None:
    app = make_huey(legacy_pickle=True)
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    old.gone(1)
    old.send_invoice("not a number")
    legacy.enqueue(old.send_invoice.s(3).then(old.gone))
    junk = [
        b"\x80\x05junk",
        pickle.dumps({"not": "a message"}),
        gzip.compress(b"not a pickle"),
        zlib.compress(b"\x80\x05truncated")[:-3],
    ]
    for raw in junk:
        app.storage.enqueue(raw)
    sent = stored(app)
    declare_new(app, Recorder())

    assert drain(app) == []

    entries = {entry.raw: entry for entry in app.dead_letters}
    assert sorted(entries) == sorted(sent)
    assert [entries[raw].reason for raw in sent] == [
        "unknown_task",
        "invalid_payload",
        "unknown_task",
        *["undecodable"] * 4,
    ]
    unknown = entries[sent[0]]
    assert (unknown.task, unknown.version) == (f"{__name__}.gone", None)
    assert unknown.error.startswith("Legacy pickle: The message names the task")
    callback = entries[sent[2]]
    assert (callback.task, callback.version) == (f"{__name__}.send_invoice", 1)
    assert "callback message.on_complete" in callback.error
    assert "not a Huey Message" in entries[sent[4]].error


def test_a_legacy_dead_letter_replays_once_the_task_is_declared() -> None:
    app = VersionedMemoryHuey("replay", legacy_pickle=True)
    declare_legacy(legacy_huey(app)).gone(41)
    assert drain(app) == []
    (entry,) = app.dead_letters

    @app.versioned_task(version=1)
    def gone(x: int) -> int:
        return x + 1

    app.dead_letters.replay(entry.id)

    (raw,) = stored(app)
    assert raw.startswith(MAGIC)  # replay writes an envelope, never pickle
    assert drain(app) == [42]


def test_a_legacy_message_of_a_retired_task_goes_to_its_tombstone() -> None:
    app = VersionedMemoryHuey("retire", legacy_pickle=True)
    result = declare_legacy(legacy_huey(app)).gone(3)
    retired: list[Any] = []
    app.tombstone(f"{__name__}.gone", retired.append)

    assert drain(app) == []

    (message,) = retired
    assert (message.task, message.version, message.id) == (f"{__name__}.gone", None, result.id)
    assert message.payload == {"args": [3], "kwargs": {}}
    assert len(app.dead_letters) == 0


def test_a_legacy_message_that_fails_is_retried_as_an_envelope() -> None:
    """Legacy pickle is read, never written: the retry goes back as an envelope."""
    app = VersionedMemoryHuey("retry", legacy_pickle=True)
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    legacy.enqueue(old.fail.s(7, retries=1))
    declare_new(app, Recorder())

    first = app.dequeue()
    assert first is not None
    assert app.execute(first) is None  # fails; Huey enqueues the retry

    (raw,) = stored(app)
    assert raw.startswith(MAGIC)
    retry = app.dequeue()
    assert (retry.id, retry.args, retry.retries) == (first.id, (7,), 0)


def test_pending_and_scheduled_list_legacy_messages() -> None:
    app = VersionedMemoryHuey("listing", legacy_pickle=True)
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    result = old.send_invoice(1)
    legacy.add_schedule(old.add.s(2, 3, eta=naive_utc(hours=1)))
    declare_new(app, Recorder())

    (pending,) = app.pending()
    (scheduled,) = app.scheduled()

    assert (pending.id, pending.kwargs) == (result.id, {"invoice_id": 1, "currency": "EUR"})
    assert scheduled.args == (2, 3)


def test_legacy_results_and_revocations_are_read_with_the_flag(make_huey: MakeHuey) -> None:
    app = make_huey(legacy_pickle=True)
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    legacy.put("report", {"rows": (1, 2)})
    old.add.revoke()
    kept = old.send_invoice(5)
    kept.revoke()
    new = declare_new(app, Recorder())

    assert app.get("report", peek=True) == {"rows": (1, 2)}
    assert new.add.is_revoked()
    assert drain(app) == [None]  # the revoked message is read and skipped
    assert len(app.dead_letters) == 0

    plain = make_huey()
    with pytest.raises(DecodeError, match="never unpickled"):
        plain.get("report")


# -- migrate-queue -------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def as_module(monkeypatch: pytest.MonkeyPatch) -> Callable[[VersionedHuey], str]:
    """Expose an app as ``module:huey`` for ``--app`` (as the workers would import it)."""

    def expose(app: VersionedHuey) -> str:
        name = f"vt_legacy_app_{uuid.uuid4().hex[:12]}"
        module = types.ModuleType(name)
        module.huey = app  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
        return f"{name}:huey"

    return expose


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False)


def fill_for_migration(app: VersionedHuey, new: SimpleNamespace) -> dict[str, Any]:
    """Envelopes and pickle side by side, on the queue and the schedule."""
    legacy = legacy_huey(app)
    old = declare_legacy(legacy)
    gz = declare_legacy(legacy_huey(app, compression=True))
    new.send_invoice(1)  # an envelope already
    old.add(1, 2)
    gz.send_invoice(2, "USD")
    legacy.enqueue(old.send_invoice.s(3).then(old.notify))
    old.gone(4)
    app.storage.enqueue(b"\x80\x05junk")
    old.ship(order_id=5)
    legacy.add_schedule(old.add.s(5, 6, eta=naive_utc(hours=1)))
    app.add_schedule(new.send_invoice.s(7, eta=naive_utc(hours=2)))
    legacy.add_schedule(old.notify.s("later", eta=naive_utc(hours=3)))
    legacy.put("report", [1, 2])
    return {
        "queue": stored(app),
        "schedule": stored_schedule(app),
        "pending": [t.id for t in app.pending()],
        "scheduled": [(t.id, t.eta) for t in app.scheduled()],
    }


def test_migrate_queue_rewrites_the_queue_and_the_schedule_in_place(
    make_huey: MakeHuey, runner: CliRunner, as_module: Callable[[VersionedHuey], str]
) -> None:
    """Same ids, same order, same etas; envelopes untouched; the unconvertible kept."""
    app = make_huey(legacy_pickle=True)
    ran = Recorder()
    new = declare_new(app, ran)
    before = fill_for_migration(app, new)
    target = as_module(app)

    dry = invoke(runner, "migrate-queue", "--app", target, "--dry-run")

    assert dry.exit_code == 1, dry.output
    assert f"Queue {app.name!r}: 4 to convert, 1 already envelopes, 2 to dead-letter." in (
        dry.output
    )
    assert f"Schedule {app.name!r}: 2 to convert, 1 already envelopes, 0 to dead-letter." in (
        dry.output
    )
    assert "queue: would dead-letter" in dry.output
    assert "Dry run: nothing was changed." in dry.output
    assert (stored(app), stored_schedule(app)) == (before["queue"], before["schedule"])
    assert len(app.dead_letters) == 0

    done = invoke(runner, "migrate-queue", "--app", target)

    assert done.exit_code == 1, done.output
    assert f"Queue {app.name!r}: 4 converted, 1 already envelopes, 2 dead-lettered." in (
        done.output
    )
    assert f"Schedule {app.name!r}: 2 converted, 1 already envelopes, 0 dead-lettered." in (
        done.output
    )
    assert "Result store: 1 legacy pickled values (report)" in done.output
    assert all(raw.startswith(MAGIC) for raw in stored(app) + stored_schedule(app))
    assert stored(app)[0] == before["queue"][0]  # the envelope, byte for byte
    assert stored_schedule(app)[1] == before["schedule"][1]
    assert [t.id for t in app.pending()] == before["pending"]
    assert [(t.id, t.eta) for t in app.scheduled()] == before["scheduled"]
    moved = {entry.raw: entry.reason for entry in app.dead_letters}
    assert moved == {before["queue"][4]: "unknown_task", b"\x80\x05junk": "undecodable"}

    # The window is closed: an app without the flag runs everything that was pickle.
    closed = make_huey()
    declare_new(closed, ran)
    assert drain(closed) == ["1 EUR", 3, "2 USD", "3 EUR", "5 via post", None]
    assert ran.calls[-1] == ("notify", "3 EUR")  # the pipeline's second step
    assert len(closed.dead_letters) == 2  # the two from the migration

    again = invoke(runner, "migrate-queue", "--app", target, "--dry-run")
    assert again.exit_code == 0, again.output
    assert f"Queue {app.name!r}: 0 to convert, 0 already envelopes, 0 to dead-letter." in (
        again.output
    )
    assert f"Schedule {app.name!r}: 0 to convert, 3 already envelopes" in again.output


def test_migrate_queue_needs_the_flag_on_the_app_or_legacy_pickle(
    runner: CliRunner, as_module: Callable[[VersionedHuey], str]
) -> None:
    app = VersionedMemoryHuey("strict")
    declare_new(app, Recorder())
    declare_legacy(legacy_huey(app)).add(1, 2)
    target = as_module(app)

    refused = invoke(runner, "migrate-queue", "--app", target)

    assert refused.exit_code == 2, refused.output
    assert "Traceback" not in refused.output
    (line,) = refused.stderr.strip().splitlines()
    assert "runs code" in line
    assert "legacy_pickle=True" in line
    assert "--legacy-pickle" in line
    assert stored(app)[0][:1] == b"\x80"

    done = invoke(runner, "migrate-queue", "--app", target, "--legacy-pickle")

    assert done.exit_code == 0, done.output
    assert "Queue 'strict': 1 converted, 0 already envelopes, 0 dead-lettered." in done.output
    check = invoke(runner, "migrate-queue", "--app", target, "--dry-run", "--legacy-pickle")
    assert check.exit_code == 0, check.output
    assert "Nothing legacy is left in the queue, the schedule or the result store" in (
        check.output
    )
    assert drain(app) == [3]


def test_migrate_queue_refuses_a_storage_it_cannot_rewrite(
    runner: CliRunner, as_module: Callable[[VersionedHuey], str]
) -> None:
    from huey.storage import BlackHoleStorage

    app = VersionedHuey("void", storage_class=BlackHoleStorage, legacy_pickle=True)

    result = invoke(runner, "migrate-queue", "--app", as_module(app))

    assert result.exit_code == 2
    assert "cannot rewrite a BlackHoleStorage in place" in result.stderr


@pytest.mark.parametrize("kind", ["sqlite", "priority_redis"])
def test_migrate_queue_keeps_each_priority(
    kind: str, tmp_path: Any, runner: CliRunner, as_module: Callable[[VersionedHuey], str]
) -> None:
    name = f"vt_test_{uuid.uuid4().hex[:12]}"
    app: VersionedHuey
    if kind == "sqlite":
        app = VersionedSqliteHuey(name, filename=str(tmp_path / "q.db"), legacy_pickle=True)
    else:
        require_redis()
        app = VersionedPriorityRedisHuey(name, url=REDIS_URL, blocking=False, legacy_pickle=True)
    try:
        legacy = legacy_huey(app)
        old = declare_legacy(legacy)
        declare_new(app, Recorder())
        for priority in (1, 5, 3):
            legacy.enqueue(old.add.s(priority, 0, priority=priority))

        result = invoke(runner, "migrate-queue", "--app", as_module(app))

        assert result.exit_code == 0, result.output
        assert all(raw.startswith(MAGIC) for raw in stored(app))
        assert drain(app) == [5, 3, 1]
    finally:
        app.storage.flush_all()


def test_migrate_queue_on_a_live_queue_loses_nothing(
    make_huey: MakeHuey, runner: CliRunner, as_module: Callable[[VersionedHuey], str]
) -> None:
    """Producers enqueue and a consumer runs while the migration rewrites the queue:
    every message runs exactly once and none is dead-lettered."""
    app = make_huey(legacy_pickle=True)
    ran = Recorder()
    new = declare_new(app, ran)
    old = declare_legacy(legacy_huey(app))
    legacy_count = 300
    for n in range(legacy_count):
        old.add(n, 0)
    stop = threading.Event()
    produced: list[int] = []

    def produce() -> None:
        n = 0
        while not stop.is_set() or n < 20:
            new.add(1000 + n, 0)
            produced.append(n)
            n += 1

    producer = threading.Thread(target=produce)
    with running_consumer(app):
        producer.start()
        try:
            result = invoke(runner, "migrate-queue", "--app", as_module(app))
        finally:
            stop.set()
            producer.join()
        wait_for(lambda: len(ran) == legacy_count + len(produced), timeout=60)

    assert result.exit_code == 0, result.output
    assert sorted(call[1] for call in ran.calls) == sorted(
        [*range(legacy_count), *(1000 + n for n in produced)]
    )
    assert len(app.dead_letters) == 0
    assert stored(app) == []


# -- the in-place swap on a Redis list, with workers and producers in between ------------


def test_the_redis_list_swap_finds_each_message_after_pops_and_pushes() -> None:
    """Producers push at the head and workers pop at the tail between the snapshot and
    the swap: each message is still replaced where it is, or reported gone."""
    require_redis()
    from huey.storage import RedisStorage

    storage = RedisStorage(f"vt_test_{uuid.uuid4().hex[:12]}", url=REDIS_URL, blocking=False)
    try:
        for n in range(8):
            storage.enqueue(b"old%d" % n)
        area = _RedisList(storage)
        snapshot = area.items()
        assert [raw for _, raw in snapshot] == [b"old%d" % n for n in range(8)]
        assert storage.dequeue() == b"old0"  # a worker takes the oldest
        assert storage.dequeue() == b"old1"
        storage.enqueue(b"fresh")  # a producer adds one
        ops = [
            _Op(handle, raw, None if raw == b"old4" else b"new" + raw[3:], None)
            for handle, raw in snapshot
        ]

        done = area.swap(ops[:3]) + area.swap(ops[3:])

        assert done == [False, False, True, True, True, True, True, True]
        assert storage.enqueued_items() == [
            b"new2",
            b"new3",
            b"new5",
            b"new6",
            b"new7",
            b"fresh",
        ]
    finally:
        storage.flush_all()
