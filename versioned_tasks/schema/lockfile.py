"""The lock file's format: reading, checking the shape of, and writing
``versioned-tasks.lock`` (the JSON Schemas of every task version, renames and
tombstones). Building and checking a lock against an app is ``ops/lock.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from .._version import __version__
from ..exceptions import LockFileError
from ..wire.envelope import MAX_VERSION
from .diff import canonical

__all__ = [
    "DEFAULT_LOCK_PATH",
    "LOCK_FORMAT",
    "Lock",
    "dump_lock",
    "fingerprint",
    "is_directory_name",
    "parse_lock",
    "read_lock",
    "version_schema",
    "write_lock",
]

#: The format this module reads and writes; a lock with another one is refused.
LOCK_FORMAT: Final = 1
#: Where the commands look for the lock file, relative to the current directory.
DEFAULT_LOCK_PATH: Final = "versioned-tasks.lock"

Lock = dict[str, Any]

_TOP_KEYS: Final = frozenset({"lock_format", "tasks", "renames", "tombstones"})
_TASK_KEYS: Final = frozenset(
    {"version", "upcasters_from", "allow_compatible_changes", "versions"}
)
_VERSION_KEYS: Final = frozenset({"fingerprint", "schema"})


def fingerprint(schema: Any) -> str:
    """``sha256:<hex>`` of the schema's canonical JSON (sorted keys, no spaces)."""
    return "sha256:" + hashlib.sha256(canonical(schema)).hexdigest()


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


def is_directory_name(task: str) -> bool:
    """Whether a task name can be a directory name on every platform.

    ``schema --out`` and the payload corpus give each task a directory. Not
    ``.``, ``..`` or hidden (a leading dot), and no ``/``, ``\\``, ``:`` or NUL.
    """
    return bool(task) and not task.startswith(".") and not any(c in task for c in "/\\\0:")


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
        if type(found) is not int or found != LOCK_FORMAT:
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
            raise self.fail(f"{where} version", f"is not an integer from 1 to {MAX_VERSION}")
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
        if not _is_version_key(key):
            shown = key if len(key) <= 40 else f"{key[:20]}...{key[-10:]}"
            raise self.fail(f"{where} versions", f"has the key {shown!r}, which is not a version")
        where = f"{where} version {key}"
        self._keys(self._mapping(recorded, where), _VERSION_KEYS, where)
        if not isinstance(recorded["schema"], dict | bool):
            raise self.fail(f"{where} schema", "is not a JSON Schema (an object)")
        if recorded["fingerprint"] != fingerprint(recorded["schema"]):
            raise self.fail(
                f"{where} fingerprint", "does not match its schema (was one edited by hand?)"
            )


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION


def _is_version_key(key: str) -> bool:
    # Checked as text before int(): Python refuses to convert thousands of digits.
    if not (0 < len(key) <= len(str(MAX_VERSION)) and key.isascii() and key.isdigit()):
        return False
    return not key.startswith("0") and int(key) <= MAX_VERSION


# -- checking -----------------------------------------------------------------------------
