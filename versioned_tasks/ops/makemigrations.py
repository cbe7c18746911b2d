"""``versioned-tasks makemigrations``: the upcasters the lock diff asks for, written out.

For every task whose argument schema changed against the lock without the
upcaster chain to match, a *step* from version N to N + 1 is planned from the
two JSON Schemas, field by field:

- a field added with a default: the step sets the default;
- an optional field added (default None), or a type widened: nothing to do;
- a field removed: the step drops it;
- a field renamed (``--rename-field``, or guessed when exactly one field goes
  and one of the same schema comes): the step moves the value, and says when
  it guessed;
- anything else (a type changed, a constraint tightened, a required field
  without a default): a person writes it; the step raises
  ``NotImplementedError`` and its docstring holds the field's old and new
  schema, so ``versioned-tasks check`` keeps failing until it is written.

Each step is written as a module ``<package>/task_migrations/<task>_v<N>_to_v<N+1>.py``
with a module-level ``@upcaster`` (and a ``@downcaster`` when the task's
producers are pinned), beside a corpus case ``<payloads>/<task>/v<N>/<slug>.json``
(a valid payload of the locked version) and, for a complete step,
``<slug>.expected.json`` (what it upcasts to today). The app imports
``task_migrations`` packages by itself (``huey.check_schemas()``).
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from huey.api import Task
from pydantic_core import to_jsonable_python

from ..app.declare import MIGRATIONS_PACKAGE
from ..app.huey import VersionedHuey
from ..exceptions import ConfigurationError
from ..schema.diff import classify, strip_annotations
from ..schema.examples import example
from ..schema.registry import TaskSpec
from .lock import review_lock, task_schema
from .payloads import current_payload, read_payload

__all__ = [
    "Change",
    "Step",
    "VersionEdit",
    "Written",
    "edit_version",
    "parse_field_renames",
    "plan_migrations",
    "summary",
    "write_step",
]

ChangeKind = Literal["set_default", "optional", "widened", "dropped", "renamed", "needs_person"]

DEFAULT_SLUG: Final = "example"
#: The line length the written modules keep to (ruff's default).
_WIDTH: Final = 88
_PACKAGE_DOC: Final = (
    '"""Upcasters written by `versioned-tasks makemigrations`; imported by the app."""\n'
)


@dataclass(frozen=True)
class Change:
    """One field's change between two versions and what the step does about it.

    Attributes:
        kind: ``set_default``, ``optional``, ``widened``, ``dropped``,
            ``renamed``, or ``needs_person``.
        name: the field (its old name for a rename).
        new_name: the new name of a renamed field.
        default: the default that ``set_default`` writes (JSON form).
        old: the field's JSON Schema at the older version (None when added).
        new: the field's JSON Schema at the newer version (None when removed).
        guessed: a rename that was not asked for but inferred.
        why: for ``needs_person``, what changed, in words.
    """

    kind: ChangeKind
    name: str
    new_name: str | None = None
    default: Any = None
    old: Any = None
    new: Any = None
    guessed: bool = False
    why: str = ""


@dataclass
class Step:
    """One upcaster to write: ``task`` from ``from_version`` to the next.

    Attributes:
        bump: the task's declared version must go up to ``from_version + 1``
            (the schema changed without a version bump).
        downcaster: also write the step back down (the task's producers are pinned).
        path: the migration module.
        source: its text.
        case: the corpus case (a payload of ``from_version``) and its path.
        expected: what the case upcasts to today (None when a person must
            write the step, or the example could not be read).
    """

    task: str
    from_version: int
    changes: list[Change]
    bump: bool
    downcaster: bool
    path: Path
    source: str = ""
    case_path: Path | None = None
    case: dict[str, Any] | None = None
    expected: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the step is written whole (no field needs a person)."""
        return all(change.kind != "needs_person" for change in self.changes)

    @property
    def function_name(self) -> str:
        """The upcaster's function name: ``<task>_v<N>_to_v<N+1>``."""
        stem = re.sub(r"\W", "_", self.task.rpartition(".")[2]) or "task"
        return f"{stem}_v{self.from_version}_to_v{self.from_version + 1}"


@dataclass(frozen=True)
class Written:
    """What writing one file did: ``created``, ``unchanged``, or ``refused`` (a person
    edited it)."""

    path: Path
    status: Literal["created", "unchanged", "refused"]


@dataclass(frozen=True)
class VersionEdit:
    """The one-line change of a task's decorator that bumps its version.

    Attributes:
        path: the source file, or None when the function's source is not found.
        line: the 1-based line of ``version=`` (or of the decorator).
        old: that line today.
        new: the line with the new version, or None when it is not a literal
            (then a person edits it).
    """

    path: Path | None
    line: int
    old: str
    new: str | None


def parse_field_renames(values: Sequence[str]) -> dict[str, dict[str, str]]:
    """``TASK:OLD=NEW`` options into ``{task: {old: new}}``.

    Raises:
        ConfigurationError: a value not of that form.
    """
    renames: dict[str, dict[str, str]] = {}
    for value in values:
        task, colon, pair = value.rpartition(":")
        old, equals, new = pair.partition("=")
        if not colon or not equals or not task or not old or not new:
            raise ConfigurationError(
                f"--rename-field {value!r} is not TASK:OLD=NEW (for example "
                f"'billing.send_invoice:amount=total')."
            )
        renames.setdefault(task, {})[old] = new
    return renames


def plan_migrations(
    huey: VersionedHuey,
    lock: Mapping[str, Any],
    *,
    task: str | None = None,
    slug: str = DEFAULT_SLUG,
    field_renames: Mapping[str, Mapping[str, str]] | None = None,
    out: Path | None = None,
    payloads: Path = Path("tests/payloads"),
) -> list[Step]:
    """The steps the lock asks for: one per missing upcaster, in task and version order.

    Raises:
        ConfigurationError: ``task`` is not declared, a rename names a field the
            schemas do not have, or the task's function cannot be located.
    """
    registry = huey.schema
    if task is not None and task not in registry.specs:
        raise ConfigurationError(
            f"--task {task!r} is not a versioned task of app {huey.name!r}; pass its "
            f"logical name (one of: {', '.join(sorted(registry.specs)[:10]) or 'none'})."
        )
    review = review_lock(huey, lock)
    wanted: dict[str, set[int]] = {}
    for problem in review.problems:
        spec = registry.specs.get(problem.task)
        if spec is None or (task is not None and spec.name != task):
            continue
        entry = lock["tasks"].get(spec.name)
        if entry is None:
            continue
        if problem.kind == "schema_changed" and spec.version == entry["version"]:
            wanted.setdefault(spec.name, set()).add(spec.version)
        elif problem.kind == "missing_upcaster":
            steps = registry.upcasters.get(spec.name, {})
            locked = int(entry["version"])
            wanted.setdefault(spec.name, set()).update(
                v for v in range(locked, spec.version) if v not in steps
            )
    renames = field_renames or {}
    plan = []
    for name in sorted(wanted):
        spec = registry.specs[name]
        for version in sorted(wanted[name]):
            plan.append(
                _plan_step(huey, spec, lock, version, renames.get(name, {}), slug, out, payloads)
            )
    return plan


def _plan_step(
    huey: VersionedHuey,
    spec: TaskSpec,
    lock: Mapping[str, Any],
    version: int,
    renames: Mapping[str, str],
    slug: str,
    out: Path | None,
    payloads: Path,
) -> Step:
    versions = lock["tasks"][spec.name]["versions"]
    old = versions.get(str(version), {}).get("schema")
    bump = version == spec.version
    following = versions.get(str(version + 1), {}).get("schema")
    new = task_schema(spec) if bump or version + 1 == spec.version else following
    directory = out if out is not None else _migrations_dir(spec)
    step = Step(
        task=spec.name,
        from_version=version,
        changes=[],
        bump=bump,
        downcaster=spec.name in huey.schema.emit_versions,
        path=directory / f"{_file_stem(spec.name)}_v{version}_to_v{version + 1}.py",
    )
    if old is None or new is None:
        missing = version if old is None else version + 1
        step.changes.append(
            Change(
                "needs_person",
                "(payload)",
                why=f"the lock has no schema of version {missing} to compare",
            )
        )
    else:
        current = bump or version + 1 == spec.version
        step.changes = diff_fields(old, new, renames, _defaults(spec, new, current))
    step.source = render(step)
    if old is not None:
        _plan_case(huey, spec, step, old, slug, payloads)
    return step


def diff_fields(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    renames: Mapping[str, str],
    defaults: Mapping[str, Any],
) -> list[Change]:
    """The change of each field from ``old`` to ``new`` (two JSON Schemas of a payload).

    Raises:
        ConfigurationError: a rename of a field ``old`` does not have, or to one
            ``new`` does not have.
    """
    before, after = _fields(old), _fields(new)
    for was, now in renames.items():
        if was not in before or now not in after:
            raise ConfigurationError(
                f"--rename-field {was}={now}: the older version has fields "
                f"{sorted(before)} and the newer {sorted(after)}; name one of each."
            )
    removed = [n for n in before if n not in after and n not in renames]
    added = [n for n in after if n not in before and n not in renames.values()]
    moves = dict(renames)
    guessed = _guessed_rename(old, new, removed, added) if not renames else None
    if guessed is not None:
        moves[guessed[0]], removed, added = guessed[1], [], []
    changes: list[Change] = []
    for was, now in moves.items():
        changes.append(
            Change(
                "renamed", was, now, old=before[was], new=after[now], guessed=guessed is not None
            )
        )
        if not _same_shape(old, before[was], new, after[now]):
            moved = _field_change(now, old, before[was], new, after[now])
            if moved is not None:
                changes.append(moved)
    for name in removed:
        changes.append(Change("dropped", name, old=before[name]))
    for name in added:
        changes.append(_added(name, after[name], name in _required(new), defaults))
    for name in before:
        if name in after and name not in moves:
            change = _field_change(name, old, before[name], new, after[name])
            if change is not None:
                changes.append(change)
    return changes


def _guessed_rename(
    old: Mapping[str, Any], new: Mapping[str, Any], removed: list[str], added: list[str]
) -> tuple[str, str] | None:
    """The one field gone and the one come, when they have the same schema."""
    if len(removed) == 1 and len(added) == 1:
        was, now = removed[0], added[0]
        if _same_shape(old, _fields(old)[was], new, _fields(new)[now]):
            return was, now
    return None


def _added(name: str, schema: Any, required: bool, defaults: Mapping[str, Any]) -> Change:
    if name in defaults:
        default = defaults[name]
        if default is None:
            return Change("optional", name, new=schema)
        return Change("set_default", name, default=default, new=schema)
    if not required:
        return Change("optional", name, new=schema)
    return Change("needs_person", name, new=schema, why=f"{name!r} is required and has no default")


def _field_change(
    name: str, old_root: Mapping[str, Any], old: Any, new_root: Mapping[str, Any], new: Any
) -> Change | None:
    old_full, new_full = _with_defs(old_root, old), _with_defs(new_root, new)
    if strip_annotations(old_full) == strip_annotations(new_full):
        return None
    change = classify(old_full, new_full)
    if change.level in ("identical", "cosmetic"):
        return None
    if change.level == "compatible":
        return Change("widened", name, old=old, new=new, why=change.summary())
    return Change("needs_person", name, old=old, new=new, why=change.summary())


def _fields(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return dict(properties) if isinstance(properties, Mapping) else {}


def _required(schema: Mapping[str, Any]) -> set[str]:
    return set(schema.get("required", []) or [])


def _with_defs(root: Mapping[str, Any], schema: Any) -> Any:
    if isinstance(schema, Mapping) and "$defs" in root:
        return {**schema, "$defs": root["$defs"]}
    return schema


def _same_shape(
    old_root: Mapping[str, Any], old: Any, new_root: Mapping[str, Any], new: Any
) -> bool:
    def bare(root: Mapping[str, Any], schema: Any) -> Any:
        stripped = strip_annotations(_with_defs(root, schema))
        if isinstance(stripped, dict):
            stripped.pop("default", None)
        return stripped

    return bool(bare(old_root, old) == bare(new_root, new))


def _defaults(spec: TaskSpec, schema: Mapping[str, Any], current: bool) -> dict[str, Any]:
    """Defaults of the newer version's fields, in JSON form."""
    found = {
        name: sub["default"]
        for name, sub in _fields(schema).items()
        if isinstance(sub, Mapping) and "default" in sub
    }
    if current:
        for name, value in spec.defaults.items():
            try:
                found.setdefault(name, to_jsonable_python(value))
            except Exception:  # a default JSON cannot hold: a person sets it
                continue
    return found


# -- where things go ------------------------------------------------------------------


def _file_stem(task: str) -> str:
    return re.sub(r"\W", "_", task)


def _migrations_dir(spec: TaskSpec) -> Path:
    module = sys.modules.get(spec.func.__module__) if spec.func is not None else None
    source = getattr(module, "__file__", None)
    if module is None or source is None:
        raise ConfigurationError(
            f"Task {spec.name!r} version {spec.version}: the module of its function has no "
            f"file, so there is no package to write migrations beside; pass --out DIR."
        )
    base = Path(source).parent
    return base / MIGRATIONS_PACKAGE


def _plan_case(
    huey: VersionedHuey, spec: TaskSpec, step: Step, old: Mapping[str, Any], slug: str, root: Path
) -> None:
    try:
        case = example(old)
    except ValueError as exc:
        step.notes.append(f"no corpus case: the locked schema has no plain example ({exc})")
        return
    if not isinstance(case, dict):
        return
    step.case = case
    step.case_path = root / spec.name / f"v{step.from_version}" / f"{slug}.json"
    if not step.complete:
        return
    upcast = apply(step.changes, case)
    # The rest of the way: the chain after this step, then today's model.
    # Bumped, the step lands on today's model; else on the chain after it.
    outcome = read_payload(
        huey, spec.name, spec.version if step.bump else step.from_version + 1, upcast
    )
    if isinstance(outcome, Task):
        step.expected = current_payload(huey, spec.name, outcome)
    else:
        step.notes.append(
            f"no expected result for the corpus case: today's pipeline refuses the upcast "
            f"example ({getattr(outcome, 'reason', '?')})"
        )


def apply(changes: Sequence[Change], payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the written step does to ``payload`` (for the corpus case's expected result)."""
    result = copy.deepcopy(dict(payload))
    for change in changes:
        if change.kind == "set_default":
            result[change.name] = copy.deepcopy(change.default)
        elif change.kind == "dropped":
            result.pop(change.name, None)
        elif change.kind == "renamed" and change.new_name is not None:
            result[change.new_name] = result.pop(change.name)
    return result


# -- the module's text -----------------------------------------------------------------


def render(step: Step) -> str:
    """The migration module of ``step``: formatted as ruff formats it, typed for mypy --strict."""
    summary_text, old = summary(step), step.from_version
    lines = [
        f'"""Migration of {step.task!r}: version {old} to {old + 1}."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        f"from versioned_tasks import {'downcaster, upcaster' if step.downcaster else 'upcaster'}",
        "",
        "",
        f"@upcaster({_literal(step.task)}, from_version={step.from_version})",
        f"def {step.function_name}(payload: dict[str, Any]) -> dict[str, Any]:",
        *_body(step, summary_text),
    ]
    if step.downcaster:
        lines += ["", "", *_down(step)]
    return "\n".join(lines) + "\n"


def summary(step: Step) -> str:
    """The step's changes in a few words: ``add 'x' (default 1); drop 'y'``."""
    parts = []
    for change in step.changes:
        if change.kind == "set_default":
            parts.append(f"add {change.name!r} (default {change.default!r})")
        elif change.kind == "optional":
            parts.append(f"add the optional {change.name!r}")
        elif change.kind == "widened":
            parts.append(f"widen {change.name!r}")
        elif change.kind == "dropped":
            parts.append(f"drop {change.name!r}")
        elif change.kind == "renamed":
            parts.append(f"rename {change.name!r} to {change.new_name!r}")
        elif change.old is None:
            parts.append(f"fill the new {change.name!r}")
        else:
            parts.append(f"convert {change.name!r}")
    return "; ".join(parts) or "no field changed"


def _body(step: Step, summary: str) -> list[str]:
    person = [c for c in step.changes if c.kind == "needs_person"]
    first = f"Version {step.from_version} -> {step.from_version + 1}: {summary}."
    wrapped = textwrap.wrap(first, width=_WIDTH - 7, break_long_words=False)
    doc = [f'    """{wrapped[0]}', *(f"    {line}" for line in wrapped[1:])]
    if person:
        doc.append("")
        doc.append("    To write by hand (then delete the raise below):")
        for change in person:
            doc.append(f"    - {change.name!r}: {change.why}.")
            doc.append(f"      version {step.from_version}: {_schema_text(change.old)}")
            doc.append(f"      version {step.from_version + 1}: {_schema_text(change.new)}")
    if len(doc) == 1:
        doc[0] += '"""'
    else:
        doc.append('    """')
    unwritten = None
    if person:
        names = ", ".join(repr(c.name) for c in person)
        unwritten = (
            f"{step.task} v{step.from_version} -> v{step.from_version + 1}: write {names} "
            f"(see the docstring), then return the payload."
        )
    return _finish(doc, _operations(step.changes), unwritten)


def _finish(head: list[str], ops: list[str], unwritten: str | None) -> list[str]:
    """The function's lines after its docstring: the operations, then the return, or
    a raise of ``unwritten`` when a person must finish the step."""
    if unwritten is None and not ops:
        return [*head, "    return payload"]
    if unwritten is None:
        return [*head, "    payload = dict(payload)", *ops, "    return payload"]
    pieces = textwrap.wrap(unwritten, width=_WIDTH - 12, drop_whitespace=False)
    return [
        *head,
        *(["    payload = dict(payload)", *ops] if ops else []),
        "    raise NotImplementedError(",
        *(f"        {json.dumps(piece)}" for piece in pieces),
        "    )",
    ]


def _operations(changes: Sequence[Change]) -> list[str]:
    ops = []
    for change in changes:
        if change.kind == "set_default":
            ops.append(f"    payload[{_literal(change.name)}] = {_literal(change.default)}")
        elif change.kind == "dropped":
            ops.append(f"    payload.pop({_literal(change.name)}, None)")
        elif change.kind == "renamed":
            if change.guessed:
                ops.append(
                    f"    # Guessed: {change.name!r} became {change.new_name!r} (one field went, "
                    f"one came,"
                )
                ops.append("    # with the same schema): check it, or say so with --rename-field.")
            new, old = _literal(change.new_name), _literal(change.name)
            ops.append(f"    payload[{new}] = payload.pop({old})")
    return ops


def _down(step: Step) -> list[str]:
    """The step back down, for producers pinned to the older version."""
    newer, older = step.from_version + 1, step.from_version
    ops: list[str] = []
    person: list[str] = []
    for change in step.changes:
        if change.kind in ("set_default", "optional"):
            ops.append(f"    payload.pop({_literal(change.name)}, None)")
        elif change.kind == "renamed":
            new, old = _literal(change.new_name), _literal(change.name)
            ops.append(f"    payload[{old}] = payload.pop({new})")
        elif change.kind in ("dropped", "needs_person", "widened"):
            person.append(repr(change.name))
    lines = [
        f"@downcaster({_literal(step.task)}, from_version={newer})",
        f"def {step.function_name.replace(f'_v{older}_to_v{newer}', f'_v{newer}_to_v{older}')}(",
        "    payload: dict[str, Any],",
        ") -> dict[str, Any]:",
        f'    """Version {newer} -> {older}, for producers pinned to version {older}."""',
    ]
    unwritten = None
    if person:
        unwritten = (
            f"{step.task} v{newer} -> v{older}: write {', '.join(person)} back as version "
            f"{older} had it, then return the payload."
        )
    return _finish(lines, ops, unwritten)


def _literal(value: Any) -> str:
    """A JSON value as Python source, quoted as ruff formats it (double quotes)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    return repr(value)


def _schema_text(schema: Any) -> str:
    if schema is None:
        return "(absent)"
    return json.dumps(strip_annotations(schema), sort_keys=True)


# -- writing ---------------------------------------------------------------------------


def write_step(step: Step, *, dry_run: bool = False) -> list[Written]:
    """Write the step's module (and its package), corpus case and expected result.

    A file that exists with other content is never overwritten: it is
    ``refused`` (a person edited it). ``dry_run`` writes nothing and reports
    what would be created.
    """
    files: list[tuple[Path, str]] = [(step.path, step.source)]
    package = step.path.parent / "__init__.py"
    if not package.exists():
        files.insert(0, (package, _PACKAGE_DOC))
    if step.case is not None and step.case_path is not None:
        files.append((step.case_path, _json(step.case)))
        if step.expected is not None:
            files.append((step.case_path.with_suffix(".expected.json"), _json(step.expected)))
    results = []
    for path, text in files:
        if path.exists():
            same = path.read_text(encoding="utf-8") == text
            results.append(Written(path, "unchanged" if same else "refused"))
            continue
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        results.append(Written(path, "created"))
    return results


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- the version bump -------------------------------------------------------------------

_VERSION = re.compile(r"\bversion\s*=\s*(\d+)\b")


def edit_version(spec: TaskSpec, new_version: int, *, write: bool = False) -> VersionEdit:
    """Where the task's decorator says ``version=N``, and the line with ``new_version``.

    With ``write``, the file is edited in place when ``version=`` is a literal
    on one line of the decorator.
    """
    func = inspect.unwrap(spec.func) if spec.func is not None else None
    try:
        if func is None:
            raise TypeError
        source = inspect.getsourcefile(func)
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return VersionEdit(None, 0, "", None)
    if source is None:
        return VersionEdit(None, 0, "", None)
    header: list[str] = []
    for line in lines:
        if line.lstrip().startswith(("def ", "async def ")):
            break
        header.append(line)
    hits = []
    for offset, line in enumerate(header):
        found = _VERSION.search(line)
        if found is not None and int(found[1]) == spec.version:
            hits.append((start + offset, line))
    if len(hits) != 1:
        return VersionEdit(Path(source), start, header[0].rstrip("\n") if header else "", None)
    number, line = hits[0]
    new_line = _VERSION.sub(f"version={new_version}", line, count=1)
    if write:
        path = Path(source)
        text = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if text[number - 1] == line:
            text[number - 1] = new_line
            path.write_text("".join(text), encoding="utf-8")
    return VersionEdit(Path(source), number, line.rstrip("\n"), new_line.rstrip("\n"))
