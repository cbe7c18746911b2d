"""A dead-letter entry whose stored metadata cannot be read is listed as corrupt,
with its id and the bytes stored for it, and never breaks the store, the census
or the ``dlq`` commands.

Entries are corrupted in storage itself, where the docs say they live: the Redis
hash value, the SQL row's columns (SQLite keeps whatever a column is given;
PostgreSQL's types leave fewer ways), the entry's file, the MemoryStorage's dict.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import MakeHuey

from versioned_tasks import DeadLetter, ReplayFailed, VersionedHuey, take_census
from versioned_tasks.cli import main

_GOOD_META = b'{"reason":"unknown_task","task":"t","version":1,"error":"e","created_at":1.5}'

#: Stored values for backends that keep one metadata line, a newline, then the raw bytes.
PACKED = [
    ("not-json", b"{oops\nthe message", "its metadata is not JSON"),
    ("no-newline", b"no metadata line at all", "it has no metadata line"),
    ("not-an-object", b"[1, 2]\nthe message", "its metadata is not a JSON object"),
    ("missing-fields", b'{"reason": "unknown_task"}\nthe message', "its error None is not text"),
    (
        "version-as-text",
        _GOOD_META.replace(b'"version":1', b'"version":"1"') + b"\nthe message",
        "its version '1' is not an integer",
    ),
    (
        "unknown-reason",
        _GOOD_META.replace(b"unknown_task", b"lost_in_space") + b"\nthe message",
        "its reason 'lost_in_space' is not one of the dead-letter reasons",
    ),
    (
        "time-out-of-range",
        _GOOD_META.replace(b"1.5", b"1e300") + b"\nthe message",
        r"its created_at 1e\+300 is out of range",
    ),
]

#: SQL ``set`` clauses; None as the stored bytes means the entry's own raw bytes.
SQLITE = [
    ("version-as-text", "version = 'abc'", None, "its version 'abc' is not an integer"),
    ("time-as-text", "created_at = 'yesterday'", None, "its created_at 'yesterday' is not"),
    ("unknown-reason", "reason = 'lost'", None, "its reason 'lost' is not one of"),
    ("raw-as-text", "raw = 'text, not bytes'", b"text, not bytes", "its raw bytes are a str"),
    ("error-as-blob", "error = x'00ff'", None, r"its error b'\\x00\\xff' is not text"),
]
POSTGRES = [
    ("unknown-reason", "reason = 'lost'", None, "its reason 'lost' is not one of"),
    ("time-infinite", "created_at = 'Infinity'", None, "its created_at inf is not a Unix time"),
    ("time-nan", "created_at = 'NaN'", None, "its created_at nan is not a Unix time"),
]
MEMORY = [
    ("bytes", b"junk bytes", b"junk bytes", "it holds a bytes, not a DeadLetter"),
    ("dict", {"raw": 1}, b"{'raw': 1}", "it holds a dict, not a DeadLetter"),
]


@dataclass
class Corrupted:
    app: VersionedHuey
    good: DeadLetter
    stored: dict[str, bytes]  # corrupt entry id -> the bytes it should show as raw
    problems: dict[str, str]  # corrupt entry id -> what its error should say


def _redis(app: VersionedHuey, entry: DeadLetter, value: Any) -> None:
    app.storage.conn.hset(f"huey.deadletters.{app.storage.name}", entry.id, value)


def _file(app: VersionedHuey, entry: DeadLetter, value: Any) -> None:
    directory = os.path.join(app.storage.path, "deadletters")
    [name] = [n for n in os.listdir(directory) if n.endswith(f"-{entry.id}")]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(value)


def _sql(app: VersionedHuey, entry: DeadLetter, clause: Any) -> None:
    if app.storage.__class__.__name__.startswith("Sqlite"):
        query = f"update vt_dead_letters set {clause} where id = ?"
    else:
        query = f"update huey_vt_dead_letters set {clause} where id = %s"
    app.storage.sql(query, (entry.id,), commit=True)


def _memory(app: VersionedHuey, entry: DeadLetter, value: Any) -> None:
    entries, lock = app.storage._vt_dead_letters
    with lock:
        entries[entry.id] = value


Corruptor = Callable[[VersionedHuey, DeadLetter, Any], None]
CASES: dict[str, tuple[Corruptor, list[tuple[str, Any, bytes | None, str]]]] = {
    "redis": (_redis, [(label, value, value, problem) for label, value, problem in PACKED]),
    "file": (_file, [(label, value, value, problem) for label, value, problem in PACKED]),
    "sqlite": (_sql, SQLITE),
    "postgres": (_sql, POSTGRES),
    "memory": (_memory, MEMORY),
}


@pytest.fixture
def corrupted(make_huey: MakeHuey, backend: str) -> Corrupted:
    """One good entry (written first) and one corrupt entry per way this backend
    can be corrupted."""
    app = make_huey()
    store = app.dead_letters
    good = store.add(reason="unknown_task", raw=b"good", error="fine", task="t", version=1)
    corrupt, cases = CASES[backend]
    stored, problems = {}, {}
    for label, value, expected, problem in cases:
        entry = store.add(reason="undecodable", raw=f"raw of {label}".encode(), error="x")
        corrupt(app, entry, value)
        stored[entry.id] = entry.raw if expected is None else expected
        problems[entry.id] = problem
    return Corrupted(app, good, stored, problems)


def test_corrupt_entries_are_counted_iterated_and_listed_with_their_stored_bytes(
    corrupted: Corrupted,
) -> None:
    store = corrupted.app.dead_letters
    entries = list(store)

    assert len(store) == len(entries) == len(corrupted.stored) + 1
    assert entries[-1] == corrupted.good
    assert store.list() == entries
    assert store.list(limit=2) == entries[:2]
    for entry in entries[:-1]:
        assert entry.corrupt
        assert (entry.reason, entry.task, entry.version) == ("undecodable", None, None)
        assert entry.raw == corrupted.stored[entry.id]
        assert re.search(corrupted.problems[entry.id], entry.error), entry.error
        assert entry.error.startswith("The stored dead-letter entry is corrupt: ")
        assert "then delete the entry" in entry.error
        assert entry.created_at.tzinfo is not None
        assert repr(entry).endswith(" corrupt>")
    assert not corrupted.good.corrupt


def test_get_returns_a_corrupt_entry_under_its_id(corrupted: Corrupted) -> None:
    store = corrupted.app.dead_letters
    for entry_id, stored in corrupted.stored.items():
        entry = store.get(entry_id)
        assert (entry.id, entry.corrupt, entry.raw) == (entry_id, True, stored)


def test_replaying_a_corrupt_entry_raises_replay_failed_and_keeps_it(
    corrupted: Corrupted,
) -> None:
    store = corrupted.app.dead_letters
    for entry_id in corrupted.stored:
        before = store.get(entry_id)
        with pytest.raises(ReplayFailed, match="The stored dead-letter entry is corrupt") as info:
            store.replay(entry_id)
        assert (info.value.id, info.value.reason) == (entry_id, "undecodable")
        assert store.get(entry_id) == before
    assert corrupted.app.pending_count() == 0


def test_deleting_a_corrupt_entry_removes_it(corrupted: Corrupted) -> None:
    store = corrupted.app.dead_letters
    for entry_id in corrupted.stored:
        assert store.delete(entry_id) is True
    assert list(store) == [corrupted.good]


def test_a_census_counts_corrupt_entries_too(corrupted: Corrupted) -> None:
    """The census reads what it can of each entry's metadata (never the bytes),
    so a corrupt entry counts under whatever task it still names, or none."""
    rows = [row for row in take_census(corrupted.app).rows if row["where"] == "dead_letters"]
    assert sum(row["count"] for row in rows) == len(corrupted.stored) + 1
    assert all(row["task"] is None or isinstance(row["task"], str) for row in rows)
    assert all(row["version"] is None or isinstance(row["version"], int) for row in rows)


# -- the dlq commands ---------------------------------------------------------------


@pytest.fixture
def app_path(corrupted: Corrupted, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable ``module:huey`` path to the corrupted app, for the CLI."""
    name = f"vt_corrupt_app_{uuid.uuid4().hex[:12]}"
    module = types.ModuleType(name)
    module.huey = corrupted.app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)
    return f"{name}:huey"


def test_dlq_list_shows_corrupt_entries_with_their_ids(
    corrupted: Corrupted, app_path: str
) -> None:
    result = CliRunner().invoke(main, ["dlq", "list", "--app", app_path])
    assert result.exit_code == 0, result.output
    assert result.output.count("(corrupt entry)") == len(corrupted.stored)
    for entry_id in corrupted.stored:
        assert entry_id in result.output

    as_json = CliRunner().invoke(main, ["dlq", "list", "--json", "--app", app_path])
    assert as_json.exit_code == 0, as_json.output
    flags = {row["id"]: row["corrupt"] for row in json.loads(as_json.output)}
    assert flags == {**dict.fromkeys(corrupted.stored, True), corrupted.good.id: False}


def test_dlq_show_prints_a_corrupt_entry_and_its_stored_bytes(
    corrupted: Corrupted, app_path: str
) -> None:
    for entry_id, stored in corrupted.stored.items():
        shown = CliRunner().invoke(main, ["dlq", "show", entry_id, "--app", app_path])
        assert shown.exit_code == 0, shown.output
        assert "The stored dead-letter entry is corrupt" in shown.output
        assert "would fail: the stored entry is corrupt" in shown.output

        data = CliRunner().invoke(main, ["dlq", "show", entry_id, "--json", "--app", app_path])
        assert data.exit_code == 0, data.output
        assert base64.b64decode(json.loads(data.output)["raw_base64"]) == stored


def test_dlq_replay_of_a_corrupt_entry_exits_1_and_keeps_it(
    corrupted: Corrupted, app_path: str
) -> None:
    entry_id = next(iter(corrupted.stored))
    result = CliRunner().invoke(main, ["dlq", "replay", entry_id, "--app", app_path])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{entry_id} (corrupt entry): failed again (undecodable)" in result.output
    assert corrupted.app.dead_letters.get(entry_id).corrupt

    everything = CliRunner().invoke(main, ["dlq", "replay", "--all", "--app", app_path])
    assert everything.exit_code == 1, everything.output
    total = len(corrupted.stored) + 1
    assert f"Replayed 0 of {total}; {total} still fail and were kept." in everything.output
