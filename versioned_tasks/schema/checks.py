"""The whole-registry checks: every declaration against the others (upcaster and
downcaster chains, emit pins, renames, tombstones), run before a worker reads.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping

from ..exceptions import SchemaError, SchemaWarning
from .registry import Downcaster, SchemaRegistry, TaskSpec, Upcaster

__all__ = ["check_registry"]


def check_registry(registry: SchemaRegistry, plain_tasks: Iterable[str] = ()) -> None:
    """Check every declaration of ``registry`` against the others (``plain_tasks``:
    the names of the app's plain tasks).

    Raises:
        SchemaError: listing every problem with its fix.
    """
    known = set(registry.specs) | set(plain_tasks)
    problems = [
        *_check_upcasters(registry),
        *_check_downcasters(registry),
        *_check_renames(registry, known),
        *_check_tombstones(registry, known),
    ]
    for message in _likely_typos(registry):
        warnings.warn(SchemaWarning(message), stacklevel=3)
    if problems:
        first_task = problems[0][0]
        text = "\n".join(f"- {message}" for _, message in problems)
        raise SchemaError(
            f"{len(problems)} schema problem(s):\n{text}",
            task=first_task,
            problems=[message for _, message in problems],
        )
    registry.dirty = False


def _check_upcasters(registry: SchemaRegistry) -> Iterable[tuple[str, str]]:
    for task, steps in sorted(registry.upcasters.items()):
        spec = registry.specs.get(task)
        if spec is None:
            yield (
                task,
                (
                    f"Upcasters for {task!r} (from versions {sorted(steps)}) name a task "
                    f"that is not declared{_did_you_mean(task, registry.specs)}; declare it "
                    f"with @huey.versioned_task(version=N, name={task!r}) or remove them."
                ),
            )
            continue
        yield from _check_chain(spec, steps)


def _check_downcasters(registry: SchemaRegistry) -> Iterable[tuple[str, str]]:
    for task, steps in sorted(registry.downcasters.items()):
        spec = registry.specs.get(task)
        if spec is None:
            yield (
                task,
                (
                    f"Downcasters for {task!r} (from versions {sorted(steps)}) name a "
                    f"task that is not declared{_did_you_mean(task, registry.specs)}; "
                    f"declare it with @huey.versioned_task(version=N, name={task!r}) or remove "
                    f"them."
                ),
            )
            continue
        yield from _check_down_chain(spec, steps)
    for task, pinned in sorted(registry.emit_versions.items()):
        spec = registry.specs.get(task)
        steps = registry.downcasters.get(task, {})
        gaps = _down_gaps(spec.version, steps) if spec is not None else []
        for message in registry.pin_problems(task, pinned, skip=gaps):
            yield task, message


def _check_renames(registry: SchemaRegistry, known: set[str]) -> Iterable[tuple[str, str]]:
    for old, new in sorted(registry.renames.items()):
        if old in known:
            yield (
                old,
                (
                    f"rename({old!r}, {new!r}): {old!r} is still declared as a task; "
                    f"remove that declaration or the rename."
                ),
            )
        target = _final_target(registry, old)
        if target is None:
            yield old, f"rename({old!r}, {new!r}) is part of a rename cycle; break it."
        elif target not in known and target not in registry.tombstones:
            yield (
                old,
                (
                    f"rename({old!r}, {new!r}): {target!r} is not a declared "
                    f"task{_did_you_mean(target, known)}; declare it, or tombstone it if "
                    f"it was retired."
                ),
            )


def _did_you_mean(name: str, names: Iterable[str], cutoff: float = 0.75) -> str:
    """`` (did you mean 'x'?)`` for the declared names closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=cutoff)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(match) for match in close)}?)"


#: How alike two names must be (difflib's ratio) for one to look like a typo of the
#: other: a letter or two apart ('send_emails', 'sendemail' for 'send_email'), not
#: a prefix or suffix word ('old_refund' for 'refund').
_TYPO = 0.9


def _likely_typos(registry: SchemaRegistry) -> Iterable[str]:
    """Renames and tombstones whose name is no task but resembles a declared one."""
    runnable = set(registry.specs) - set(registry.renames) - set(registry.tombstones)
    for old, new in sorted(registry.renames.items()):
        if old in registry.specs:
            continue
        others = runnable - {new, _final_target(registry, old)}
        hint = _did_you_mean(old, others, _TYPO)
        if hint:
            yield (
                f"rename({old!r}, {new!r}): no task is declared as {old!r}, which looks "
                f"like a typo{hint}; if that task is the one renamed, fix the old name "
                f"and remove its declaration."
            )
    for task in sorted(registry.tombstones):
        if task in registry.specs:
            continue
        hint = _did_you_mean(task, runnable, _TYPO)
        if hint:
            yield (
                f"tombstone({task!r}): no task is declared as {task!r}, which looks like "
                f"a typo{hint}; if that task is the one retired, fix the name and remove "
                f"its declaration."
            )


def _final_target(registry: SchemaRegistry, name: str) -> str | None:
    seen = {name}
    while name in registry.renames:
        name = registry.renames[name]
        if name in seen:
            return None
        seen.add(name)
    return name


def _check_tombstones(registry: SchemaRegistry, known: set[str]) -> Iterable[tuple[str, str]]:
    for task in sorted(registry.tombstones):
        if task in known:
            yield (
                task,
                (
                    f"tombstone({task!r}): the task is still declared; remove the "
                    f"declaration (the tombstone replaces it) or the tombstone."
                ),
            )
        if task in registry.renames:
            yield (
                task,
                (
                    f"tombstone({task!r}): the name is also renamed to "
                    f"{registry.renames[task]!r}; keep one."
                ),
            )


def _check_chain(spec: TaskSpec, steps: dict[int, Upcaster]) -> Iterable[tuple[str, str]]:
    current = spec.version
    for version in sorted(v for v in steps if v >= current):
        yield (
            spec.name,
            (
                f"Task {spec.name!r}: upcaster from version {version} to {version + 1} goes "
                f"past the current version {current}; raise the task's version to "
                f"{version + 1} or remove the upcaster."
            ),
        )
    below = [v for v in steps if v < current]
    if not below:
        return
    for version in range(min(below), current):
        if version not in steps:
            yield (
                spec.name,
                (
                    f"Task {spec.name!r} has no upcaster from version {version} to "
                    f"{version + 1} (the chain must reach the current version {current}); "
                    f"register one with @huey.upcaster({spec.name!r}, from_version={version})."
                ),
            )


def _check_down_chain(spec: TaskSpec, steps: dict[int, Downcaster]) -> Iterable[tuple[str, str]]:
    current = spec.version
    for version in sorted(v for v in steps if v > current):
        yield (
            spec.name,
            (
                f"Task {spec.name!r}: downcaster from version {version} to {version - 1} "
                f"starts above the current version {current}; remove it, or raise the "
                f"task's version to {version}."
            ),
        )
    for version in _down_gaps(current, steps):
        yield (
            spec.name,
            (
                f"Task {spec.name!r} has no downcaster from version {version} to "
                f"{version - 1} (the chain must start at the current version {current}); "
                f"register one with @huey.downcaster({spec.name!r}, from_version={version})."
            ),
        )


def _down_gaps(current: int, steps: Mapping[int, Downcaster]) -> list[int]:
    """The missing steps between the lowest downcaster and the current version."""
    below = [v for v in steps if v <= current]
    if not below:
        return []
    return [v for v in range(current, min(below), -1) if v not in steps]
