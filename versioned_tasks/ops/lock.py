"""The schema lock: a committed record of every versioned task's argument schema.

``versioned-tasks lock`` writes it (``build_lock`` + ``write_lock``) and
``versioned-tasks check`` compares an app against it (``read_lock`` +
``check_lock``), so that a changed task signature without a version bump, or a
version bump without an upcaster, fails in CI rather than in a worker.

The file is JSON with sorted keys, two-space indents and a trailing newline::

    {
      "lock_format": 1,
      "renames": {"old.name": "new.name"},
      "tasks": {
        "billing.send_invoice": {
          "allow_compatible_changes": false,
          "upcasters_from": [1],
          "version": 2,
          "versions": {
            "1": {"fingerprint": "sha256:...", "schema": {...}},
            "2": {"fingerprint": "sha256:...", "schema": {...}}
          }
        }
      },
      "tombstones": ["reports.legacy_export"]
    }

``versions`` keeps every version ever locked: a new lock refreshes the entry of
the current version and keeps the older ones as they were. The entry of a task
that was renamed away or tombstoned stays as it was last locked, since its
messages may still arrive: ``check`` compares it with the task its name leads
to now, and ``schema``/``payloads()`` still find its versions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import PydanticUserError

from ..exceptions import SchemaError
from ..schema.diff import classify, order_set_values
from ..schema.examples import example
from ..schema.lockfile import (
    DEFAULT_LOCK_PATH,
    LOCK_FORMAT,
    Lock,
    dump_lock,
    fingerprint,
    is_directory_name,
    parse_lock,
    read_lock,
    version_schema,
    write_lock,
)
from ..schema.registry import SchemaRegistry, TaskSpec

if TYPE_CHECKING:
    from ..app.huey import VersionedHuey

__all__ = [
    "DEFAULT_LOCK_PATH",
    "LOCK_FORMAT",
    "Problem",
    "Review",
    "build_lock",
    "check_lock",
    "describe_changes",
    "dump_lock",
    "export_schemas",
    "fingerprint",
    "is_directory_name",
    "parse_lock",
    "read_lock",
    "review_lock",
    "version_schema",
    "write_lock",
]

ProblemKind = Literal[
    "schema_changed",
    "missing_upcaster",
    "task_removed",
    "version_lowered",
    "invalid_declarations",
    "lock_out_of_date",
    "upcaster_unwritten",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason ``versioned-tasks check`` fails.

    Attributes:
        task: the logical task name (or the renamed or tombstoned name) concerned.
        kind: ``schema_changed`` (changed without a version bump),
            ``missing_upcaster`` (no upcaster chain from a locked version),
            ``task_removed`` (a locked name gone without a rename or tombstone),
            ``version_lowered``, ``invalid_declarations`` (what
            ``huey.check_schemas()`` refuses), ``upcaster_unwritten`` (a step,
            as ``makemigrations`` leaves one for a person, that raises
            ``NotImplementedError``), or ``lock_out_of_date`` (only with
            ``frozen=True``: ``versioned-tasks lock`` would change the file).
        message: one line naming the task, the versions and the fix.
    """

    task: str
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Review:
    """What ``check`` found: the problems, and notes on what changed harmlessly.

    ``lock`` is the lock ``versioned-tasks lock`` would write for the app.
    """

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lock: Lock = field(default_factory=dict)


# -- building ---------------------------------------------------------------------------


def task_schema(spec: TaskSpec) -> dict[str, Any]:
    """The JSON Schema of a task's arguments at its current version, as locked.

    That is ``spec.json_schema()`` with the sets in its defaults sorted, so
    that it is the same in every process.

    Raises:
        SchemaError: pydantic cannot express the argument model as a JSON Schema.
    """
    try:
        schema: dict[str, Any] = order_set_values(spec.json_schema())
    except PydanticUserError as exc:  # PydanticInvalidForJsonSchema and kin
        first = str(exc).splitlines()[0]
        raise SchemaError(
            f"Task {spec.name!r} version {spec.version}: pydantic cannot write the JSON "
            f"Schema of its arguments ({first}), which the schema lock records; annotate "
            f"the parameters with types that have one.",
            task=spec.name,
        ) from None
    return schema


def build_lock(huey: VersionedHuey, previous: Mapping[str, Any] | None = None) -> Lock:
    """The lock of an app as declared today, keeping the history of ``previous``.

    Each task's entry of its current version is refreshed; entries of older
    versions are kept from ``previous`` (a task renamed since inherits the
    history of its old name); entries of versions above the current one are
    dropped. The entries of names that are renamed away or tombstoned now
    are kept from ``previous`` as they were; those of names that are gone
    with no rename or tombstone are dropped.

    Raises:
        SchemaError: the app's declarations do not check (``huey.check_schemas()``),
            or a task's arguments have no JSON Schema.
    """
    huey.check_schemas()
    return _build(huey.schema, previous)


def _build(registry: SchemaRegistry, previous: Mapping[str, Any] | None) -> Lock:
    old_tasks: Mapping[str, Any] = previous["tasks"] if previous else {}
    tasks: dict[str, Any] = {}
    for name, spec in registry.specs.items():
        schema = task_schema(spec)
        history = _history(name, registry, old_tasks)
        versions = {v: entry for v, entry in history.items() if int(v) < spec.version}
        versions[str(spec.version)] = {"fingerprint": fingerprint(schema), "schema": schema}
        tasks[name] = {
            "version": spec.version,
            "upcasters_from": sorted(registry.upcasters.get(name, {})),
            "allow_compatible_changes": spec.allow_compatible_changes,
            "versions": dict(sorted(versions.items(), key=lambda item: int(item[0]))),
        }
    # Messages written under a name that is renamed away or tombstoned may still
    # arrive: its entry stays as it was last locked, for check and for export.
    for name, entry in old_tasks.items():
        if name not in tasks and _redirected(name, registry):
            tasks[name] = copy.deepcopy(dict(entry))
    return {
        "lock_format": LOCK_FORMAT,
        "tasks": dict(sorted(tasks.items())),
        "renames": dict(sorted(registry.renames.items())),
        "tombstones": sorted(registry.tombstones),
    }


def _redirected(name: str, registry: SchemaRegistry) -> bool:
    return name in registry.renames or name in registry.tombstones


def _history(name: str, registry: SchemaRegistry, old_tasks: Mapping[str, Any]) -> dict[str, Any]:
    if name in old_tasks:
        return dict(old_tasks[name]["versions"])
    # A task that only took over other names keeps their history: each version
    # they agree on (a chain a -> b -> c records the same schemas twice).
    merged: dict[str, Any] = {}
    conflicts: set[str] = set()
    for old in sorted(old_tasks):
        if old == name or registry.resolve(old) != name:
            continue
        for version, entry in old_tasks[old]["versions"].items():
            known = merged.setdefault(version, entry)
            if known["fingerprint"] != entry["fingerprint"]:
                conflicts.add(version)
    return {version: entry for version, entry in merged.items() if version not in conflicts}


def export_schemas(
    huey: VersionedHuey, lock: Mapping[str, Any] | None, *, task: str | None = None
) -> dict[str, dict[int, Any]]:
    """Every task's JSON Schema per version: today's from the model, older ones from the lock.

    Names renamed away or tombstoned are exported from the lock's history too,
    since their messages may still arrive.

    Raises:
        SchemaError: ``task`` is neither declared nor in the lock's history, or
            has no JSON Schema.
    """
    registry = huey.schema
    built = _build(registry, lock)
    if task is not None and task not in built["tasks"]:
        declared = sorted(registry.specs)
        shown = ", ".join(declared[:10]) + (" ..." if len(declared) > 10 else "")
        raise SchemaError(
            f"Task {task!r} is not declared in app {huey.name!r}, and the lock has no "
            f"history of it; pass one of its versioned tasks' logical names "
            f"({shown or 'none declared'}).",
            task=task,
        )
    return {
        name: {int(v): entry["schema"] for v, entry in built["tasks"][name]["versions"].items()}
        for name in sorted(built["tasks"])
        if task is None or name == task
    }


def check_lock(
    huey: VersionedHuey, lock: Mapping[str, Any], *, frozen: bool = False
) -> list[Problem]:
    """Compare an app with its lock: every problem, each with its fix.

    Problems: a task's schema changed without a version bump (a compatible
    change passes when the task has ``allow_compatible_changes=True``); a
    version went up without an upcaster chain from every locked version; a
    locked task, rename or tombstone disappeared without a rename or
    tombstone; a version went down; a name renamed onto a task whose
    schemas its messages do not fit; and whatever ``huey.check_schemas()``
    refuses. New tasks, new upcasters and cosmetic changes are not problems,
    unless ``frozen`` is true: then a lock that ``versioned-tasks lock`` would
    change is one (``lock_out_of_date``).

    Raises:
        SchemaError: a task's arguments have no JSON Schema.
    """
    return review_lock(huey, lock, frozen=frozen).problems


def review_lock(huey: VersionedHuey, lock: Mapping[str, Any], *, frozen: bool = False) -> Review:
    """:func:`check_lock`, plus notes on the changes that are not problems."""
    registry = huey.schema
    fresh = _build(registry, lock)
    review = Review(problems=_declaration_problems(huey), lock=fresh)
    checker = _Checker(huey, lock, fresh, review)
    for name, entry in sorted(lock["tasks"].items()):
        checker.locked_name(name, entry)
    checker.redirects()
    review.problems.extend(_unwritten_steps(registry, lock))
    covered = {registry.resolve(name) for name in lock["tasks"]}
    for name in sorted(set(registry.specs) - covered):
        review.notes.append(f"Task {name!r} version {registry.specs[name].version} is new.")
    if not review.problems and dump_lock(fresh) != dump_lock(lock):
        if frozen:
            review.problems.append(_out_of_date(lock, fresh))
        else:
            review.notes.append(
                "The lock is out of date, harmlessly; run `versioned-tasks lock` to record "
                "these changes."
            )
    return review


def _unwritten_steps(registry: SchemaRegistry, lock: Mapping[str, Any]) -> list[Problem]:
    """Upcasters and downcasters that raise ``NotImplementedError`` on a plain payload.

    Each step is called once, on an example of the version it reads (from the
    lock, or today's model): a step ``makemigrations`` left for a person is
    caught here, so ``check`` fails until it is written. Any other outcome of
    the call is the corpus tests' business.
    """
    problems = []
    for name, spec in sorted(registry.specs.items()):
        versions = lock["tasks"].get(name, {}).get("versions", {})

        def schema_of(version: int, spec: TaskSpec = spec, versions: Any = versions) -> Any:
            if version == spec.version:
                return task_schema(spec)
            return versions.get(str(version), {}).get("schema")

        steps = [
            ("upcaster", v, v + 1, step) for v, step in registry.upcasters.get(name, {}).items()
        ]
        steps += [
            ("downcaster", v, v - 1, step)
            for v, step in registry.downcasters.get(name, {}).items()
        ]
        for kind, version, to, step in sorted(steps, key=lambda s: (s[0], s[1])):
            schema = schema_of(version)
            if schema is None:
                continue
            try:
                step(copy.deepcopy(example(schema)))
            except NotImplementedError as exc:
                problems.append(
                    Problem(
                        name,
                        "upcaster_unwritten",
                        f"Task {name!r}: the {kind} {_qualified(step)} from version {version} "
                        f"to {to} is not written yet (it raises NotImplementedError: {exc}); "
                        f"write it, then run `versioned-tasks check` again.",
                    )
                )
            except Exception:  # the corpus tests judge what a written step does
                continue
    return problems


def _qualified(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _out_of_date(lock: Mapping[str, Any], fresh: Mapping[str, Any]) -> Problem:
    changes = describe_changes(lock, fresh)
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return Problem(
        "",
        "lock_out_of_date",
        f"The lock file is out of date: `versioned-tasks lock` would change it ({shown}); "
        f"run it and commit the file.",
    )


def _declaration_problems(huey: VersionedHuey) -> list[Problem]:
    try:
        huey.check_schemas()
    except SchemaError as exc:
        lines = str(exc).splitlines()
        details = [line.removeprefix("- ") for line in lines[1:]] or lines
        return [Problem(exc.task or "", "invalid_declarations", line) for line in details]
    return []


def _lock_target(lock: Mapping[str, Any], name: str) -> str:
    """Where the lock's renames lead ``name`` (a cycle stops where it started)."""
    renames: Mapping[str, str] = lock["renames"]
    seen = {name}
    while name in renames and renames[name] not in seen:
        name = renames[name]
        seen.add(name)
    return name


class _Checker:
    """The names of a lock against the app's declarations today."""

    def __init__(
        self, huey: VersionedHuey, lock: Mapping[str, Any], fresh: Lock, review: Review
    ) -> None:
        self.huey, self.registry, self.lock, self.fresh = huey, huey.schema, lock, fresh
        self.review = review

    def plain(self, name: str) -> bool:
        """Whether ``name`` is a plain Huey task of the app (it takes any arguments)."""
        return name not in self.registry.specs and self.huey.plain_task(name) is not None

    def recorded(self, name: str) -> bool:
        """Whether the lock already records the app's rename of ``name``."""
        renamed = self.registry.renames.get(name)
        return renamed is not None and self.lock["renames"].get(name) == renamed

    def locked_name(self, name: str, entry: Mapping[str, Any]) -> None:
        registry = self.registry
        target = registry.resolve(name)
        if target in registry.tombstones:
            return
        if target not in registry.specs:
            if self.plain(target):
                if not self.recorded(name):
                    self.review.notes.append(_plain_note(name, entry["version"], target))
            elif target == name and not _redirected_in(name, self.lock):
                self.review.problems.append(_removed_task(name, entry))
            # Else a rename to a name that is not declared (check_schemas() says
            # so), or a locked rename or tombstone that is gone (redirects() does).
            return
        was = None
        if name in self.lock["renames"] and _lock_target(self.lock, name) != target:
            was = _lock_target(self.lock, name)
        own = self.lock["tasks"].get(target) if target != name else None
        task = _Task(name, entry, registry.specs[target], self.fresh["tasks"][target], registry)
        task.target_locked, task.was, task.quiet = own, was, self.recorded(name)
        task.review(self.review)

    def redirects(self) -> None:
        """Locked renames and tombstones: still there, and leading where they did."""
        registry = self.registry

        def handled(name: str) -> bool:
            return name in registry.specs or _redirected(name, registry) or self.plain(name)

        for old, new in sorted(self.lock["renames"].items()):
            if not handled(old):
                self.review.problems.append(_gone_rename(old, new))
            elif old not in self.lock["tasks"]:
                # No history of its own (it was renamed before it was ever
                # locked): compare with the history of where it led.
                self._retargeted(old, _lock_target(self.lock, old), registry.resolve(old))
        for name in sorted(self.lock["tombstones"]):
            if not handled(name):
                self.review.problems.append(_gone_tombstone(name))

    def _retargeted(self, old: str, before: str, now: str) -> None:
        if before == now or now in self.registry.tombstones:
            return
        if now not in self.registry.specs:
            if self.plain(now):
                self.review.notes.append(_plain_note(old, None, now))
            return  # an undeclared target: check_schemas() reports it
        entry = self.lock["tasks"].get(before)
        if entry is None:
            self.review.problems.append(
                Problem(
                    old,
                    "schema_changed",
                    f"The rename {old!r} -> {before!r} in the lock now leads to {now!r}: "
                    f"messages written under {old!r} would run as {now!r}, and the lock has "
                    f"no schema of them to compare with {now!r}'s; restore "
                    f"huey.rename({old!r}, {before!r}), or, once no message written under "
                    f"{old!r} can remain, run `versioned-tasks lock` to accept it.",
                )
            )
            return
        task = _Task(old, entry, self.registry.specs[now], self.fresh["tasks"][now], self.registry)
        task.target_locked, task.was = self.lock["tasks"].get(now), before
        task.review(self.review)


def _redirected_in(name: str, lock: Mapping[str, Any]) -> bool:
    return name in lock["renames"] or name in lock["tombstones"]


def _plain_note(name: str, version: int | None, target: str) -> str:
    locked = f" (version {version} in the lock)" if version is not None else ""
    return (
        f"Task {name!r}{locked} is renamed to the plain Huey task {target!r}, which takes "
        f"its messages' arguments as they are (they are not validated)."
    )


class _Task:
    """One locked name against the task it leads to today.

    For a name renamed to another task, its locked versions are compared with
    that task's schemas at the same versions: its messages go through that
    task's upcasters, which were written for that task's payloads.
    """

    def __init__(
        self,
        name: str,
        entry: Mapping[str, Any],
        spec: TaskSpec,
        fresh: Mapping[str, Any],
        registry: SchemaRegistry,
    ) -> None:
        self.name, self.entry, self.spec, self.fresh = name, entry, spec, fresh
        self.steps = registry.upcasters.get(spec.name, {})
        self.locked: int = entry["version"]
        #: The lock's own entry of the task ``name`` leads to, when that is another task.
        self.target_locked: Mapping[str, Any] | None = None
        #: Where the lock's renames led ``name``, when the app leads it elsewhere.
        self.was: str | None = None
        #: The lock records this rename already: no notes, they were given before.
        self.quiet = False

    @property
    def label(self) -> str:
        if self.name == self.spec.name:
            return repr(self.name)
        if self.was is not None:
            return (
                f"{self.name!r} (renamed to {self.spec.name!r}; the lock renames it to "
                f"{self.was!r})"
            )
        return f"{self.name!r} (renamed to {self.spec.name!r})"

    def problem(self, kind: ProblemKind, message: str) -> Problem:
        return Problem(self.name, kind, message)

    def review(self, review: Review) -> None:
        current = self.spec.version
        if current < self.locked:
            review.problems.append(self._lowered())
            return
        found = len(review.problems)
        missing = self._missing_steps()
        if missing:
            review.problems.append(self._no_chain(missing))
        if self.name != self.spec.name:
            self._compare_sources(review)
        elif current == self.locked:
            self._compare_schema(review)
        if current > self.locked and len(review.problems) == found and not self.quiet:
            review.notes.append(
                f"Task {self.label} went from version {self.locked} to {current}, with "
                f"upcasters from every locked version."
            )

    def _readable_versions(self) -> list[int]:
        """The locked version, and every older one the lock had a chain from."""
        covered = set(self.entry["upcasters_from"])
        versions = [self.locked]
        while versions[-1] - 1 in covered:
            versions.append(versions[-1] - 1)
        return versions

    def _missing_steps(self) -> list[int]:
        current = self.spec.version
        missing: set[int] = set()
        for version in self._readable_versions():
            missing.update(s for s in range(version, current) if s not in self.steps)
        return sorted(missing)

    def _no_chain(self, missing: list[int]) -> Problem:
        current, oldest = self.spec.version, min(self._readable_versions())
        steps = ", ".join(f"{s} to {s + 1}" for s in missing)
        register = " and ".join(
            f"@huey.upcaster({self.spec.name!r}, from_version={s})" for s in missing
        )
        if current == self.locked:
            return self.problem(
                "missing_upcaster",
                f"Task {self.label} version {current}: the lock has an upcaster chain from "
                f"version {oldest}, but there is no upcaster from version {steps} any more, "
                f"so messages written at version {missing[0]} would be dead-lettered; restore "
                f"{register}, or, once no such message can remain in a queue, the schedule "
                f"or the dead-letter store, run `versioned-tasks lock` to accept it.",
            )
        return self.problem(
            "missing_upcaster",
            f"Task {self.label} went from version {self.locked} (locked) to {current} with "
            f"no upcaster from version {steps}, so messages written at version "
            f"{missing[0]} would be dead-lettered; register {register}, then run "
            f"`versioned-tasks lock`.",
        )

    def _lowered(self) -> Problem:
        return self.problem(
            "version_lowered",
            f"Task {self.label} went down from version {self.locked} (locked) to "
            f"{self.spec.version}: messages already written at version {self.locked} would "
            f"wait as newer_version and then be dead-lettered; restore version "
            f"{self.locked} (or go above it with upcasters), then run `versioned-tasks lock`.",
        )

    def _compare_sources(self, review: Review) -> None:
        """A renamed name: each version its messages may have, against the target's."""
        current = self.spec.version
        for version in sorted(self._readable_versions()):
            mine = self.entry["versions"].get(str(version))
            if mine is None:  # never locked at that version: nothing to compare
                continue
            own = self.target_locked["versions"].get(str(version)) if self.target_locked else None
            if own is not None and own["fingerprint"] == mine["fingerprint"]:
                continue  # the same as the target's locked schema, checked on its own
            if own is None and version == current and self.was is None:
                self._compare_schema(review)  # a plain rename: the schema of today
                continue
            theirs = self.fresh["versions"].get(str(version))
            if theirs is None:
                review.problems.append(self._unknown_target(version))
                continue
            if theirs["fingerprint"] == mine["fingerprint"]:
                continue
            change = classify(mine["schema"], theirs["schema"])
            if change.level == "breaking":
                review.problems.append(self._mismatch(version, change.summary()))
            elif change.level == "compatible" and not self.quiet:
                review.notes.append(
                    f"Task {self.label} version {version}: its messages fit "
                    f"{self.spec.name!r} version {version} ({change.summary()})."
                )

    def _merge_fix(self) -> str:
        name, target = self.name, self.spec.name
        restore = f"restore huey.rename({name!r}, {self.was!r}), or " if self.was else ""
        return (
            f"{restore}rename {name!r} to a task its messages fit, or replace the rename by "
            f"huey.tombstone({name!r}) with a handler that enqueues {target!r} with "
            f"converted arguments; once no message written as {name!r} can remain, drop the "
            f"rename and run `versioned-tasks lock`."
        )

    def _through(self, version: int) -> str:
        if version == self.spec.version:
            return f"would be validated by {self.spec.name!r} version {version}"
        return f"would go through the upcaster of {self.spec.name!r} from version {version}"

    def _mismatch(self, version: int, summary: str) -> Problem:
        return self.problem(
            "schema_changed",
            f"Task {self.label} version {version}: messages written as {self.name!r} at "
            f"version {version} {self._through(version)}, but the version-{version} schemas "
            f"of {self.name!r} and {self.spec.name!r} differ in a breaking way ({summary}), "
            f"so they would be dead-lettered; {self._merge_fix()}",
        )

    def _unknown_target(self, version: int) -> Problem:
        return self.problem(
            "schema_changed",
            f"Task {self.label} version {version}: messages written as {self.name!r} at "
            f"version {version} {self._through(version)}, but the lock has no schema of "
            f"{self.spec.name!r} at version {version} to show that they fit; "
            f"{self._merge_fix()}",
        )

    def _compare_schema(self, review: Review) -> None:
        version = str(self.locked)
        old, new = self.entry["versions"][version], self.fresh["versions"][version]
        if old["fingerprint"] == new["fingerprint"]:
            return
        change = classify(old["schema"], new["schema"])
        where = f"Task {self.label} version {version}"
        if change.level in ("identical", "cosmetic"):
            if not self.quiet:
                review.notes.append(f"{where}: {change.summary()}.")
        elif change.level == "compatible" and self.spec.allow_compatible_changes:
            review.notes.append(
                f"{where}: backward-compatible change allowed by "
                f"allow_compatible_changes=True ({change.summary()}){_old_workers(old, new)}."
            )
        else:
            review.problems.append(self._changed(change.level, change.summary()))

    def _changed(self, level: str, summary: str) -> Problem:
        version, task = self.locked, self.spec.name
        bump = (
            f"raise the version to {version + 1} with @huey.upcaster({task!r}, "
            f"from_version={version})"
        )
        if level == "compatible":
            fix = (
                f"opt in with @huey.versioned_task(version={version}, "
                f"allow_compatible_changes=True) if every worker runs the new code before "
                f"any message uses the change, or {bump}"
            )
            what = f"a backward-compatible change ({summary})"
        else:
            fix = bump
            what = (
                f"a breaking change ({summary}); messages already written at version "
                f"{version} may not validate any more"
            )
        return self.problem(
            "schema_changed",
            f"Task {self.label} version {version}: its argument schema changed without a "
            f"version bump, {what}. {fix[0].upper() + fix[1:]}; then run "
            f"`versioned-tasks lock`.",
        )


def _old_workers(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What a worker still on the locked schema does with a message of the new one."""
    if classify(new["schema"], old["schema"]).level != "breaking":
        return ""
    return (
        "; a worker still running the locked code dead-letters a message that uses it "
        "(invalid_payload), so every worker must run this code before any producer does"
    )


def _removed_task(name: str, entry: Mapping[str, Any]) -> Problem:
    return Problem(
        name,
        "task_removed",
        f"Task {name!r} (version {entry['version']} in the lock) is gone, with no rename or "
        f"tombstone: its messages still in a queue, the schedule or the dead-letter store "
        f"would be dead-lettered as unknown_task; declare it again, or add "
        f"huey.rename({name!r}, 'new.name') or huey.tombstone({name!r}), then run "
        f"`versioned-tasks lock`.",
    )


def _gone_rename(old: str, new: str) -> Problem:
    return Problem(
        old,
        "task_removed",
        f"The rename {old!r} -> {new!r} in the lock is gone and {old!r} is not "
        f"declared or tombstoned: messages written under {old!r} would be "
        f"dead-lettered as unknown_task; restore huey.rename({old!r}, {new!r}) "
        f"or add huey.tombstone({old!r}), then run `versioned-tasks lock`.",
    )


def _gone_tombstone(name: str) -> Problem:
    return Problem(
        name,
        "task_removed",
        f"The tombstone of {name!r} in the lock is gone and {name!r} is not "
        f"declared or renamed: its messages would be dead-lettered as "
        f"unknown_task instead of retired; restore huey.tombstone({name!r}), "
        f"then run `versioned-tasks lock`.",
    )


# -- what a new lock changes ----------------------------------------------------------------


def describe_changes(previous: Mapping[str, Any] | None, lock: Mapping[str, Any]) -> list[str]:
    """One line per difference between two locks, for ``versioned-tasks lock`` to print."""
    before: Mapping[str, Any] = previous["tasks"] if previous else {}
    after: Mapping[str, Any] = lock["tasks"]
    lines: list[str] = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            lines.append(f"+ {name} v{after[name]['version']} (new task)")
        elif name not in after:
            lines.append(f"- {name} v{before[name]['version']} ({_fate(name, lock)})")
        else:
            was_live = previous is None or _is_live(name, previous)
            if was_live and not _is_live(name, lock):
                lines.append(
                    f"~ {name} v{after[name]['version']}: {_fate(name, lock)}; its history "
                    f"stays in the lock"
                )
            elif not was_live and _is_live(name, lock):
                lines.append(f"~ {name} v{after[name]['version']}: declared again")
            lines.extend(_task_changes(name, before[name], after[name]))
    lines.extend(_redirect_changes(previous, lock))
    return lines


def _is_live(name: str, lock: Mapping[str, Any]) -> bool:
    """Whether a task entry of a lock is a declared task (not renamed away or retired)."""
    return name not in lock["renames"] and name not in lock["tombstones"]


def live_task_count(lock: Mapping[str, Any]) -> int:
    """The number of declared tasks a lock records (without renamed or retired names)."""
    return sum(1 for name in lock["tasks"] if _is_live(name, lock))


def _fate(name: str, lock: Mapping[str, Any]) -> str:
    if name in lock["renames"]:
        return f"renamed to {lock['renames'][name]!r}"
    if name in lock["tombstones"]:
        return "tombstoned"
    return "removed, with no rename or tombstone"


def _task_changes(name: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lines = []
    old_version, new_version = before["version"], after["version"]
    if old_version != new_version:
        kept = sorted(int(v) for v in after["versions"] if int(v) < new_version)
        history = f"; history keeps {', '.join(f'v{v}' for v in kept)}" if kept else ""
        lines.append(f"~ {name}: version {old_version} -> {new_version}{history}")
    else:
        old_entry = before["versions"][str(old_version)]
        new_entry = after["versions"][str(new_version)]
        if old_entry["fingerprint"] != new_entry["fingerprint"]:
            change = classify(old_entry["schema"], new_entry["schema"])
            lines.append(
                f"~ {name} v{new_version}: schema changed, {change.level} ({change.summary()})"
            )
    fields: list[tuple[str, Callable[[Any], str]]] = [
        ("upcasters_from", lambda v: f"[{', '.join(map(str, v))}]"),
        ("allow_compatible_changes", lambda v: "true" if v else "false"),
    ]
    for key, show in fields:
        if before[key] != after[key]:
            lines.append(f"~ {name}: {key} {show(before[key])} -> {show(after[key])}")
    return lines


def _redirect_changes(previous: Mapping[str, Any] | None, lock: Mapping[str, Any]) -> list[str]:
    old_renames: Mapping[str, str] = previous["renames"] if previous else {}
    old_tombstones = set(previous["tombstones"] if previous else ())
    lines = []
    for old, new in sorted(old_renames.items()):
        if lock["renames"].get(old) != new:
            lines.append(f"- rename {old} -> {new}")
    for old, new in sorted(lock["renames"].items()):
        if old_renames.get(old) != new:
            lines.append(f"+ rename {old} -> {new}")
    lines.extend(f"- tombstone {t}" for t in sorted(old_tombstones - set(lock["tombstones"])))
    lines.extend(f"+ tombstone {t}" for t in sorted(set(lock["tombstones"]) - old_tombstones))
    return lines
