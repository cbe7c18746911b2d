"""The schema as a whole: upcaster chains, renames and tombstones checked at start-up."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from helpers import MakeHuey, examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, create_model
from strategies import Step, chains

from versioned_tasks import (
    SchemaError,
    SchemaWarning,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedTaskWrapper,
)

Setup = Callable[[VersionedHuey], None]


def declare(huey: VersionedHuey, name: str, version: int) -> VersionedTaskWrapper:
    """Declare a task ``name`` at ``version`` that takes one int ``n``."""

    def job(n: int) -> int:
        return n

    job.__name__ = name.replace(".", "_")
    return huey.versioned_task(version=version, name=name)(job)


def step(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


# -- each problem, its message --------------------------------------------------------


def gap(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 4)
    huey.upcaster("billing.refund", from_version=1)(step)
    huey.upcaster("billing.refund", from_version=3)(step)


def past_current(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 2)
    huey.upcaster("billing.refund", from_version=1)(step)
    huey.upcaster("billing.refund", from_version=2)(step)


def undeclared_upcaster(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 2)
    huey.upcaster("billing.ghost", from_version=1)(step)


def rename_to_undeclared(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 1)
    huey.rename("billing.old_refund", "billing.nowhere")


def rename_cycle(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 1)
    huey.rename("billing.a", "billing.b")
    huey.rename("billing.b", "billing.a")


def rename_from_declared(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 1)
    declare(huey, "billing.old_refund", 1)
    huey.rename("billing.old_refund", "billing.refund")


def tombstone_declared(huey: VersionedHuey) -> None:
    declare(huey, "billing.refund", 1)
    huey.tombstone("billing.refund")


PROBLEMS: dict[str, tuple[Setup, str, str]] = {
    "gap": (
        gap,
        "billing.refund",
        "Task 'billing.refund' has no upcaster from version 2 to 3 (the chain must reach "
        "the current version 4); register one with "
        "@huey.upcaster('billing.refund', from_version=2).",
    ),
    "past-current": (
        past_current,
        "billing.refund",
        "Task 'billing.refund': upcaster from version 2 to 3 goes past the current version "
        "2; raise the task's version to 3 or remove the upcaster.",
    ),
    "undeclared-upcaster": (
        undeclared_upcaster,
        "billing.ghost",
        "Upcasters for 'billing.ghost' (from versions [1]) name a task that is not "
        "declared; declare it with @huey.versioned_task(version=N, name='billing.ghost') "
        "or remove them.",
    ),
    "rename-to-undeclared": (
        rename_to_undeclared,
        "billing.old_refund",
        "rename('billing.old_refund', 'billing.nowhere'): 'billing.nowhere' is not a "
        "declared task; declare it, or tombstone it if it was retired.",
    ),
    "rename-cycle": (
        rename_cycle,
        "billing.a",
        "rename('billing.a', 'billing.b') is part of a rename cycle; break it.",
    ),
    "rename-from-declared": (
        rename_from_declared,
        "billing.old_refund",
        "rename('billing.old_refund', 'billing.refund'): 'billing.old_refund' is still "
        "declared as a task; remove that declaration or the rename.",
    ),
    "tombstone-declared": (
        tombstone_declared,
        "billing.refund",
        "tombstone('billing.refund'): the task is still declared; remove the declaration "
        "(the tombstone replaces it) or the tombstone.",
    ),
}


def check_schemas(huey: VersionedHuey) -> None:
    huey.check_schemas()


def create_consumer(huey: VersionedHuey) -> None:
    huey.create_consumer(workers=1, worker_type="thread")


def first_dequeue(huey: VersionedHuey) -> None:
    huey.dequeue()


def first_schedule_read(huey: VersionedHuey) -> None:
    huey.read_schedule()


ENTRY_POINTS = {
    "check_schemas": check_schemas,
    "create_consumer": create_consumer,
    "first_dequeue": first_dequeue,
    "first_schedule_read": first_schedule_read,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_schema_problems_raise_schema_error_at_start_up(problem: str, entry: str) -> None:
    """Each inconsistency raises SchemaError naming the task, versions and fix."""
    setup, task, message = PROBLEMS[problem]
    huey = VersionedMemoryHuey("schema")
    setup(huey)
    with pytest.raises(SchemaError, match=re.escape(message)) as info:
        ENTRY_POINTS[entry](huey)
    assert info.value.task == task


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_a_schema_problem_keeps_raising_until_fixed(problem: str) -> None:
    """A failed check is not forgotten: the second dequeue raises again."""
    setup, _, message = PROBLEMS[problem]
    huey = VersionedMemoryHuey("schema")
    setup(huey)
    for _ in range(2):
        with pytest.raises(SchemaError, match=re.escape(message)):
            huey.dequeue()


def test_the_error_lists_every_problem() -> None:
    """Several problems are reported together, one line each."""
    huey = VersionedMemoryHuey("schema")
    gap(huey)
    huey.rename("billing.x", "billing.y")
    huey.tombstone("billing.refund")
    with pytest.raises(SchemaError, match=r"^3 schema problem\(s\):\n- ") as info:
        huey.check_schemas()
    text = str(info.value)
    assert "no upcaster from version 2 to 3" in text
    assert "'billing.y' is not a declared task" in text
    assert "tombstone('billing.refund'): the task is still declared" in text
    # One sentence per problem, as the lines of the message (the Django system
    # check reports each as its own error).
    assert [f"- {problem}" for problem in info.value.problems] == text.splitlines()[1:]


def test_a_duplicate_upcaster_is_refused_when_registered() -> None:
    """Two steps from the same version are refused at registration."""
    huey = VersionedMemoryHuey("schema")
    declare(huey, "billing.refund", 3)

    @huey.upcaster("billing.refund", from_version=1)
    def first(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    with pytest.raises(
        SchemaError,
        match=re.escape("Task 'billing.refund' has two upcasters from version 1 to 2 ("),
    ) as info:

        @huey.upcaster("billing.refund", from_version=1)
        def second(payload: dict[str, Any]) -> dict[str, Any]:
            return payload

    assert info.value.task == "billing.refund"
    assert "first" in str(info.value)
    assert "second" in str(info.value)


@pytest.mark.parametrize("from_version", [0, -3, True, 1.5, "1"])
def test_an_upcaster_from_a_bad_version_is_refused(from_version: Any) -> None:
    """Upcasters start at version 1 and take integer versions."""
    huey = VersionedMemoryHuey("schema")
    with pytest.raises(SchemaError, match=re.escape("Upcaster for 'billing.refund'")):
        huey.upcaster("billing.refund", from_version=from_version)(step)


def test_a_task_renamed_twice_is_refused() -> None:
    """One old name cannot be renamed to two targets."""
    huey = VersionedMemoryHuey("schema")
    huey.rename("billing.old", "billing.a")
    with pytest.raises(SchemaError, match=re.escape("Task 'billing.old' is renamed twice")):
        huey.rename("billing.old", "billing.b")


def test_a_rename_to_itself_is_refused() -> None:
    """rename(x, x) is a mistake."""
    huey = VersionedMemoryHuey("schema")
    with pytest.raises(SchemaError, match="renames a task to itself"):
        huey.rename("billing.same", "billing.same")


def test_a_valid_setup_passes_every_check() -> None:
    """A contiguous chain, a rename chain to a declared task, a tombstone: all fine."""
    huey = VersionedMemoryHuey("schema")
    declare(huey, "billing.refund", 3)
    huey.upcaster("billing.refund", from_version=1)(step)
    huey.upcaster("billing.refund", from_version=2)(step)
    declare(huey, "billing.late_start", 5)
    huey.rename("billing.older", "billing.old")
    huey.rename("billing.old", "billing.refund")
    huey.rename("reports.renamed_then_retired", "reports.legacy")
    huey.tombstone("reports.legacy")

    @huey.task()
    def plain(x: int) -> int:
        return x

    huey.rename("legacy.plain_name", plain.task_class.__module__ + ".plain")
    huey.check_schemas()
    huey.create_consumer(workers=1, worker_type="thread")
    assert huey.dequeue() is None
    assert huey.read_schedule() == []


def test_a_problem_added_after_a_passing_check_is_caught() -> None:
    """Declarations after a successful check are checked again on the next dequeue."""
    huey = VersionedMemoryHuey("schema")
    declare(huey, "billing.refund", 2)
    huey.upcaster("billing.refund", from_version=1)(step)
    assert huey.dequeue() is None
    huey.upcaster("billing.refund", from_version=2)(step)
    with pytest.raises(SchemaError, match="goes past the current version 2"):
        huey.dequeue()


# -- a task that starts late ------------------------------------------------------------


def test_a_task_may_start_at_version_5_and_old_messages_fail_upcasting(
    make_huey: MakeHuey,
) -> None:
    """Version 5 with no steps is valid; a v1 message for it dead-letters as upcast_failed."""
    old = make_huey()
    declare(old, "billing.refund", 1)(n=1)
    (raw,) = (bytes(item) for item in old.storage.enqueued_items())

    new = make_huey()
    declare(new, "billing.refund", 5)
    new.check_schemas()
    assert new.dequeue() is None
    (entry,) = new.dead_letters
    assert (entry.reason, entry.task, entry.version) == ("upcast_failed", "billing.refund", 1)
    assert entry.raw == raw
    assert "from_version=1" in entry.error


def test_a_message_older_than_the_oldest_step_fails_upcasting(make_huey: MakeHuey) -> None:
    """Steps 3->4->5 exist; a v2 message has no way up and dead-letters as upcast_failed."""
    old = make_huey()
    declare(old, "billing.refund", 2)(n=1)

    new = make_huey()
    declare(new, "billing.refund", 5)
    for version in (3, 4):
        new.upcaster("billing.refund", from_version=version)(step)
    assert new.dequeue() is None
    (entry,) = new.dead_letters
    assert entry.reason == "upcast_failed"
    assert "upcasters start at version 3" in entry.error


# -- random upcaster chains ---------------------------------------------------------------


def make_step(kind: str, a: str, b: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    if kind == "add":
        return lambda payload: {**payload, a: b}
    return lambda payload: {(b if k == a else k): v for k, v in payload.items()}


def reference(payload: dict[str, Any], steps: list[Step]) -> dict[str, Any]:
    for kind, a, b in steps:
        payload = make_step(kind, a, b)(payload)
    return payload


def model_for(payload: dict[str, Any]) -> type[BaseModel]:
    fields: Any = {name: (type(value), ...) for name, value in payload.items()}
    return create_model("Args", **fields)


class Apps:
    """Apps at every version of one task, sharing one in-memory queue."""

    def __init__(self, start: dict[str, Any], steps: list[Step]) -> None:
        self.start = start
        self.steps = steps
        self.shared: Any = None
        self.seen: list[dict[str, Any]] = []

    def payload_at(self, version: int) -> dict[str, Any]:
        return reference(self.start, self.steps[: version - 1])

    def app(self, version: int, first_step: int = 1, skip: int | None = None) -> VersionedHuey:
        return self.declare(version, first_step, skip)[0]

    def declare(
        self, version: int, first_step: int = 1, skip: int | None = None
    ) -> tuple[VersionedHuey, VersionedTaskWrapper]:
        huey = VersionedMemoryHuey("chains")
        if self.shared is None:
            self.shared = huey.storage
        huey.storage = self.shared
        model = model_for(self.payload_at(version))

        def job(args: BaseModel) -> None:
            self.seen.append(args.model_dump())

        wrapper = huey.versioned_task(version=version, name="chain.job", args_model=model)(job)
        for number in range(first_step, version):
            if number != skip:
                kind, a, b = self.steps[number - 1]
                huey.upcaster("chain.job", from_version=number)(make_step(kind, a, b))
        return huey, wrapper

    def send(self, version: int, payload: dict[str, Any] | None = None) -> bytes:
        _, wrapper = self.declare(version)
        wrapper(**(self.payload_at(version) if payload is None else payload))
        return bytes(self.shared.enqueued_items()[-1])


CHAIN_SETTINGS = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@CHAIN_SETTINGS
@given(chain=chains(), data=st.data())
def test_a_chain_run_at_once_equals_the_steps_one_by_one(
    chain: tuple[dict[str, Any], list[Step]], data: st.DataObject
) -> None:
    """Upcasting v_k -> v_current in one worker equals deploying each step in turn."""
    start, steps = chain
    current = len(steps) + 1
    k = data.draw(st.integers(1, current), label="message version")

    at_once = Apps(start, steps)
    at_once.send(k)
    app = at_once.app(current)
    app.execute(app.dequeue())
    assert at_once.seen == [reference(start, steps)]

    one_by_one = Apps(start, steps)
    one_by_one.send(k)
    for version in range(k + 1, current + 1):
        app = one_by_one.app(version)
        task = app.dequeue()
        assert task is not None
        app.execute(task)
        payload = one_by_one.seen.pop()
        assert payload == reference(start, steps[: version - 1])
        # The next deploy receives what this one ran, as a fresh message.
        one_by_one.send(version, payload)
    final = one_by_one.app(current)
    final.execute(final.dequeue())
    assert one_by_one.seen == [reference(start, steps)]


@CHAIN_SETTINGS
@given(chain=chains(), data=st.data())
def test_a_missing_first_step_fails_upcasting(
    chain: tuple[dict[str, Any], list[Step]], data: st.DataObject
) -> None:
    """A chain that starts after the message's version dead-letters it as upcast_failed."""
    start, steps = chain
    current = len(steps) + 1
    first = data.draw(st.integers(2, current), label="oldest step")
    k = data.draw(st.integers(1, first - 1), label="message version")

    apps = Apps(start, steps)
    raw = apps.send(k)
    app = apps.app(current, first_step=first)
    assert app.dequeue() is None
    assert apps.seen == []
    (entry,) = app.dead_letters
    assert (entry.reason, entry.version, entry.raw) == ("upcast_failed", k, raw)


@CHAIN_SETTINGS
@given(chain=chains(), data=st.data())
def test_a_gap_in_a_random_chain_is_a_schema_error(
    chain: tuple[dict[str, Any], list[Step]], data: st.DataObject
) -> None:
    """Removing a middle step is refused on the first dequeue, before any message is read."""
    start, steps = chain
    current = len(steps) + 1
    assume(current >= 3)
    skip = data.draw(st.integers(2, current - 1), label="missing step")
    apps = Apps(start, steps)
    apps.send(1)
    app = apps.app(current, skip=skip)
    with pytest.raises(
        SchemaError, match=re.escape(f"has no upcaster from version {skip} to {skip + 1}")
    ):
        app.dequeue()
    assert app.pending_count() == 1


# -- hints for names that are almost right -------------------------------------------


def test_an_upcaster_for_an_undeclared_task_suggests_the_closest_name() -> None:
    huey = VersionedMemoryHuey("hints")

    @huey.versioned_task(version=2, name="mail.send_email")
    def send_email(to: str) -> None: ...

    @huey.upcaster("mail.send_emial", from_version=1)
    def step(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    huey.rename("mail.old_send", "mail.send_emal")
    with pytest.raises(SchemaError) as info:
        huey.check_schemas()
    text = str(info.value)
    assert "Upcasters for 'mail.send_emial'" in text
    assert "(did you mean 'mail.send_email'?)" in text
    assert "'mail.send_emal' is not a declared task (did you mean 'mail.send_email'?)" in text


def test_a_rename_or_tombstone_that_looks_like_a_typo_warns() -> None:
    huey = VersionedMemoryHuey("typos")

    @huey.versioned_task(version=1, name="mail.send_email")
    def send_email(to: str) -> None: ...

    @huey.versioned_task(version=1, name="mail.deliver")
    def deliver(to: str) -> None: ...

    # Meant rename("mail.send_email", ...): the declared task would never be redirected.
    huey.rename("mail.send_emails", "mail.deliver")
    huey.tombstone("mail.sendemail")
    with pytest.warns(SchemaWarning) as record:
        huey.check_schemas()
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert messages[0].startswith("rename('mail.send_emails', 'mail.deliver'): no task")
    assert "looks like a typo (did you mean 'mail.send_email'?)" in messages[0]
    assert messages[1].startswith("tombstone('mail.sendemail'): no task is declared")


def test_an_ordinary_rename_does_not_warn() -> None:
    """A rename from a versioned-looking old name to the task it became is not a typo."""
    huey = VersionedMemoryHuey("no_typos")

    @huey.versioned_task(version=1, name="mail.send_email")
    def send_email(to: str) -> None: ...

    huey.rename("mail.send_email_v1", "mail.send_email")
    huey.tombstone("reports.legacy_export")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huey.check_schemas()
