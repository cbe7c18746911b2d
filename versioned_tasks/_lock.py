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
the current version and keeps the older ones as they were.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import PydanticUserError

from ._schema import SchemaRegistry, TaskSpec
from ._schema_diff import canonical, classify, order_set_values
from ._version import __version__
from .exceptions import LockFileError, SchemaError

if TYPE_CHECKING:
    from ._huey import VersionedHuey

__all__ = [
    "DEFAULT_LOCK_PATH",
    "LOCK_FORMAT",
    "Problem",
    "Review",
    "build_lock",
    "check_lock",
    "describe_changes",
    "export_schemas",
    "fingerprint",
    "read_lock",
    "review_lock",
    "version_schema",
    "write_lock",
]

#: The format this module reads and writes; a lock with another one is refused.
LOCK_FORMAT: Final = 1
#: Where the commands look for the lock file, relative to the current directory.
DEFAULT_LOCK_PATH: Final = "versioned-tasks.lock"

Lock = dict[str, Any]
ProblemKind = Literal[
    "schema_changed",
    "missing_upcaster",
    "task_removed",
    "version_lowered",
    "invalid_declarations",
]

_TOP_KEYS: Final = frozenset({"lock_format", "tasks", "renames", "tombstones"})
_TASK_KEYS: Final = frozenset(
    {"version", "upcasters_from", "allow_compatible_changes", "versions"}
)
_VERSION_KEYS: Final = frozenset({"fingerprint", "schema"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason ``versioned-tasks check`` fails.

    Attributes:
        task: the logical task name (or the renamed or tombstoned name) concerned.
        kind: ``schema_changed`` (changed without a version bump),
            ``missing_upcaster`` (no upcaster chain from a locked version),
            ``task_removed`` (a locked name gone without a rename or tombstone),
            ``version_lowered``, or ``invalid_declarations`` (what
            ``huey.check_schemas()`` refuses).
        message: one line naming the task, the versions and the fix.
    """

    task: str
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Review:
    """What ``check`` found: the problems, and notes on what changed harmlessly."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- building ---------------------------------------------------------------------------


def fingerprint(schema: Any) -> str:
    """``sha256:<hex>`` of the schema's canonical JSON (sorted keys, no spaces)."""
    return "sha256:" + hashlib.sha256(canonical(schema)).hexdigest()


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
    dropped.

    Raises:
        SchemaError: the app's declarations do not check (``huey.check_schemas()``),
            or a task's arguments have no JSON Schema.
    """
    huey.check_schemas()
    return _build(huey.schema, previous)


def _build(registry: SchemaRegistry, previous: Mapping[str, Any] | None) -> Lock:
    old_tasks: Mapping[str, Any] = previous["tasks"] if previous else {}
    tasks = {}
    for name, spec in sorted(registry.specs.items()):
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
    return {
        "lock_format": LOCK_FORMAT,
        "tasks": tasks,
        "renames": dict(sorted(registry.renames.items())),
        "tombstones": sorted(registry.tombstones),
    }


def _history(name: str, registry: SchemaRegistry, old_tasks: Mapping[str, Any]) -> dict[str, Any]:
    if name in old_tasks:
        return dict(old_tasks[name]["versions"])
    # A task that only took over another name keeps that name's history.
    sources = [old for old in old_tasks if old != name and registry.resolve(old) == name]
    if len(sources) == 1:
        return dict(old_tasks[sources[0]]["versions"])
    return {}


def version_schema(lock: Mapping[str, Any], task: str, version: int) -> dict[str, Any] | None:
    """The JSON Schema of ``task`` at ``version`` recorded in a lock, or None."""
    entry = lock.get("tasks", {}).get(task)
    if entry is None:
        return None
    recorded = entry["versions"].get(str(version))
    if recorded is None:
        return None
    schema = recorded["schema"]
    if isinstance(schema, bool):  # true accepts anything, false nothing
        return {} if schema else {"not": {}}
    return copy.deepcopy(dict(schema))


def export_schemas(
    huey: VersionedHuey, lock: Mapping[str, Any] | None, *, task: str | None = None
) -> dict[str, dict[int, Any]]:
    """Every task's JSON Schema per version: today's from the model, older ones from the lock.

    Raises:
        SchemaError: ``task`` is not declared, or has no JSON Schema.
    """
    registry = huey.schema
    if task is not None and task not in registry.specs:
        declared = sorted(registry.specs)
        shown = ", ".join(declared[:10]) + (" ..." if len(declared) > 10 else "")
        raise SchemaError(
            f"Task {task!r} is not declared in app {huey.name!r}; pass one of its "
            f"versioned tasks' logical names ({shown or 'none declared'}).",
            task=task,
        )
    built = _build(registry, lock)
    return {
        name: {int(v): entry["schema"] for v, entry in built["tasks"][name]["versions"].items()}
        for name in sorted(built["tasks"])
        if task is None or name == task
    }


# -- the file ---------------------------------------------------------------------------


def dump_lock(lock: Mapping[str, Any]) -> str:
    """The text of a lock file: sorted keys, two-space indents, a trailing newline."""
    return json.dumps(lock, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_lock(path: str | os.PathLike[str], lock: Mapping[str, Any]) -> None:
    """Write a lock file atomically (a reader never sees half of it)."""
    target = Path(path)
    text = dump_lock(lock)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_lock(path: str | os.PathLike[str]) -> Lock:
    """Read and check a lock file.

    Raises:
        LockFileError: the file is missing or unreadable, is not JSON, has an
            unknown ``lock_format``, or is not shaped like a lock (one line
            saying where, and what to do).
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise LockFileError(
            f"No lock file at {source!r}; create it with `versioned-tasks lock --app "
            f"MODULE:ATTR` and commit it (or pass --lock PATH).",
            path=source,
        ) from None
    except OSError as exc:
        raise LockFileError(
            f"Cannot read the lock file {source!r}: {exc.strerror or exc}; pass --lock "
            f"with the path of the lock file.",
            path=source,
        ) from None
    return parse_lock(data, source=source)


def parse_lock(data: bytes | str, *, source: str = DEFAULT_LOCK_PATH) -> Lock:
    """Parse and check the text of a lock file (see :func:`read_lock`)."""
    try:
        lock = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise LockFileError(
            f"The lock file {source!r} is not valid JSON ({reason}); restore it from "
            f"version control (after a merge conflict, take either side and run "
            f"`versioned-tasks lock`), or delete it and run `versioned-tasks lock`.",
            path=source,
        ) from None
    _LockShape(source).check(lock)
    return lock  # type: ignore[no-any-return]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _LockShape:
    """Checks that parsed JSON is a lock, and says where it is not."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> LockFileError:
        return LockFileError(
            f"The lock file {self.source!r} is not a valid versioned-tasks lock: {where} "
            f"{what}; restore it from version control, or delete it and run "
            f"`versioned-tasks lock`.",
            path=self.source,
        )

    def check(self, lock: Any) -> None:
        if not isinstance(lock, dict):
            raise self.fail("the top level", "is not a JSON object")
        self._format(lock)
        self._keys(lock, _TOP_KEYS, "the top level")
        tasks = self._mapping(lock["tasks"], '"tasks"')
        for name, entry in tasks.items():
            self._task(name, entry)
        renames = self._mapping(lock["renames"], '"renames"')
        for old, new in renames.items():
            if not isinstance(new, str):
                raise self.fail(f'"renames" -> {old!r}', "is not a task name (a string)")
        tombstones = lock["tombstones"]
        if not isinstance(tombstones, list) or not all(isinstance(t, str) for t in tombstones):
            raise self.fail('"tombstones"', "is not a list of task names")

    def _format(self, lock: dict[str, Any]) -> None:
        if "lock_format" not in lock:
            raise self.fail("the top level", 'has no "lock_format"')
        found = lock["lock_format"]
        if isinstance(found, bool) or found != LOCK_FORMAT:
            raise LockFileError(
                f"The lock file {self.source!r} has lock_format {found!r}, which "
                f"versioned_tasks {__version__} cannot read (it reads lock_format "
                f"{LOCK_FORMAT}); use the versioned_tasks that wrote it, or run "
                f"`versioned-tasks lock` to write it again.",
                path=self.source,
            )

    def _keys(self, value: dict[str, Any], expected: frozenset[str], where: str) -> None:
        missing, unknown = sorted(expected - set(value)), sorted(set(value) - expected)
        if missing:
            raise self.fail(where, f"lacks {', '.join(repr(k) for k in missing)}")
        if unknown:
            raise self.fail(where, f"has unknown keys {', '.join(repr(k) for k in unknown)}")

    def _mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "is not a JSON object")
        return value

    def _task(self, name: str, entry: Any) -> None:
        where = f"task {name!r}"
        self._keys(self._mapping(entry, where), _TASK_KEYS, where)
        if not _is_version(entry["version"]):
            raise self.fail(f"{where} version", "is not an integer of at least 1")
        steps = entry["upcasters_from"]
        if not isinstance(steps, list) or not all(_is_version(v) for v in steps):
            raise self.fail(f"{where} upcasters_from", "is not a list of versions")
        if not isinstance(entry["allow_compatible_changes"], bool):
            raise self.fail(f"{where} allow_compatible_changes", "is not true or false")
        versions = self._mapping(entry["versions"], f"{where} versions")
        for key, recorded in versions.items():
            self._version(where, key, recorded)
        if str(entry["version"]) not in versions:
            raise self.fail(where, f"has no schema for its version {entry['version']}")

    def _version(self, where: str, key: str, recorded: Any) -> None:
        if not (key.isascii() and key.isdigit() and str(int(key)) == key and int(key) >= 1):
            raise self.fail(f"{where} versions", f"has the key {key!r}, which is not a version")
        where = f"{where} version {key}"
        self._keys(self._mapping(recorded, where), _VERSION_KEYS, where)
        if not isinstance(recorded["schema"], dict | bool):
            raise self.fail(f"{where} schema", "is not a JSON Schema (an object)")
        if recorded["fingerprint"] != fingerprint(recorded["schema"]):
            raise self.fail(
                f"{where} fingerprint", "does not match its schema (was one edited by hand?)"
            )


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# -- checking -----------------------------------------------------------------------------


def check_lock(huey: VersionedHuey, lock: Mapping[str, Any]) -> list[Problem]:
    """Compare an app with its lock: every problem, each with its fix.

    Problems: a task's schema changed without a version bump (a compatible
    change passes when the task has ``allow_compatible_changes=True``); a
    version went up without an upcaster chain from every locked version; a
    locked task, rename or tombstone disappeared without a rename or
    tombstone; a version went down; and whatever ``huey.check_schemas()``
    refuses. New tasks, new upcasters and cosmetic changes are not problems.

    Raises:
        SchemaError: a task's arguments have no JSON Schema.
    """
    return review_lock(huey, lock).problems


def review_lock(huey: VersionedHuey, lock: Mapping[str, Any]) -> Review:
    """:func:`check_lock`, plus notes on the changes that are not problems."""
    review = Review(problems=_declaration_problems(huey))
    registry = huey.schema
    fresh = _build(registry, lock)
    for name, entry in sorted(lock["tasks"].items()):
        target = registry.resolve(name)
        if target in registry.tombstones:
            continue
        if target not in registry.specs:
            review.problems.append(_removed_task(name, entry))
            continue
        _Task(name, entry, registry.specs[target], fresh["tasks"][target], registry).review(review)
    review.problems.extend(_removed_redirects(lock, registry))
    covered = {registry.resolve(name) for name in lock["tasks"]}
    for name in sorted(set(registry.specs) - covered):
        review.notes.append(f"Task {name!r} version {registry.specs[name].version} is new.")
    if not review.problems and dump_lock(fresh) != dump_lock(lock):
        review.notes.append(
            "The lock is out of date, harmlessly; run `versioned-tasks lock` to record "
            "these changes."
        )
    return review


def _declaration_problems(huey: VersionedHuey) -> list[Problem]:
    try:
        huey.check_schemas()
    except SchemaError as exc:
        lines = str(exc).splitlines()
        details = [line.removeprefix("- ") for line in lines[1:]] or lines
        return [Problem(exc.task or "", "invalid_declarations", line) for line in details]
    return []


class _Task:
    """One locked task against its declaration today (under its current name)."""

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
        self.label = repr(name) if name == spec.name else f"{name!r} (renamed to {spec.name!r})"

    def problem(self, kind: ProblemKind, message: str) -> Problem:
        return Problem(self.name, kind, message)

    def review(self, review: Review) -> None:
        current = self.spec.version
        if current < self.locked:
            review.problems.append(self._lowered())
            return
        missing = self._missing_steps()
        if missing:
            review.problems.append(self._no_chain(missing))
        if current == self.locked:
            self._compare_schema(review)
        elif not missing:
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

    def _compare_schema(self, review: Review) -> None:
        version = str(self.locked)
        old, new = self.entry["versions"][version], self.fresh["versions"][version]
        if old["fingerprint"] == new["fingerprint"]:
            return
        change = classify(old["schema"], new["schema"])
        where = f"Task {self.label} version {version}"
        if change.level in ("identical", "cosmetic"):
            review.notes.append(f"{where}: {change.summary()}.")
        elif change.level == "compatible" and self.spec.allow_compatible_changes:
            review.notes.append(
                f"{where}: backward-compatible change allowed by "
                f"allow_compatible_changes=True ({change.summary()})."
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
                f"allow_compatible_changes=True), or {bump}"
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


def _removed_redirects(lock: Mapping[str, Any], registry: SchemaRegistry) -> list[Problem]:
    def handled(name: str) -> bool:
        return name in registry.specs or name in registry.renames or name in registry.tombstones

    problems = []
    for old, new in sorted(lock["renames"].items()):
        if not handled(old):
            problems.append(
                Problem(
                    old,
                    "task_removed",
                    f"The rename {old!r} -> {new!r} in the lock is gone and {old!r} is not "
                    f"declared or tombstoned: messages written under {old!r} would be "
                    f"dead-lettered as unknown_task; restore huey.rename({old!r}, {new!r}) "
                    f"or add huey.tombstone({old!r}), then run `versioned-tasks lock`.",
                )
            )
    for name in sorted(lock["tombstones"]):
        if not handled(name):
            problems.append(
                Problem(
                    name,
                    "task_removed",
                    f"The tombstone of {name!r} in the lock is gone and {name!r} is not "
                    f"declared or renamed: its messages would be dead-lettered as "
                    f"unknown_task instead of retired; restore huey.tombstone({name!r}), "
                    f"then run `versioned-tasks lock`.",
                )
            )
    return problems


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
            lines.extend(_task_changes(name, before[name], after[name]))
    lines.extend(_redirect_changes(previous, lock))
    return lines


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
