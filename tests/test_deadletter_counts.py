"""Counts by reason, task and version stay exact through every write.

Redis keeps them beside the entries, updated by the same script as each write;
SQL counts with a ``group by``. Either way ``counts()`` must equal what a full
read of the store gives, after adds, replays, failed replays (a new reason),
edits, deletes, filtered purges and purges; on Redis also for a store written
before the counts existed (rebuilt at its first count), for writes made while
a rebuild is under way, and for writes of an older release that keeps no counts.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from helpers import REDIS_URL, examples, flush_redis_name, require_redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from versioned_tasks import (
    DeadLetterNotFound,
    ReplayFailed,
    VersionedHuey,
    VersionedRedisHuey,
    take_census,
)
from versioned_tasks.storage.deadletters import _pack, new_entry

MakeHuey = Callable[..., VersionedHuey]

REASONS = ["unknown_task", "invalid_payload", "retired", "upcast_failed"]
TASKS: list[str | None] = ["billing.refund", "mail.send", 'odd "name\\', None]


def scanned(app: VersionedHuey) -> tuple[Counter[str], Counter[tuple[str | None, int | None]]]:
    """Counts by reason and by task and version from reading every entry."""
    entries = list(app.dead_letters)
    return (
        Counter(entry.reason for entry in entries),
        Counter((entry.task, entry.version) for entry in entries),
    )


def assert_exact(app: VersionedHuey) -> None:
    by_reason, by_task = scanned(app)
    counts = app.dead_letters.counts()
    assert counts.by_reason == dict(by_reason)
    assert counts.by_task == dict(by_task)
    assert counts.total == counts.counted == len(app.dead_letters) == sum(by_reason.values())
    assert counts.exhaustive
    for reason in REASONS:
        assert app.dead_letters.count(reason=reason) == by_reason[reason]
    for (task, version), n in by_task.items():
        if task is not None:
            assert app.dead_letters.count(task=task, version=version) == n
    census = Counter()
    for row in take_census(app).rows:
        if row["where"] == "dead_letters":
            census[row["task"], row["version"]] += row["count"]
    assert census == by_task


def declare(app: VersionedHuey) -> bytes:
    """Declares the task replays run as; returns a message that can run."""

    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id

    return app.serialize_task(refund.s(7))


def add(app: VersionedHuey, i: int, *, raw: bytes | None = None) -> str:
    entry = app.dead_letters.add(
        reason=REASONS[i % len(REASONS)],  # type: ignore[arg-type]
        raw=raw if raw is not None else f"junk {i}".encode(),
        error=f"error {i}",
        task=TASKS[i % len(TASKS)],
        version=None if TASKS[i % len(TASKS)] is None else 1 + i % 3,
    )
    return entry.id


@pytest.mark.parametrize("backend", ["redis", "sqlite", "memory"], indirect=True)
def test_counts_stay_exact_through_every_kind_of_write(make_huey: MakeHuey) -> None:
    app = make_huey()
    good = declare(app)
    ids = [add(app, i) for i in range(24)]
    assert_exact(app)
    replayable = add(app, 100, raw=good)
    app.dead_letters.replay(replayable)  # removed and queued
    assert_exact(app)
    with pytest.raises(ReplayFailed):
        app.dead_letters.replay(ids[1])  # junk: kept under a new reason
    assert app.dead_letters.get(ids[1]).reason == "undecodable"
    assert_exact(app)
    app.dead_letters.replay_as(ids[2], good)  # an edit, then replayed
    assert_exact(app)
    assert app.dead_letters.delete(ids[3]) is True
    assert app.dead_letters.delete(ids[3]) is False
    with pytest.raises(DeadLetterNotFound):
        app.dead_letters.replay(ids[3])
    assert_exact(app)
    assert app.dead_letters.purge_matching(reason="retired") > 0
    assert_exact(app)
    assert app.dead_letters.purge_matching(task="mail.send", version=2) > 0
    assert_exact(app)
    app.dead_letters.purge()
    assert_exact(app)
    add(app, 5)
    assert_exact(app)


# -- Redis: the counts it keeps ------------------------------------------------------------


def redis_app(name: str) -> VersionedRedisHuey:
    require_redis()
    return VersionedRedisHuey(name, url=REDIS_URL, blocking=False, fleet=False)


def counts_keys(app: VersionedHuey) -> list[str]:
    base = f"huey.deadletters.{app.storage.name}"
    return [f"{base}.counts", f"{base}.counts.state"]


def drop_counts(app: VersionedHuey) -> None:
    """Make the store look like one written before the counts existed."""
    app.storage.conn.delete(*counts_keys(app))


def old_release_add(app: VersionedHuey, i: int) -> None:
    """An entry written the way a release without counts writes it."""
    entry = new_entry("retired", f"old {i}".encode(), "e", "billing.refund", 1)
    base = f"huey.deadletters.{app.storage.name}"
    conn = app.storage.conn
    conn.hset(base, entry.id, _pack(entry))
    conn.zadd(f"{base}.index", {entry.id: conn.incr(f"{base}.seq")})


def kept(app: VersionedHuey) -> Counter[tuple[str, str | None, int | None]] | None:
    """The counts as Redis keeps them (None while they are not complete), read as
    they are, without the catching up a count does."""
    conn = app.storage.conn
    counts_key, state_key = counts_keys(app)
    state = conn.hgetall(state_key)
    if state.get(b"format") != b"1" or b"cursor" in state:
        return None
    out: Counter[tuple[str, str | None, int | None]] = Counter()
    for field, value in conn.hgetall(counts_key).items():
        reason, task, version = field.decode().split("\0")
        out[reason, task or None, int(version) if version else None] = int(value)
    return out


def by_group(app: VersionedHuey) -> Counter[tuple[str, str | None, int | None]]:
    return Counter((e.reason, e.task, e.version) for e in app.dead_letters)


def rebuild_step(app: VersionedHuey, size: int) -> bool:
    """One step of a rebuild of the counts (what a first count runs until done)."""
    backend: Any = app.dead_letters._backend
    done, _ = backend._rebuild(keys=backend._count_keys, args=[size, "0"])
    return bool(done)


@pytest.fixture
def redis_name() -> Any:
    name = f"vt_test_counts_{uuid.uuid4().hex[:12]}"
    yield name
    flush_redis_name(name)


def test_a_store_written_before_the_counts_is_counted_at_its_first_count(
    redis_name: str,
) -> None:
    app = redis_app(redis_name)
    for i in range(30):
        add(app, i)
    drop_counts(app)
    conn = app.storage.conn
    assert conn.exists(*counts_keys(app)) == 0
    assert_exact(app)  # rebuilt on the way
    assert conn.hget(counts_keys(app)[1], "format") == b"1"
    assert conn.hget(counts_keys(app)[1], "cursor") is None
    assert app.dead_letters.recount() == 30
    assert_exact(app)


def test_writes_during_a_rebuild_are_counted_exactly(redis_name: str) -> None:
    """The rebuild stopped part way: writes to entries it has passed and to entries
    it has not reached yet are both counted once."""
    app = redis_app(redis_name)
    good = declare(app)
    ids = [add(app, i) for i in range(20)]
    drop_counts(app)
    add(app, 50)  # a write while no counts are kept counts nothing
    assert not rebuild_step(app, 8)  # the oldest 8 counted
    for id in (ids[0], ids[15]):  # one passed, one not reached
        with pytest.raises(ReplayFailed):
            app.dead_letters.replay(id)
    app.dead_letters.delete(ids[1])
    app.dead_letters.delete(ids[16])
    app.dead_letters.replay_as(ids[2], good)
    app.dead_letters.replay_as(ids[17], good)
    add(app, 51)
    app.dead_letters.purge_matching(reason="retired")
    assert not rebuild_step(app, 4)
    add(app, 52)
    assert_exact(app)  # finishes the rebuild


def test_writes_of_a_release_that_keeps_no_counts_are_caught_up(redis_name: str) -> None:
    """An older release in the fleet adds or removes entries without counting them:
    the next count sees its sum off the number of entries and rebuilds."""
    app = redis_app(redis_name)
    ids = [add(app, i) for i in range(10)]
    assert_exact(app)
    old_release_add(app, 1)
    old_release_add(app, 2)
    assert_exact(app)
    conn = app.storage.conn
    base = f"huey.deadletters.{app.storage.name}"
    conn.hdel(base, ids[0])  # an older release's delete
    conn.zrem(f"{base}.index", ids[0])
    assert_exact(app)


def test_a_store_never_used_is_not_created_by_counting(redis_name: str) -> None:
    app = redis_app(redis_name)
    assert app.dead_letters.counts().total == 0
    assert take_census(app).total("dead_letters") == 0
    assert list(app.storage.conn.scan_iter(match=f"*{redis_name}*")) == []


OPERATIONS = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("edit"), st.integers(0, 50)),
    st.tuples(st.just("purge_reason"), st.integers(0, len(REASONS) - 1)),
    st.tuples(st.just("purge_task"), st.integers(0, len(TASKS) - 1)),
    st.tuples(st.just("purge"), st.just(0)),
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("step"), st.integers(1, 12)),
    st.tuples(st.just("old_add"), st.integers(0, 50)),
    st.tuples(st.just("check"), st.just(0)),
)


def apply(app: VersionedHuey, good: bytes, op: str, n: int) -> None:
    """One operation of a random sequence, on the ``n``-th entry (mod) oldest first."""
    store = app.dead_letters
    live = [entry.id for entry in store.list()][::-1]
    pick = live[n % len(live)] if live else "none"
    if op == "add":
        add(app, n, raw=good if n % 4 == 0 else None)
    elif op == "delete":
        store.delete(pick)
    elif op in ("replay", "edit") and live:
        with contextlib.suppress(ReplayFailed):  # kept under its new reason
            store.replay_as(pick, good) if op == "edit" else store.replay(pick)
    elif op == "purge_reason":
        store.purge_matching(reason=REASONS[n])
    elif op == "purge_task" and TASKS[n] is not None:
        store.purge_matching(task=TASKS[n])
    elif op == "purge":
        store.purge()
    elif op == "drop":
        drop_counts(app)
    elif op == "step":
        rebuild_step(app, n)
    elif op == "old_add":
        old_release_add(app, n)
    elif op == "check":
        assert_exact(app)


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(OPERATIONS, max_size=40))
@example([("add", i) for i in range(6)] + [("drop", 0), ("step", 3), ("add", 7), ("step", 12)])
def test_counts_match_a_full_read_after_any_sequence_of_writes(
    operations: list[tuple[str, int]],
) -> None:
    """Random writes, with counts dropped (a store from before them), rebuilds
    stopped part way and an older release's writes mixed in: a count always
    equals a full read, and complete counts equal it by themselves, before any
    catching up (unless an older release wrote since the last count)."""
    name = f"vt_test_counts_{uuid.uuid4().hex[:12]}"
    try:
        app = redis_app(name)
        good = declare(app)
        behind = False
        for op, n in operations:
            apply(app, good, op, n)
            if op in ("old_add", "check"):
                behind = op == "old_add" and kept(app) is not None
            counts = kept(app)
            if counts is not None and not behind:
                assert counts == by_group(app), (op, n)
        assert_exact(app)
    finally:
        flush_redis_name(name)
