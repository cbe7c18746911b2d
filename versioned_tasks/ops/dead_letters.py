"""Operations on dead letters shared by the command line and the console.

- :func:`decode`: the envelope of an entry, for showing (never unpickled);
- :func:`preview`: what a replay would do today, changing nothing;
- :func:`editable` and :func:`edited_message`: the arguments of an entry as
  JSON to edit, and the envelope the edited arguments make, validated against
  the task's current model;
- :func:`worker_warning`: whether any live worker can run what a replay enqueues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from ..app import fleet as _fleet
from ..app.huey import VersionedHuey
from ..app.serializer import VersionedSerializer
from ..exceptions import DecodeError, InvalidArguments, MessageRejected, VersionedTaskError
from ..messages import legacy as _legacy
from ..storage.deadletters import DeadLetter
from ..wire import envelope as _envelope

__all__ = [
    "Decoded",
    "Editable",
    "NotEditable",
    "Verdict",
    "decode",
    "editable",
    "edited_message",
    "preview",
    "replay_target",
    "worker_warning",
]

#: Header keys of the positional form, dropped when edited arguments are written
#: as named fields.
_POSITIONAL_KEYS = ("form", "params")


class NotEditable(VersionedTaskError):
    """A dead letter whose arguments cannot be edited (the message says why)."""

    def __init__(self, id: str, why: str) -> None:
        self.id = id
        super().__init__(f"Dead letter {id!r} cannot be edited: {why}")


@dataclass(frozen=True)
class Decoded:
    """An entry's bytes read as an envelope, for showing.

    ``header`` and ``body`` are None for bytes that are no envelope; ``problem``
    says why, or that a signature was not verified.
    """

    header: dict[str, Any] | None
    body: Any
    problem: str | None


def decode(raw: bytes, app: Any) -> Decoded:
    """Parse an envelope for showing; anything else stays bytes (never unpickled).

    The app's own serializer checks signatures; an envelope whose signature does
    not check is still shown, marked as unverified.
    """
    unpack = getattr(app.serializer, "unpack", None) or VersionedSerializer().unpack
    problem = None
    try:
        header, body = unpack(raw)
    except DecodeError as exc:
        inner = _envelope.signed_content(raw)
        if inner is None:
            return Decoded(None, None, str(exc))
        try:
            limit = max(len(inner), _envelope.DEFAULT_MAX_SIZE)
            header, body = VersionedSerializer(max_size=limit).unpack(inner)
        except DecodeError:
            return Decoded(None, None, str(exc))
        problem = f"Signature not verified, shown as written: {exc}"
    try:
        return Decoded(header, orjson.loads(body), problem)
    except orjson.JSONDecodeError as exc:
        return Decoded(header, None, f"Envelope body is not valid JSON: {exc}")


@dataclass(frozen=True)
class Verdict:
    """What a replay would do now: ``ok`` when it would be enqueued."""

    ok: bool
    text: str


def preview(app: VersionedHuey, entry: DeadLetter) -> Verdict:
    """What a replay of ``entry`` would do now, without enqueueing or changing anything."""
    if entry.corrupt:
        return Verdict(False, "would fail: the stored entry is corrupt; recover it by hand")
    if _legacy.is_legacy(entry.raw):
        # Reading it would unpickle it, even with legacy_pickle on: only a
        # real replay, asked for by name, may do that.
        return Verdict(
            False,
            "not checked: legacy pickle, which is unpickled only by a replay of this "
            "entry on an app with legacy_pickle=True",
        )
    try:
        task = app.deserialize_task(entry.raw)
    except MessageRejected as exc:
        if exc.reason == "retired" and _has_tombstone_handler(app, exc.task):
            return Verdict(True, f"would go to the tombstone handler of {exc.task!r}")
        return Verdict(False, f"would fail again ({exc.reason}): {exc.error}")
    return Verdict(True, f"would run as {_describe_task(entry, task)}")


def _has_tombstone_handler(app: VersionedHuey, task: str | None) -> bool:
    if task is None:
        return False
    tomb = app.schema.tombstones.get(app.schema.resolve(task))
    return tomb is not None and tomb.handler is not None


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe_task(entry: DeadLetter, task: Any) -> str:
    spec = getattr(type(task), "_vt_spec", None)
    if spec is None:  # a plain @huey.task(): its registry key is its name on the wire
        name, version = f"{type(task).__module__}.{type(task).__name__}", None
    else:
        name, version = spec.name, spec.version
    steps = [f"{name} v{version}" if version is not None else name]
    if entry.task is not None and entry.task != name:
        steps.append(f"renamed from {entry.task}")
    if version is not None and entry.version is not None and entry.version < version:
        steps.append(f"upcast {entry.version}->{version}")
    arguments = ", ".join(
        [*(repr(a) for a in task.args), *(f"{k}={v!r}" for k, v in task.kwargs.items())]
    )
    return f"{', '.join(steps)} with ({_shorten(arguments, 200)})"


# -- editing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Editable:
    """The arguments of an entry, ready to edit.

    Attributes:
        task: the task's current logical name (after renames).
        version: the task's current version, which the edited message is written at.
        arguments: the named arguments (upcast to ``version`` where the chain runs).
        note: what to know before editing (say, an upcast that failed), or None.
    """

    task: str
    version: int
    arguments: dict[str, Any]
    note: str | None = None


def _envelope_of(app: VersionedHuey, entry: DeadLetter) -> tuple[dict[str, Any], bytes, Any]:
    if entry.corrupt:
        raise NotEditable(entry.id, "the stored entry is corrupt; recover it by hand.")
    if _legacy.is_legacy(entry.raw):
        raise NotEditable(
            entry.id, "it is a legacy pickle; replay it with --legacy-pickle instead."
        )
    try:
        header, body = app.serializer.unpack(entry.raw)
    except DecodeError as exc:
        raise NotEditable(entry.id, f"it is not a readable envelope ({exc}).") from None
    name = header.get("task")
    if type(name) is not str:
        raise NotEditable(entry.id, "its envelope names no task.")
    resolved = app.schema.resolve(name)
    spec = app.schema.specs.get(resolved)
    if spec is None:
        raise NotEditable(
            entry.id,
            f"task {name!r} is not a versioned task of this app; declare it (or rename it) first.",
        )
    return header, body, spec


def editable(app: VersionedHuey, entry: DeadLetter) -> Editable:
    """The entry's arguments as a JSON object to edit, at the task's current version.

    Raises:
        NotEditable: corrupt, legacy pickle, not an envelope, or no versioned
            task of this app.
    """
    header, body, spec = _envelope_of(app, entry)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Editable(spec.name, spec.version, {}, "The body is not JSON; start from {}.")
    if header.get("form") == "positional" or type(payload) is not dict:
        note = "The message passed positional arguments; name them."
        return Editable(spec.name, spec.version, {}, note)
    version = header.get("v")
    if type(version) is int and version < spec.version:
        chain = app.schema.chain(spec.name, version, spec.version)
        try:
            if chain is None:
                raise LookupError(f"no upcaster chain from version {version}")
            for step in chain:
                payload = step(payload)
        except Exception as exc:
            note = (
                f"Shown as written at version {version} (the upcast failed: {exc}); "
                f"edit it to fit version {spec.version}."
            )
            return Editable(spec.name, spec.version, orjson.loads(body), note)
    return Editable(spec.name, spec.version, dict(payload))


def edited_message(app: VersionedHuey, entry: DeadLetter, arguments: Any) -> bytes:
    """The entry's message with ``arguments`` in place of its own, at the task's
    current version: same id, scheduling fields and callbacks.

    Raises:
        InvalidArguments: the arguments do not fit the task's current model.
        NotEditable: see :func:`editable`.
    """
    header, _, spec = _envelope_of(app, entry)
    if type(arguments) is not dict:
        raise InvalidArguments(
            task=spec.name,
            version=spec.version,
            errors=[{"loc": (), "msg": "the arguments must be a JSON object", "type": "dict"}],
        )
    try:
        value = spec.validator.validate_json(orjson.dumps(arguments))
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors(include_url=False, include_input=False)]
        raise InvalidArguments(task=spec.name, version=spec.version, errors=errors) from None
    body = spec.serializer.to_json(value, by_alias=True, round_trip=True)
    fields = {k: v for k, v in header.items() if k not in _POSITIONAL_KEYS}
    fields.update(task=spec.name, v=spec.version)
    frame = app.message_writer.frame
    return bytes(frame(orjson.dumps(fields), body))


# -- the fleet ------------------------------------------------------------------------


def replay_target(app: VersionedHuey, entry: DeadLetter) -> tuple[str, int] | None:
    """The versioned task and version a replay of ``entry`` would enqueue, if known."""
    if entry.task is None:
        return None
    spec = app.schema.specs.get(app.schema.resolve(entry.task))
    return None if spec is None else (spec.name, spec.version)


def worker_warning(app: VersionedHuey, entries: list[DeadLetter]) -> str | None:
    """Why a replay of ``entries`` may bounce, or None when the fleet can run them.

    A replayed message is written at the task's version in this app; a live
    worker that knows the task at that version or later runs it. With no live
    worker (or heartbeats off), nothing is known to run it.
    """
    workers = _fleet.live_workers(app)
    if not workers:
        return (
            f"No live worker of queue {app.name!r} is publishing a heartbeat (heartbeats "
            f"are {'on' if app.fleet_enabled else 'off'} in this app): nothing shows that "
            f"a worker can run the replayed messages."
        )
    missing: dict[tuple[str, int], int] = {}
    for entry in entries:
        target = replay_target(app, entry)
        if target is None:
            continue
        name, version = target
        if not any(w.tasks.get(name, 0) >= version for w in workers):
            missing[target] = missing.get(target, 0) + 1
    if not missing:
        return None
    listed = ", ".join(f"{name} v{version}" for name, version in sorted(missing))
    return (
        f"No live worker of queue {app.name!r} runs {listed}: a worker that does not know "
        f"it dead-letters or defers it again. Deploy the new code to the workers first."
    )
