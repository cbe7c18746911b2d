"""The library's Huey signals: one per dead letter, upcast, rename, retirement and
replay, sent through Huey's own mechanism, on every storage, by a real consumer."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import MakeHuey, Recorder
from observability_support import (
    HANDLED,
    NEW_NAME,
    OLD_NAME,
    UNHANDLED,
    declare_new,
    declare_old,
    run_migration,
    write_old_messages,
)

from versioned_tasks import (
    SIGNAL_DEAD_LETTERED,
    SIGNAL_DEFERRED,
    SIGNAL_RENAMED,
    SIGNAL_REPLAYED,
    SIGNAL_RETIRED,
    SIGNAL_UPCAST,
    DeadLetteredMessage,
    RenamedMessage,
    ReplayedMessage,
    ReplayFailed,
    TombstonedMessage,
    UpcastMessage,
    VersionedHuey,
)

OURS = {
    SIGNAL_DEAD_LETTERED,
    SIGNAL_UPCAST,
    SIGNAL_RENAMED,
    SIGNAL_RETIRED,
    SIGNAL_REPLAYED,
    SIGNAL_DEFERRED,
}


class Signals:
    """Thread-safe record of the library's signals a catch-all receiver saw."""

    def __init__(self, app: VersionedHuey) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, Any]] = []

        @app.signal()
        def every(signal: str, message: Any, *args: Any, **kwargs: Any) -> None:
            if signal in OURS:
                with self._lock:
                    self.seen.append((signal, message))

    def of(self, signal: str) -> list[Any]:
        with self._lock:
            return [message for name, message in self.seen if name == signal]


def test_the_signal_names_are_distinct_huey_signal_strings() -> None:
    """Each signal is a plain string that no Huey signal uses."""
    from huey import signals as huey_signals

    huey_names = {value for key, value in vars(huey_signals).items() if key.startswith("SIGNAL_")}
    assert len(OURS) == 6
    assert all(isinstance(name, str) for name in OURS)
    assert not OURS & huey_names


def test_a_catch_all_receiver_sees_every_step_of_a_migration(make_huey: MakeHuey) -> None:
    """Through a real consumer: the renamed, upcast message, both retired messages
    and both dead letters each send their signal exactly once."""
    sent = write_old_messages(make_huey())
    new = declare_new(make_huey())
    signals = Signals(new.app)
    run_migration(new)

    assert new.ran.calls == [(7, "EUR")]
    assert signals.of(SIGNAL_RENAMED) == [RenamedMessage(OLD_NAME, NEW_NAME, 1, sent.bill)]
    assert signals.of(SIGNAL_UPCAST) == [UpcastMessage(NEW_NAME, 1, 2, sent.bill)]

    retired = sorted(signals.of(SIGNAL_RETIRED), key=lambda m: m.task)
    assert retired == [
        TombstonedMessage(HANDLED, 1, sent.export, HANDLED, handled=True),
        TombstonedMessage(UNHANDLED, 1, sent.legacy, UNHANDLED, handled=False),
    ]

    dead = signals.of(SIGNAL_DEAD_LETTERED)
    entries = {entry.id: entry for entry in new.app.dead_letters}
    assert sorted(m.entry_id for m in dead) == sorted(entries)  # one signal per entry
    by_reason = {m.reason: m for m in dead}
    assert set(by_reason) == {"undecodable", "retired"}
    assert by_reason["undecodable"].task is None
    assert by_reason["retired"] == DeadLetteredMessage(
        "retired",
        UNHANDLED,
        1,
        sent.legacy,
        entries[by_reason["retired"].entry_id].error,
        by_reason["retired"].entry_id,
    )
    for message in dead:
        assert message.error == entries[message.entry_id].error
        assert message.name == message.task


def test_a_receiver_that_raises_changes_nothing_for_the_messages(make_huey: MakeHuey) -> None:
    """Receivers of every new signal raise: the task still runs, the handler still
    runs, the dead letters are still stored, and the other receivers still hear."""
    write_old_messages(make_huey())
    new = declare_new(make_huey())
    failures = Recorder()

    @new.app.signal(
        SIGNAL_DEAD_LETTERED, SIGNAL_UPCAST, SIGNAL_RENAMED, SIGNAL_RETIRED, SIGNAL_REPLAYED
    )
    def broken(signal: str, message: Any) -> None:
        failures(signal)
        raise RuntimeError(f"receiver of {signal} is broken")

    signals = Signals(new.app)
    run_migration(new)

    assert new.ran.calls == [(7, "EUR")]
    assert len(new.handled) == 1
    assert {entry.reason for entry in new.app.dead_letters} == {"undecodable", "retired"}
    assert sorted(call[0] for call in failures.calls) == sorted(name for name, _ in signals.seen)
    assert len(signals.of(SIGNAL_DEAD_LETTERED)) == 2


def test_a_replay_sends_replayed_and_a_failed_replay_dead_letters_again(
    make_huey: MakeHuey,
) -> None:
    """Replaying a dead letter once its task exists sends SIGNAL_REPLAYED with the
    entry id and the new task id; one that still fails sends SIGNAL_DEAD_LETTERED
    with the same entry id and the new reason."""
    send_bill = declare_old(make_huey())["send_bill"]
    before = make_huey()  # knows none of the old tasks
    signals = Signals(before)
    send_bill(3)
    assert before.dequeue() is None
    (entry,) = before.dead_letters
    assert entry.reason == "unknown_task"

    with pytest.raises(ReplayFailed):
        before.dead_letters.replay(entry.id)
    (again,) = signals.of(SIGNAL_DEAD_LETTERED)[1:]
    assert (again.entry_id, again.reason, again.task) == (entry.id, "unknown_task", OLD_NAME)

    today = declare_new(make_huey())
    replayed = Signals(today.app)
    result = today.app.dead_letters.replay(entry.id)
    (message,) = replayed.of(SIGNAL_REPLAYED)
    task = today.app.dequeue()
    assert task is not None
    assert message == ReplayedMessage(entry.id, OLD_NAME, 1, task.id)
    if result is not None:
        assert result.id == task.id
    # The replay upcast and renamed it: told once, by the replay.
    assert replayed.of(SIGNAL_UPCAST) == [UpcastMessage(NEW_NAME, 1, 2, task.id)]
    assert replayed.of(SIGNAL_RENAMED) == [RenamedMessage(OLD_NAME, NEW_NAME, 1, task.id)]
