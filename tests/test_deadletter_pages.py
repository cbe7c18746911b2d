"""Pages, filters, counts and filtered purges of the dead-letter store, on every backend.

The store may hold millions of entries: these methods page and count without
reading it whole (SQL in the database, the others by a bounded metadata scan).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import pytest

from versioned_tasks import DeadLetterNotFound, ReplayFailed, VersionedHuey

MakeHuey = Callable[..., VersionedHuey]

TASKS = ["billing.refund", "billing.invoice", "mail.send"]


def fill(app: VersionedHuey, n: int) -> list[str]:
    """``n`` entries, oldest first: reasons and tasks cycle; returns their ids."""
    ids = []
    reasons = ["unknown_task", "invalid_payload", "retired"]
    for i in range(n):
        entry = app.dead_letters.add(
            reason=reasons[i % 3],  # type: ignore[arg-type]
            raw=f"message {i} <script>".encode(),
            error=f"error {i}",
            task=TASKS[i % 3],
            version=1 + i % 2,
        )
        ids.append(entry.id)
    return ids


def test_pages_walk_every_entry_newest_first_by_cursor(make_huey: MakeHuey) -> None:
    """Pages joined by their cursors give every entry once, newest first."""
    app = make_huey()
    ids = fill(app, 7)
    seen, cursor = [], None
    while True:
        page = app.dead_letters.page(limit=3, cursor=cursor)
        seen += [entry.id for entry in page.entries]
        assert page.exhaustive
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_an_offset_page_skips_the_newest(make_huey: MakeHuey) -> None:
    """``offset`` jumps into the store (a deep page) without a cursor."""
    app = make_huey()
    ids = fill(app, 6)
    page = app.dead_letters.page(limit=2, offset=3)
    assert [entry.id for entry in page.entries] == ids[::-1][3:5]
    assert page.next_cursor is not None


def test_a_filtered_page_holds_only_matching_entries(make_huey: MakeHuey) -> None:
    """Reason, task and version filters combine; the cursor continues the filter."""
    app = make_huey()
    ids = fill(app, 12)
    expected = [ids[i] for i in range(12) if i % 3 == 0 and 1 + i % 2 == 1][::-1]
    page = app.dead_letters.page(limit=1, task="billing.refund", version=1)
    got = [entry.id for entry in page.entries]
    while page.next_cursor is not None:
        page = app.dead_letters.page(
            limit=1, task="billing.refund", version=1, cursor=page.next_cursor
        )
        got += [entry.id for entry in page.entries]
    assert got == expected
    by_reason = app.dead_letters.page(limit=50, reason="retired")
    assert {e.reason for e in by_reason.entries} == {"retired"}
    assert len(by_reason.entries) == 4


def test_a_filter_by_age_keeps_older_entries(make_huey: MakeHuey) -> None:
    """``before`` selects entries created before a time."""
    app = make_huey()
    old = fill(app, 2)
    time.sleep(0.05)
    cut = datetime.datetime.now(datetime.UTC)
    time.sleep(0.05)
    fill(app, 2)
    page = app.dead_letters.page(before=cut)
    assert [entry.id for entry in page.entries] == old[::-1]
    assert app.dead_letters.count(before=cut) == 2


def test_counts_by_reason_and_task(make_huey: MakeHuey) -> None:
    """Counts by reason and by (task, version) cover the whole store."""
    app = make_huey()
    fill(app, 9)
    counts = app.dead_letters.counts()
    assert counts.total == counts.counted == 9
    assert counts.exhaustive
    assert counts.by_reason == {"unknown_task": 3, "invalid_payload": 3, "retired": 3}
    assert sum(counts.by_task.values()) == 9
    assert counts.by_task[("billing.refund", 1)] == 2
    assert counts.by_task[("billing.refund", 2)] == 1


def test_filtered_purge_removes_only_matches(make_huey: MakeHuey) -> None:
    """purge_matching removes what the filter selects and says how many."""
    app = make_huey()
    fill(app, 9)
    assert app.dead_letters.count(reason="retired") == 3
    assert app.dead_letters.purge_matching(reason="retired") == 3
    assert len(app.dead_letters) == 6
    assert {e.reason for e in app.dead_letters} == {"unknown_task", "invalid_payload"}
    assert app.dead_letters.purge_matching(task="billing.refund", version=2) == 1
    assert app.dead_letters.purge_matching() == 5
    assert len(app.dead_letters) == 0


def test_replay_as_enqueues_other_bytes_and_removes_the_entry(make_huey: MakeHuey) -> None:
    """replay_as runs edited bytes through today's pipeline; the entry goes once queued."""
    app = make_huey()

    @app.versioned_task(version=1, name="billing.refund")
    def refund(order_id: int) -> int:
        return order_id

    bad = app.dead_letters.add(reason="invalid_payload", raw=b"junk", error="bad")
    good = app.serialize_task(refund.s(7))
    with pytest.raises(ReplayFailed):
        app.dead_letters.replay_as(bad.id, b"still junk")
    assert app.dead_letters.get(bad.id).raw == b"junk"  # untouched
    app.dead_letters.replay_as(bad.id, good)
    with pytest.raises(DeadLetterNotFound):
        app.dead_letters.get(bad.id)
    task = app.dequeue()
    assert task is not None
    assert task.kwargs == {"order_id": 7}


@pytest.mark.parametrize("backend", ["redis", "memory", "file"], indirect=True)
def test_a_scanning_backend_stops_at_its_scan_limit_and_says_so(
    make_huey: MakeHuey, backend: str
) -> None:
    """Where a filter is a scan, the page stops after scan_limit entries, not exhaustive,
    and its cursor resumes the scan. Counts stop there too, except on Redis, which
    reads the counts it keeps: exact whatever the limit."""
    app = make_huey()
    ids = fill(app, 10)
    page = app.dead_letters.page(task="no.such", scan_limit=4)
    assert page.entries == []
    assert page.scanned == 4
    assert not page.exhaustive
    assert page.next_cursor is not None
    counts = app.dead_letters.counts(scan_limit=4)
    assert counts.total == 10
    if backend == "redis":
        assert (counts.counted, counts.exhaustive) == (10, True)
        assert counts.by_reason == {"unknown_task": 4, "invalid_payload": 3, "retired": 3}
    else:
        assert (counts.counted, counts.exhaustive) == (4, False)
    oldest = app.dead_letters.page(task="billing.refund", scan_limit=100, offset=3)
    assert [e.id for e in oldest.entries] == [ids[0]]


def test_odd_metadata_is_counted_and_filtered_like_any_other(make_huey: MakeHuey) -> None:
    """Entries without a task or version, and task names with quotes, backslashes or
    non-ASCII letters, are counted and found by their filters."""
    app = make_huey()
    odd = ['a"b', "c\\d", "tâche.envoyer"]
    for name in odd:
        app.dead_letters.add(reason="unknown_task", raw=b"x", error="e", task=name, version=3)
    app.dead_letters.add(reason="undecodable", raw=b"y", error="e")
    counts = app.dead_letters.counts()
    assert counts.by_reason == {"unknown_task": 3, "undecodable": 1}
    assert counts.by_task[(None, None)] == 1
    for name in odd:
        assert counts.by_task[(name, 3)] == 1
        [entry] = app.dead_letters.page(task=name, version=3).entries
        assert entry.task == name
    old = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
    assert app.dead_letters.count(reason="undecodable", before=old) == 1
