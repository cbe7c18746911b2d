"""Helpers for testing versioned tasks: upcasts, a payload corpus, capture and strategies.

Every check here runs a payload through the app's own read pipeline, the one
the worker runs: an envelope is written at the payload's version, read back,
upcast step by step and validated against today's model. A test that passes
here is a message the worker runs.

    from versioned_tasks.testing import assert_upcasts, check_corpus

    def test_v1_invoice_upcasts() -> None:
        assert_upcasts(
            huey, "billing.send_invoice", {"invoice_id": 7},
            from_version=1, expected={"invoice_id": 7, "currency": "EUR"},
        )

    def test_corpus() -> None:
        check_corpus(huey, "tests/payloads")

The pytest plugin (``versioned_tasks.pytest_plugin``) turns the corpus into
collected tests on its own; :func:`payloads` needs the ``testing`` extra
(``hypothesis`` and ``hypothesis-jsonschema``).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
from huey.api import Task

from .app.huey import VersionedHuey, VersionedTaskWrapper
from .exceptions import ConfigurationError, DecodeError, SchemaError, VersionedTaskError
from .messages.readwrite import Newer, Rejected, Retired
from .ops.lock import DEFAULT_LOCK_PATH, is_directory_name, read_lock, version_schema
from .ops.payloads import current_payload, read_payload
from .schema.registry import TaskSpec

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "Captured",
    "Scrub",
    "Skipped",
    "Source",
    "TaskRef",
    "assert_upcasts",
    "capture_payloads",
    "check_corpus",
    "immediate",
    "payloads",
]

logger = logging.getLogger("versioned_tasks")

#: A task given by its logical name or by the task itself.
TaskRef = str | VersionedTaskWrapper[..., Any]
#: ``scrub(task, version, payload)``: the payload to write, or None to leave it out.
Scrub = Callable[[str, int, dict[str, Any]], "dict[str, Any] | None"]
#: Where :func:`capture_payloads` reads messages from.
Source = Literal["queue", "schedule", "dead_letters"]

_SOURCES: Final = ("queue", "schedule", "dead_letters")
_VERSION_DIR: Final = re.compile(r"v([1-9][0-9]{0,8})")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_SHOWN: Final = 600  # characters of a payload shown in a failure message
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

#: The lock file payloads() reads when none is given: the pytest plugin sets it
#: from ``versioned_tasks_lock``; otherwise ``versioned-tasks.lock`` in the
#: current directory.
_default_lock: Path | None = None


# -- immediate mode -----------------------------------------------------------------------


@contextmanager
def immediate(huey: VersionedHuey) -> Iterator[VersionedHuey]:
    """Run ``huey`` in immediate mode inside the block, then restore it as it was.

    Calling a task runs it at once (after the full envelope round trip). Each
    block runs on a new, empty in-memory storage, also when the app is in
    immediate mode already, so that nothing (results, queued or scheduled
    messages, dead letters) carries over from one block to the next; an app
    built with ``immediate_use_memory=False`` keeps its own storage instead.
    The app's mode and its own storage object are put back afterwards,
    without opening a new connection.
    """
    storage, was_immediate = huey.storage, huey.immediate
    use_memory = huey.immediate_use_memory
    huey.immediate_use_memory = False  # so that switching modes builds no storage
    try:
        huey.immediate = True
        if use_memory:
            huey.storage = huey.get_immediate_storage()
        yield huey
    finally:
        try:
            huey.immediate = was_immediate
        finally:
            huey.immediate_use_memory = use_memory
            huey.storage = storage


# -- assert_upcasts -----------------------------------------------------------------------


def assert_upcasts(
    huey: VersionedHuey,
    task: TaskRef,
    payload: Mapping[str, Any],
    *,
    from_version: int,
    expected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check that a payload written at ``from_version`` runs on today's code.

    The payload (named fields, as they were on the wire at ``from_version``)
    is framed into an envelope and read by the app's own read pipeline:
    renames are followed, the upcaster chain runs and today's model
    validates the result, exactly as in the worker.

    Args:
        huey: the app.
        task: the logical task name as it was on the wire (an old, renamed
            name works), or the task itself.
        payload: the named fields at ``from_version``, in JSON form.
        from_version: the schema version the payload was written at.
        expected: if given, the current payload (JSON form) it must upcast to.

    Returns:
        The validated current payload in JSON form, as a producer of today's
        version would write it (defaults included).

    Raises:
        AssertionError: naming the task, the version and the upcaster step or
            field that failed, or the fields that differ from ``expected``.
    """
    name = _task_name(task)
    _assert_schemas(huey)
    result = _upcast(huey, name, from_version, payload, "")
    if expected is not None:
        _assert_expected(name, from_version, result, expected)
    return result


def _task_name(task: TaskRef) -> str:
    if isinstance(task, VersionedTaskWrapper):
        return task.spec.name
    if isinstance(task, str) and task:
        return task
    raise ConfigurationError(
        f"Expected a logical task name or a versioned task, got {task!r}; pass "
        f"'module.task' or the decorated function."
    )


def _assert_schemas(huey: VersionedHuey) -> None:
    # The worker refuses to start with a broken chain: so does the test.
    try:
        huey.check_schemas()
    except SchemaError as exc:
        raise AssertionError(
            f"The app's declarations do not check, so no worker starts: {exc}"
        ) from None


def _upcast(
    huey: VersionedHuey, name: str, version: int, payload: Any, where: str
) -> dict[str, Any]:
    subject = f"{where}Task {name!r} version {version}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AssertionError(f"{subject}: versions are integers starting at 1.")
    if not isinstance(payload, Mapping):
        raise AssertionError(
            f"{subject}: the payload is a {type(payload).__name__}; a payload is a JSON "
            f"object of named fields."
        )
    try:
        outcome = read_payload(huey, name, version, payload)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise AssertionError(
            f"{subject}: the payload is not what an envelope carries ({exc}); write it in "
            f"JSON form (strings for dates and decimals, base64 for bytes, 64-bit integers)."
        ) from None
    except VersionedTaskError as exc:  # over the serializer's max_size or max_depth
        raise AssertionError(f"{subject}: no envelope can carry this payload: {exc}") from None
    if isinstance(outcome, Task):
        return current_payload(huey, name, outcome)
    raise AssertionError(_explain(huey, subject, name, version, payload, outcome))


def _explain(
    huey: VersionedHuey, subject: str, name: str, version: int, payload: Any, outcome: Any
) -> str:
    if isinstance(outcome, Newer):
        return (
            f"{subject} is newer than the app knows (version {outcome.known_version}); "
            f"a worker of this code would defer it, then dead-letter it as newer_version."
        )
    if isinstance(outcome, Retired):
        handler = huey.schema.tombstones[outcome.tombstone].handler
        fate = (
            f"goes to the tombstone handler {_describe(handler)}"
            if handler is not None
            else "is dead-lettered as 'retired' (the tombstone has no handler)"
        )
        return (
            f"{subject} is retired (tombstone {outcome.tombstone!r}): it {fate} and has no "
            f"current payload to upcast to."
        )
    assert isinstance(outcome, Rejected)
    # The lines below name the failing upcaster and its input; the worker's
    # traceback (the rest of the error) would repeat them.
    error = outcome.error.partition("\n")[0]
    lines = [f"{subject} would be dead-lettered as {outcome.reason!r} by the worker: {error}"]
    lines.extend(_trace(huey, name, version, payload, outcome.reason))
    return "\n".join(lines)


def _trace(
    huey: VersionedHuey, name: str, version: int, payload: Any, reason: str
) -> Iterable[str]:
    """Replays the chain step by step to name the upcaster and show what the model got."""
    resolved = huey.schema.resolve(name)
    spec = huey.schema.specs.get(resolved)
    if spec is None or reason not in ("upcast_failed", "invalid_payload"):
        return
    if resolved != name:
        yield f"  renamed: {name!r} -> {resolved!r}"
    chain = huey.schema.chain(resolved, version, spec.version) or ()
    current: Any = dict(payload)
    for step_version, step in enumerate(chain, start=version):
        label = f"{_describe(step)} (from_version={step_version})"
        try:
            current = step(dict(current))
        except Exception as exc:
            yield f"  failing upcaster: {label} raised {type(exc).__name__}: {exc}"
            yield f"  its input: {_show(current)}"
            return
        if not isinstance(current, dict):
            yield f"  failing upcaster: {label} returned {type(current).__name__}, not a dict"
            return
        yield f"  upcaster {label}: ok"
    if reason == "invalid_payload":
        yield f"  payload given to the version {spec.version} model: {_show(current)}"


def _describe(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


def _show(payload: Any) -> str:
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        text = repr(payload)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _assert_expected(
    name: str, version: int, actual: dict[str, Any], expected: Mapping[str, Any]
) -> None:
    want = dict(expected)
    if _same_json(actual, want):
        return
    lines = [f"Task {name!r} version {version} upcasts to a different payload:"]
    for key in sorted(want.keys() - actual.keys()):
        lines.append(f"  {key}: missing (expected {_show(want[key])})")
    for key in sorted(actual.keys() - want.keys()):
        lines.append(f"  {key}: not expected (got {_show(actual[key])})")
    for key in sorted(actual.keys() & want.keys()):
        if not _same_json(actual[key], want[key]):
            got, wanted = _show(actual[key]), _show(want[key])
            if got == wanted:  # the same text, another type: say which
                got = f"{got} ({type(actual[key]).__name__})"
                wanted = f"{wanted} ({type(want[key]).__name__})"
            lines.append(f"  {key}: got {got}, expected {wanted}")
    lines.append(f"  whole payload: {_show(actual)}")
    raise AssertionError("\n".join(lines))


def _same_json(a: Any, b: Any) -> bool:
    """Equality that tells JSON types apart: ``true`` is not ``1``, ``1.0`` is not ``1``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return _json_kind(a) == _json_kind(b) and bool(a == b)


def _json_kind(value: Any) -> str:
    for kind in (bool, int, float, str):  # bool first: it is an int too
        if isinstance(value, kind):
            return kind.__name__
    return type(value).__name__


# -- the corpus ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CorpusCase:
    """One corpus file: ``<root>/<task>/v<version>/<case>.json``."""

    path: Path
    task: str
    version: int
    case: str


def _parse_case_path(path: Path, root: Path) -> _CorpusCase:
    """The task, version and case name of a corpus file.

    Raises:
        AssertionError: the file is not at ``<task>/v<N>/<case>.json`` under ``root``.
    """
    parts = path.relative_to(root).parts
    match = _VERSION_DIR.fullmatch(parts[1]) if len(parts) == 3 else None
    if match is None or not parts[0] or path.suffix != ".json":
        raise AssertionError(
            f"Payload file {path}: corpus files live at <task>/v<N>/<case>.json under "
            f"{root} (for example billing.send_invoice/v1/basic.json); move or remove it."
        )
    return _CorpusCase(path, parts[0], int(match[1]), path.stem)


def _check_case(huey: VersionedHuey, case: _CorpusCase) -> dict[str, Any] | None:
    """Check one corpus file against the app (schemas are assumed checked).

    Returns:
        The current payload the case upcasts to, or None for a case of a task
        retired by a tombstone with a handler (the handler gets it).

    Raises:
        AssertionError: naming the file, the task, the version and what failed.
    """
    where = f"Payload file {case.path}: "
    try:
        payload = json.loads(case.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AssertionError(f"{where}cannot be read as JSON ({exc}).") from None
    retired = _retired_outcome(huey, case.task)
    if retired is not None:
        if retired:
            return None
        raise AssertionError(
            f"{where}Task {case.task!r} is retired by a tombstone without a handler, so "
            f"its messages are dead-lettered as 'retired'. Give the tombstone a handler, "
            f"or delete {case.path.parent.parent} if dead-lettering them is intended."
        )
    result = _upcast(huey, case.task, case.version, payload, where)
    expected_path = case.path.with_name(case.path.stem + EXPECTED_SUFFIX)
    if expected_path.is_file():
        try:
            expected = json.loads(expected_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AssertionError(
                f"{where}{expected_path} cannot be read as JSON ({exc})."
            ) from None
        try:
            _assert_expected(case.task, case.version, result, expected)
        except AssertionError as exc:
            raise AssertionError(f"{where}not what {expected_path.name} expects: {exc}") from None
    return result


def _retired_outcome(huey: VersionedHuey, task: str) -> bool | None:
    """None for a live task; else whether its tombstone has a handler."""
    tomb = huey.schema.tombstones.get(huey.schema.resolve(task))
    return None if tomb is None else tomb.handler is not None


#: The suffix of a case's expected result: ``<case>.expected.json`` beside ``<case>.json``.
EXPECTED_SUFFIX: Final = ".expected.json"


def _corpus_files(root: Path) -> list[Path]:
    """Every case file under ``root`` (``*.json`` but not ``*.expected.json``), sorted."""
    return sorted(
        p for p in root.rglob("*.json") if p.is_file() and not p.name.endswith(EXPECTED_SUFFIX)
    )


def check_corpus(huey: VersionedHuey, directory: str | os.PathLike[str]) -> int:
    """Check every payload of a corpus: ``<directory>/<task>/v<N>/<case>.json``.

    Each file holds one payload (named fields, JSON) written at version N of
    the task named by its directory (the name on the wire: renamed tasks keep
    their old directory). Each must upcast and validate against today's model
    through the app's read pipeline, and, when ``<case>.expected.json`` lies
    beside it, upcast to exactly that payload (JSON types compared). A case of
    a task retired by a tombstone with a handler passes (the handler gets such
    messages); without a handler it fails, since the worker dead-letters those
    messages.

    Returns:
        The number of cases checked.

    Raises:
        AssertionError: listing every failing file with the task, version and
            the upcaster step or field that failed.
    """
    root = Path(directory)
    if not root.is_dir():
        raise AssertionError(f"Payload corpus {root} is not a directory.")
    _assert_schemas(huey)
    files = _corpus_files(root)
    failures = []
    for path in files:
        try:
            _check_case(huey, _parse_case_path(path, root))
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(files)} payload file(s) in {root} fail:\n\n"
            + "\n\n".join(failures)
        )
    return len(files)


# -- capture ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skipped:
    """A stored message that :func:`capture_payloads` did not write, and why."""

    message: str
    reason: str


class Captured(list[Path]):
    """The files :func:`capture_payloads` wrote; ``skipped`` lists what it left out."""

    def __init__(self, paths: Iterable[Path] = (), skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(paths)
        self.skipped: list[Skipped] = list(skipped)


def capture_payloads(
    huey: VersionedHuey,
    directory: str | os.PathLike[str],
    *,
    source: Source = "queue",
    scrub: Scrub | None = None,
    limit: int | None = None,
) -> Captured:
    """Write corpus files from the messages stored in the queue, schedule or dead letters.

    Read-only: nothing is removed from storage. Each versioned task message
    becomes ``<directory>/<task>/v<N>/<id>.json`` (the name and version on the
    wire, the message id as case name): its payload, pretty-printed with
    sorted keys. A file that exists already is left alone.

    Args:
        huey: the app whose storage is read.
        directory: the corpus root, e.g. ``tests/payloads``.
        source: ``"queue"``, ``"schedule"`` or ``"dead_letters"``.
        scrub: ``scrub(task, version, payload)`` returns the payload to write
            (replace names, emails, tokens...), or None to leave it out. It
            runs before anything is written.
        limit: write at most this many files.

    Returns:
        The paths written, in storage order; its ``skipped`` attribute lists
        each message left out (not an envelope, not a versioned task, a
        positional message, already captured...) with the reason, also logged
        on the ``versioned_tasks`` logger.

    Raises:
        ConfigurationError: an unknown source, a negative limit, or a scrub
            function that returns something other than a dict or None.
    """
    if source not in _SOURCES:
        raise ConfigurationError(
            f"capture_payloads(source={source!r}): use one of {', '.join(_SOURCES)}."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(
            f"capture_payloads(limit={limit!r}): use None or an integer >= 0."
        )
    root = Path(directory)
    captured = Captured()
    for label, raw in _stored(huey, source):
        if limit is not None and len(captured) >= limit:
            break
        try:
            path = _capture_one(huey, root, raw, scrub)
        except _Skip as skip:
            captured.skipped.append(Skipped(label, str(skip)))
            logger.info("capture_payloads: skipped %s: %s", label, skip)
        else:
            captured.append(path)
    logger.info(
        "capture_payloads: wrote %d file(s) from the %s of %r into %s; skipped %d.",
        len(captured),
        source.replace("_", " "),
        huey.name,
        root,
        len(captured.skipped),
    )
    return captured


class _Skip(Exception):
    pass


def _stored(huey: VersionedHuey, source: str) -> Iterable[tuple[str, bytes]]:
    if source == "dead_letters":
        for entry in huey.dead_letters:
            yield f"dead letter {entry.id}", entry.raw
        return
    items = huey.storage.enqueued_items() if source == "queue" else huey.storage.scheduled_items()
    where = "queue" if source == "queue" else "schedule"
    for index, raw in enumerate(items):
        yield f"{where} message #{index}", bytes(raw)


def _capture_one(huey: VersionedHuey, root: Path, raw: bytes, scrub: Scrub | None) -> Path:
    try:
        header, body = huey.message_reader.unpack(raw)
    except DecodeError as exc:
        raise _Skip(f"not a readable envelope ({exc})") from None
    name, version, ident = header.get("task"), header.get("v"), header.get("id")
    if header.get("kind", "task") != "task" or not isinstance(name, str) or not name:
        raise _Skip("not a task message")
    if type(version) is not int or version < 1:
        raise _Skip(f"task {name!r} is not a versioned task message (no schema version)")
    if header.get("form") == "positional":
        raise _Skip(f"task {name!r} version {version} has positional arguments, not named fields")
    if not is_directory_name(name):
        raise _Skip(f"task name {name!r} cannot be a directory name")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _Skip(f"task {name!r} version {version}: body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _Skip(f"task {name!r} version {version}: body is not a JSON object")
    path = root / name / f"v{version}" / f"{_case_name(ident)}.json"
    if path.exists():
        raise _Skip(f"{path} exists already")
    if scrub is not None:
        payload = _scrubbed(scrub, name, version, payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pretty(payload))
    return path


def _scrubbed(scrub: Scrub, name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    cleaned = scrub(name, version, payload)
    if cleaned is None:
        raise _Skip(f"task {name!r} version {version}: left out by scrub")
    if not isinstance(cleaned, dict):
        raise ConfigurationError(
            f"capture_payloads: scrub({name!r}, {version}, payload) returned a "
            f"{type(cleaned).__name__}; return the payload dict, or None to leave it out."
        )
    return cleaned


def _case_name(ident: Any) -> str:
    text = _UNSAFE.sub("_", str(ident)).strip("._")
    return text[:120] or "case"


def _pretty(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as an escape
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("ascii")


# -- hypothesis strategies ------------------------------------------------------------------


def payloads(
    huey: VersionedHuey,
    task: TaskRef,
    *,
    version: int | None = None,
    lock: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """A hypothesis strategy of valid payloads of a task, in JSON form.

    For the current version (``version=None``), payloads are drawn from the
    JSON Schema of today's model and kept only if the model accepts them (a
    model may be stricter than its schema). For an older version, they are
    drawn from the JSON Schema that the lock file recorded for it. Either
    way, only payloads an envelope carries exactly (64-bit integers, finite
    numbers) are kept.

    The strategy is built when hypothesis first draws from it, so a problem
    (an unknown task, a version missing from the lock) fails the test that
    uses it, not the import of the test module.

    Args:
        huey: the app.
        task: the logical task name, or the task itself.
        version: the schema version (default: the current one).
        lock: the lock file (a path, or the dict ``read_lock`` returns), for
            versions older than the current one. Default: the pytest plugin's
            ``versioned_tasks_lock``, else ``versioned-tasks.lock`` in the
            current directory.

    Raises:
        ConfigurationError: an unknown task, a version newer than the task's,
            an older version missing from the lock file, an unreadable lock
            file, or the ``testing`` extra not installed.
    """
    try:
        from hypothesis import strategies
    except ImportError:
        raise _missing_extra() from None
    name = _task_name(task)
    return strategies.deferred(lambda: _payload_strategy(huey, name, version, lock))


def _payload_strategy(
    huey: VersionedHuey,
    name: str,
    version: int | None,
    lock: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> SearchStrategy[dict[str, Any]]:
    spec = huey.schema.specs.get(huey.schema.resolve(name))
    if spec is not None and (version is None or version == spec.version):
        return _from_schema(spec.json_schema()).filter(_accepted_by(spec))
    if version is None:
        raise ConfigurationError(
            f"payloads(): {name!r} is not a versioned task of this app; pass a declared "
            f"task, or an older version of a task that is gone (its schema comes from "
            f"the lock file)."
        )
    if spec is not None and version > spec.version:
        raise ConfigurationError(
            f"payloads(): task {name!r} is at version {spec.version}; version {version} "
            f"does not exist yet."
        )
    return _from_schema(_locked_schema(name, spec, version, lock)).filter(_carried)


def _missing_extra() -> ConfigurationError:
    return ConfigurationError(
        "payloads() needs hypothesis and hypothesis-jsonschema; install versioned-tasks[testing]."
    )


def _from_schema(schema: dict[str, Any]) -> SearchStrategy[Any]:
    try:
        from jsonschema.validators import validator_for  # type: ignore[import-untyped]
    except ImportError:
        raise _missing_extra() from None
    validator = validator_for(schema)(schema)
    strategy: SearchStrategy[Any] = _SchemaStrategies(schema).build(schema)
    return strategy.filter(validator.is_valid)


class _SchemaStrategies:
    """Strategies for the JSON Schema a pydantic model produces.

    Structure (objects, arrays, ``$ref``, ``anyOf``, enums) is built here;
    scalar leaves go to hypothesis-jsonschema, which knows numeric bounds,
    lengths and patterns. Its own object strategy relies on Hypothesis
    internals that newer Hypothesis releases changed, so objects never reach
    it. String formats pydantic writes are drawn as real values and written
    the way pydantic writes them. Whatever is drawn is checked against the
    whole schema afterwards.
    """

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, SearchStrategy[Any]] = {}

    def build(self, schema: Any) -> SearchStrategy[Any]:
        """The strategy for one (sub)schema."""
        from hypothesis import strategies as st

        if schema is False:
            return st.nothing()
        if schema is True or not isinstance(schema, Mapping) or not schema:
            return _json_values()
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]))
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.build(option) for option in schema[key]])
        if "allOf" in schema:
            return self.build(schema["allOf"][0])  # the rest: the final check
        return self._typed(schema)

    def _typed(self, schema: Mapping[str, Any]) -> SearchStrategy[Any]:
        from hypothesis import strategies as st

        kinds = schema.get("type")
        if isinstance(kinds, list):
            return st.one_of([self.build({**schema, "type": kind}) for kind in kinds])
        if kinds == "object" or (kinds is None and "properties" in schema):
            return self._object(schema)
        if kinds == "array":
            return self._array(schema)
        if kinds == "string" and schema.get("format") in _FORMATS:
            return self._format(str(schema["format"]))
        if kinds is None:
            return _json_values()
        return self._leaf(schema)

    def _ref(self, ref: str) -> SearchStrategy[Any]:
        from hypothesis import strategies as st

        if ref not in self.refs:
            target: Any = self.root
            for part in ref.removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            # Deferred, so that a model that contains itself can be drawn.
            self.refs[ref] = st.deferred(lambda: self.build(target))
        return self.refs[ref]

    def _object(self, schema: Mapping[str, Any]) -> SearchStrategy[Any]:
        from hypothesis import strategies as st

        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: self.build(v) for k, v in properties.items() if k in required}
        optional = {k: self.build(v) for k, v in properties.items() if k not in required}
        strategy = st.fixed_dictionaries(fixed, optional=optional)
        extra = schema.get("additionalProperties", True)
        if extra is False or properties:
            return strategy
        names = self.build(schema.get("propertyNames", {"type": "string"}))
        more = st.dictionaries(names, self.build(extra), max_size=4)
        return st.tuples(strategy, more).map(lambda pair: {**pair[1], **pair[0]})

    def _array(self, schema: Mapping[str, Any]) -> SearchStrategy[Any]:
        from hypothesis import strategies as st

        prefix = [self.build(item) for item in schema.get("prefixItems", ())]
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        items = schema.get("items", True)
        if prefix and (items is False or (high is not None and high <= len(prefix))):
            return st.tuples(*prefix).map(list)
        unique = bool(schema.get("uniqueItems"))
        rest = st.lists(
            self.build(items),
            min_size=max(0, low - len(prefix)),
            max_size=None if high is None else int(high) - len(prefix),
            unique_by=(lambda v: json.dumps(v, sort_keys=True)) if unique else None,
        )
        if not prefix:
            return rest
        return st.tuples(st.tuples(*prefix), rest).map(lambda pair: [*pair[0], *pair[1]])

    def _format(self, name: str) -> SearchStrategy[Any]:
        from hypothesis import strategies as st
        from pydantic import TypeAdapter

        python_type, strategy = _FORMATS[name](st)

        adapter: TypeAdapter[Any] = TypeAdapter(python_type)
        return strategy.map(lambda value: adapter.dump_python(value, mode="json"))

    def _leaf(self, schema: Mapping[str, Any]) -> SearchStrategy[Any]:
        from hypothesis_jsonschema import from_schema

        leaf = dict(schema)
        if leaf.get("type") == "integer":
            # What an envelope carries exactly: 64-bit integers.
            leaf["minimum"] = max(leaf.get("minimum", _INT_MIN), _INT_MIN)
            leaf["maximum"] = min(leaf.get("maximum", _INT_MAX), _INT_MAX)
        strategy: SearchStrategy[Any] = from_schema(leaf)
        return strategy


def _json_values() -> SearchStrategy[Any]:
    """Any JSON value an envelope carries exactly (for ``Any`` and unannotated fields)."""
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=_INT_MIN, max_value=_INT_MAX)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    )


def _bytes_format(urlsafe: bool) -> Callable[[Any], tuple[type[Any], SearchStrategy[Any]]]:
    def strategy(st: Any) -> tuple[type[Any], SearchStrategy[Any]]:
        encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
        return str, st.binary(max_size=24).map(lambda raw: encode(raw).decode("ascii"))

    return strategy


#: String formats in pydantic's schemas: the Python type and a strategy of its values.
_FORMATS: Final[dict[str, Callable[[Any], tuple[type[Any], SearchStrategy[Any]]]]] = {
    "date-time": lambda st: (
        datetime.datetime,
        st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    ),
    "date": lambda st: (datetime.date, st.dates()),
    "time": lambda st: (datetime.time, st.times()),
    "duration": lambda st: (datetime.timedelta, st.timedeltas()),
    "uuid": lambda st: (uuid.UUID, st.uuids()),
    "base64url": _bytes_format(urlsafe=True),
    "base64": _bytes_format(urlsafe=False),
}


def _accepted_by(spec: TaskSpec) -> Callable[[Any], bool]:
    def accepted(payload: Any) -> bool:
        if not _carried(payload):
            return False
        try:
            spec.validate_payload(payload)
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            return False
        return True

    return accepted


def _carried(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    try:
        orjson.dumps(payload)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return True


def _locked_schema(
    name: str,
    spec: TaskSpec | None,
    version: int,
    lock: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> dict[str, Any]:
    if lock is None:
        lock = _default_lock if _default_lock is not None else Path(DEFAULT_LOCK_PATH)
    data = read_lock(lock) if not isinstance(lock, Mapping) else lock
    # A renamed task's history may sit under its old or its new name.
    names = [name] if spec is None or spec.name == name else [name, spec.name]
    for candidate in names:
        schema = version_schema(data, candidate, version)
        if schema is not None:
            return schema
    raise ConfigurationError(
        f"payloads(): the lock file has no schema for task {name!r} version {version}; "
        f"versions there: {_locked_versions(data, names) or 'none'}. Run "
        f"'versioned-tasks lock' while that version is current to record it."
    )


def _locked_versions(lock: Mapping[str, Any], names: list[str]) -> str:
    tasks = lock.get("tasks")
    found: set[int] = set()
    for name in names:
        entry = tasks.get(name) if isinstance(tasks, Mapping) else None
        versions = entry.get("versions") if isinstance(entry, Mapping) else None
        if isinstance(versions, Mapping):
            found.update(int(v) for v in versions if str(v).isdigit())
    return ", ".join(map(str, sorted(found)))
