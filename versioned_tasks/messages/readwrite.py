"""Bytes to Huey tasks and back: the read pipeline and the message writer.

The read pipeline, one small stage each; the stage that fails names the reason::

    bytes -> envelope?            (else ``undecodable``)
          -> signature ok?        (else ``bad_signature``; done by the serializer)
          -> rename -> tombstone? -> known task? (else ``unknown_task``)
          -> older: upcast chain  (``upcast_failed``)
             newer: deferred      (``newer_version`` once too old)
          -> validate             (``invalid_payload``)
          -> Huey Task

The same :class:`Reader` serves the worker, the scheduler, the listings,
replay and the CLI. It has no side effects: what to do with a rejected,
newer or retired message is up to the caller.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson
import pydantic_core
from huey.api import Task
from huey.registry import Message
from huey.utils import ChordConfig
from pydantic import ValidationError

from .._version import __version__
from ..exceptions import (
    DecodeError,
    DowncastFailed,
    EncodeError,
    InvalidArguments,
    SchemaError,
    SignatureError,
)
from ..schema.registry import SchemaRegistry, TaskSpec, bind_positional
from ..wire import envelope as _envelope
from ..wire import values as _codec
from .reasons import REASONS, Reason

__all__ = [
    "REASONS",
    "Newer",
    "Reader",
    "Reason",
    "Rejected",
    "Retired",
    "RetiredMessage",
    "Writer",
    "new_task",
    "wire_origin",
]


logger = logging.getLogger("versioned_tasks")

PRODUCER: Final = f"versioned_tasks/{__version__}"
_FORM_POSITIONAL: Final = "positional"
#: Longest retry delay or timeout read from a header: ten years, in seconds.
_MAX_SECONDS: Final = 10 * 365 * 24 * 3600.0
_NUMBER: Final = (int, float)

Unpack = Callable[[bytes], tuple[dict[str, Any], bytes]]
Frame = Callable[[bytes, bytes], bytes]
#: ``emit(spec)``: the version a producer writes a task at (``emit_versions``).
Emit = Callable[[TaskSpec], int]
#: ``check(task, version, payload)``: why a payload does not fit that older
#: version's schema, or None when it fits (or nothing says what it is).
OldSchemaCheck = Callable[[str, int, Any], "str | None"]


# -- outcomes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """The message cannot run; it belongs in the dead-letter store."""

    reason: Reason
    task: str | None
    version: int | None
    error: str
    #: The message's Huey task id, when its header has one.
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Newer:
    """The message, or one of its callbacks, is newer than this worker knows.

    ``task`` and ``version`` are the message's own; ``detail`` says which part
    is too new.
    """

    task: str
    version: int | None
    known_version: int
    enqueued_at: float | None
    priority: Any
    detail: str
    #: The message's Huey task id, when its header has one.
    id: str | None = None
    #: When it was due (the header's naive ``eta``, in the app's clock), if scheduled.
    eta: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class RetiredMessage:
    """A message of a tombstoned task, as handed to the tombstone's handler.

    Attributes:
        task: the task name on the wire (before any rename).
        version: the schema version on the wire (None for an unversioned message).
        payload: the arguments as they were on the wire, not upcast: the named
            fields, or ``{"args": [...], "kwargs": {...}}`` for a positional message.
        id: the Huey task id.
    """

    task: str
    version: int | None
    payload: Any
    id: str


@dataclass(frozen=True, slots=True)
class Retired:
    """The message names a tombstoned task."""

    message: RetiredMessage
    tombstone: str
    priority: Any


#: What the read pipeline makes of a message: a runnable Huey Task, or why not.
Outcome: TypeAlias = "Task | Rejected | Newer | Retired"


class _Reject(Exception):
    def __init__(self, reason: Reason, error: str) -> None:
        self.reason = reason
        self.error = error


class _Defer(Exception):
    def __init__(self, task: str, version: int, known: int) -> None:
        self.task = task
        self.version = version
        self.known = known


# -- reading ------------------------------------------------------------------


class Reader:
    """Turns stored bytes into an :data:`Outcome`, never raising for bad bytes."""

    def __init__(
        self,
        registry: SchemaRegistry,
        unpack: Unpack,
        plain_task: Callable[[str], type[Task] | None],
        *,
        max_depth: int = _envelope.DEFAULT_MAX_DEPTH,
    ) -> None:
        self.registry = registry
        self.unpack = unpack
        self.plain_task = plain_task
        #: The reader's serializer's max_depth: a callback nested so deep that
        #: its header could not be written again by this app is refused.
        self.max_depth = max_depth

    def read(self, raw: bytes) -> Outcome:
        """Run the whole pipeline on one stored message; never raises for bad bytes."""
        try:
            header, body = self.unpack(raw)
            if _PLAIN_HEADER.issuperset(header):
                # The hot path, inline: named fields, no scheduling fields, no
                # callbacks. Anything unusual falls through to the full
                # pipeline, which names the reason.
                name, version, ident = header.get("task"), header.get("v"), header.get("id")
                # A declared name that is also renamed or retired (possible
                # before the schema check) is not runnable.
                spec = self.registry.runnable.get(name) if type(name) is str else None
                if (
                    spec is not None
                    and type(version) is int
                    and type(ident) is str
                    and ident
                    and header.get("kind") == _KIND_TASK
                ):
                    if version == spec.version:
                        try:
                            value = spec.validator.validate_json(body)
                        except ValidationError:
                            value = _NO_VALUE  # the full pipeline names the reason
                    else:
                        value = self._older_value(spec, version, body)
                    if value is not _NO_VALUE:
                        at = header.get("at")
                        wire = (spec.version, None, at if type(at) in _NUMBER else None)
                        args, kwargs = ((value,), {}) if spec.model is not None else ((), value)
                        task: Task = spec.make_task(args, kwargs, ident, wire)
                        if version != spec.version:
                            task._vt_from = (name, version)  # see wire_origin()
                        return task
            return self._read_general(header, body)
        except SignatureError as exc:
            return Rejected("bad_signature", None, None, str(exc))
        except DecodeError as exc:
            return Rejected("undecodable", None, None, str(exc))
        except Exception as exc:
            # A safety net: bytes built to hit a corner no stage foresaw (say,
            # nesting deep enough to exhaust the recursion limit) must still end
            # in the dead-letter store rather than raise out of dequeue().
            logger.exception("Unexpected error while reading a message.")
            return Rejected(
                "undecodable", None, None, f"Unreadable message ({type(exc).__name__}: {exc})"
            )

    def read_pure(self, raw: bytes) -> Task | None:
        """The runnable task in ``raw`` when reading it calls no user code; else None.

        That is a message :meth:`read` takes on its hot path (named fields, no
        scheduling fields, no callbacks) at the current version of a task
        whose arguments are all plain JSON types: no upcaster runs, and
        pydantic-core validates them without calling back into Python. A
        storage may call this while it holds its lock, where user code that
        uses the storage would wait for that lock forever; for None,
        :meth:`read` outside the lock says what the message is. Never raises.
        """
        try:
            header, _ = self.unpack(raw)
        except Exception:
            return None  # read() names it
        name, version = header.get("task"), header.get("v")
        spec = self.registry.runnable.get(name) if type(name) is str else None
        if (
            spec is None
            or not spec.plain_json
            or type(version) is not int
            or version != spec.version
            or not _PLAIN_HEADER.issuperset(header)
        ):
            return None
        # read() now takes its hot path; what fails there is named by the full
        # pipeline, which for such a message runs no user code either.
        outcome = self.read(raw)
        return outcome if isinstance(outcome, Task) else None

    def _read_general(self, header: dict[str, Any], body: bytes) -> Outcome:
        name, version = _identity(header)
        if name is None:
            named = header.get("task")
            named = named if type(named) is str and named else None
            return Rejected("undecodable", named, None, _identity_error(header))
        try:
            return self._read_task(name, version, header, body)
        except _TooDeep as deep:
            return Rejected(
                deep.reason,
                name,
                version,
                deep.describe(f"Task {name!r}", version),
                _str_or_none(header.get("id")),
            )
        except _Reject as rej:
            return Rejected(rej.reason, name, version, rej.error, _str_or_none(header.get("id")))
        except _Defer as defer:
            return Newer(
                name,
                version,
                defer.known,
                _float_or_none(header.get("at")),
                _priority(header),
                f"Task {defer.task!r} version {defer.version}"
                f"{'' if defer.task == name else f' (a callback of {name!r})'} is newer "
                f"than this worker knows (version {defer.known})",
                _str_or_none(header.get("id")),
                _eta_or_none(header.get("eta")),
            )

    def _older_value(self, spec: TaskSpec, version: int, body: bytes) -> Any:
        """The upcast, validated arguments of an older named-field body, or ``_NO_VALUE``."""
        if 1 <= version < spec.version:
            try:
                return self._upcast_fast(spec, version, body)
            except Exception:
                pass  # the full pipeline names the reason
        return _NO_VALUE

    def _upcast_fast(self, spec: TaskSpec, version: int, body: bytes) -> Any:
        chain = self.registry.chain(spec.name, version, spec.version)
        if chain is None:
            raise LookupError(version)
        payload = _json(body)
        for step in chain:
            payload = step(payload)
            if type(payload) is not dict:
                raise TypeError(payload)
        return spec.validate_payload(payload)

    def _read_task(
        self, name: str, version: int | None, header: dict[str, Any], body: bytes
    ) -> Outcome:
        resolved = self.registry.resolve(name)
        if resolved in self.registry.tombstones:
            retired = RetiredMessage(name, version, _wire_payload(header, body), _id(header))
            return Retired(retired, resolved, _priority(header))
        spec = self.registry.specs.get(resolved)
        if spec is not None:
            args, kwargs = self._versioned_arguments(spec, name, version, header, body)
            task_class = spec.task_class
        else:
            task_class = self._plain_class(resolved, name)
            args, kwargs = _plain_arguments(header, body)
        nested = self._nested_tasks(header, "$", 1)
        task = _build_task(task_class, args, kwargs, header, nested)
        if spec is not None:
            _mark(task, spec.version, spec.params, header)
            if resolved != name or (version or 1) != spec.version:
                task._vt_from = (name, version or 1)  # see wire_origin()
        elif resolved != name:
            task._vt_from = (name, version)
        return task

    def _plain_class(self, resolved: str, name: str) -> type[Task]:
        task_class = self.plain_task(resolved)
        if task_class is None:
            renamed = f" (renamed to {resolved!r})" if resolved != name else ""
            raise _Reject(
                "unknown_task",
                f"Task {name!r}{renamed} is not declared in this app; declare it, "
                f"rename it to its new name with huey.rename(), or retire it with "
                f"huey.tombstone(), then replay the dead letter.",
            )
        return task_class

    def _versioned_arguments(
        self,
        spec: TaskSpec,
        name: str,
        version: int | None,
        header: dict[str, Any],
        body: bytes,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        wire_version = 1 if version is None else version
        if wire_version > spec.version:
            raise _Defer(name, wire_version, spec.version)
        positional = header.get("form") == _FORM_POSITIONAL or version is None
        if not positional and wire_version == spec.version:
            return _validate(spec, wire_version, lambda: spec.load_json(body))
        payload = _named_payload(spec, wire_version, header, body, positional)
        if wire_version < spec.version:
            payload = upcast(self.registry, spec, wire_version, payload)
        return _validate(spec, wire_version, lambda: spec.load_payload(payload))

    def _nested_tasks(self, header: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        """The callbacks of the object ``header``, which sits ``depth`` levels deep."""
        nested: dict[str, Any] = {}
        for key in ("on_complete", "on_error"):
            obj = header.get(key)
            if obj is not None:
                nested[key] = self._nested(obj, f"{path}.{key}", depth + 1)
        chord = header.get("chord")
        if chord is not None:
            nested["chord_config"] = self._chord(chord, f"{path}.chord", depth + 1)
        return nested

    def _chord(self, chord: Any, path: str, depth: int) -> ChordConfig:
        if type(chord) is not dict:
            raise _Reject("undecodable", f"{path} is not an object.")
        cid, size, idx = chord.get("cid"), chord.get("size"), chord.get("idx")
        if type(cid) is not str or type(size) is not int or type(idx) is not int:
            raise _Reject("undecodable", f"{path} needs cid (string), size and idx (integers).")
        callback = self._nested(chord.get("callback"), f"{path}.callback", depth + 1)
        return ChordConfig(cid, size, idx, callback)

    def _nested(self, obj: Any, path: str, depth: int) -> Task:
        if type(obj) is not dict:
            raise _Reject("undecodable", f"Callback {path} is not an object.")
        if depth >= self.max_depth:
            # Its arguments (always written, as a list) would nest one level
            # deeper still: past max_depth, which the worker must keep to when
            # it writes the rest of the chain after a step, a retry or a move
            # to the schedule. Refused here, before anything runs, rather than
            # lost after the first step.
            raise _TooDeep(depth, obj, self.max_depth)
        name, version = _identity(obj)
        if name is None:
            raise _Reject("undecodable", f"Callback {path}: {_identity_error(obj)}")
        resolved = self.registry.resolve(name)
        if resolved in self.registry.tombstones:
            raise _Reject("retired", f"Callback {path} names the retired task {name!r}.")
        spec = self.registry.specs.get(resolved)
        if spec is not None and (version or 1) > spec.version:
            raise _Defer(name, version or 1, spec.version)
        task_class = spec.task_class if spec is not None else self._plain_class(resolved, name)
        args, kwargs = _codec_arguments(obj, path)
        nested = self._nested_tasks(obj, path, depth)
        task = _build_task(task_class, args, kwargs, obj, nested)
        if spec is not None:
            params = obj.get("params")
            _mark(task, version or 1, _params(params, spec), obj)
        return task


class _TooDeep(_Reject):
    """A callback nested deeper than the reader's max_depth allows."""

    def __init__(self, depth: int, obj: dict[str, Any], limit: int) -> None:
        # Only a refused message pays for this walk over the rest of its header.
        self.levels = depth + _callback_levels(obj) + 1
        self.limit = limit
        super().__init__("undecodable", self.describe("The message", None))

    def describe(self, name: str, version: int | None) -> str:
        subject = name if version is None else f"{name} version {version}"
        return (
            f"{subject} has callbacks nested so deep that its header nests at least "
            f"{self.levels} levels (with their arguments), more than this worker's "
            f"max_depth ({self.limit}): after a step it could not write the rest of the "
            f"chain again, so nothing of it was run. Raise max_depth on the workers' "
            f"VersionedSerializer (at most {_envelope.MAX_DEPTH_CEILING}; on producers "
            f"too) or split the pipeline, then replay."
        )


def _callback_levels(obj: dict[str, Any]) -> int:
    """How many levels the callbacks nested in ``obj`` add below it (no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        current, level = stack.pop()
        if type(current) is not dict:
            continue
        deepest = max(deepest, level)
        stack.extend((current.get(key), level + 1) for key in ("on_complete", "on_error"))
        chord = current.get("chord")
        if type(chord) is dict:
            stack.append((chord.get("callback"), level + 2))
    return deepest


def upcast(registry: SchemaRegistry, spec: TaskSpec, version: int, payload: Any) -> dict[str, Any]:
    """Run the upcaster chain from ``version`` to the spec's current version."""
    chain = registry.chain(spec.name, version, spec.version)
    if chain is None:
        steps = sorted(registry.upcasters.get(spec.name, {}))
        have = f"upcasters start at version {steps[0]}" if steps else "it has no upcasters"
        raise _Reject(
            "upcast_failed",
            f"Task {spec.name!r} has no upcaster chain from version {version} to "
            f"{spec.version} ({have}); register "
            f"@huey.upcaster({spec.name!r}, from_version={version}) and replay.",
        )
    for step_version, step in enumerate(chain, start=version):
        try:
            payload = step(payload)
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc)).rstrip()
            raise _Reject(
                "upcast_failed",
                f"Upcaster {_function_name(step)} of {spec.name!r} from version "
                f"{step_version} to {step_version + 1} raised {type(exc).__name__}: {exc}; "
                f"fix it and replay.\n{trace}",
            ) from None
        if type(payload) is not dict:
            raise _Reject(
                "upcast_failed",
                f"Upcaster {_function_name(step)} of {spec.name!r} from version "
                f"{step_version} to {step_version + 1} returned {type(payload).__name__}, "
                f"not a dict; make it return the payload and replay.",
            )
    result: dict[str, Any] = payload
    return result


def _function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of an upcaster, for the messages that name it."""
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{name}" if module else name


def _validate(
    spec: TaskSpec, version: int, load: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        return load()
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise _Reject(
                "undecodable", f"Envelope body is not valid JSON: {errors[0]['msg']}"
            ) from None
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(payload)'}: {e['msg']}" for e in errors[:5]
        )
        raise _Reject(
            "invalid_payload",
            f"Payload of {spec.name!r} (wire version {version}, current {spec.version}) "
            f"does not fit today's model: {detail}. Fix the upcaster or the model and "
            f"replay.",
        ) from None
    except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
        raise _Reject("invalid_payload", f"Payload of {spec.name!r}: {exc}") from None


def _named_payload(
    spec: TaskSpec, version: int, header: Mapping[str, Any], body: bytes, positional: bool
) -> Any:
    if not positional:
        return _parse_body(body)
    args, kwargs = _plain_arguments(header, body)
    params = _params(header.get("params"), spec if version == spec.version else None)
    if spec.model is not None and version == spec.version:
        try:
            return spec.bind(args, kwargs)
        except InvalidArguments as exc:
            raise _Reject("invalid_payload", str(exc)) from None
    if args and params is None:
        raise _Reject(
            "upcast_failed",
            f"Positional arguments of {spec.name!r} version {version} cannot be named: "
            f"the message does not list its parameters and the task is now at "
            f"version {spec.version}.",
        )
    try:
        return bind_positional(spec.name, version, params or (), args, kwargs)
    except InvalidArguments as exc:
        raise _Reject("invalid_payload", str(exc)) from None


def _params(params: Any, spec: TaskSpec | None) -> tuple[str, ...] | None:
    if type(params) is list and all(type(p) is str for p in params):
        return tuple(params)
    return spec.params if spec is not None else None


#: Parses a body for Python code (upcasters, the codec). Not orjson, which
#: reads an integer beyond 64 bits as a float; pydantic's parser keeps it.
_json: Final = pydantic_core.from_json


def _parse_body(body: bytes) -> Any:
    try:
        return _json(body)
    except ValueError as exc:
        raise _Reject("undecodable", f"Envelope body is not valid JSON: {exc}") from None


def _wire_payload(header: Mapping[str, Any], body: bytes) -> Any:
    payload = _parse_body(body)
    if header.get("form") == _FORM_POSITIONAL or "v" not in header:
        return _decode(payload, "body")
    return payload


def _plain_arguments(header: Mapping[str, Any], body: bytes) -> tuple[Any, dict[str, Any]]:
    payload = _parse_body(body)
    if header.get("form") != _FORM_POSITIONAL and "v" in header:
        if type(payload) is not dict:
            raise _Reject("invalid_payload", "Named-field body is not a JSON object.")
        return (), payload
    if type(payload) is not dict:
        raise _Reject("undecodable", "Positional body is not a JSON object.")
    return _codec_arguments(payload, "body", callback=False)


def _codec_arguments(
    obj: Mapping[str, Any], path: str, *, callback: bool = True
) -> tuple[Any, dict[str, Any]]:
    args = _decode(obj.get("args", []), f"{path}.args")
    kwargs = _decode(obj.get("kwargs", {}), f"{path}.kwargs")
    if type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
        raise _Reject("undecodable", f"{path}: kwargs must be an object with string keys.")
    if type(args) is list:
        return tuple(args), kwargs
    # A task's own args are kept as given (task.schedule(3, delay=60) stores 3),
    # but Huey appends results to a callback's args, which must be a tuple.
    if callback:
        raise _Reject("undecodable", f"{path}: a callback's args must be a list.")
    return args, kwargs


def _decode(data: Any, path: str) -> Any:
    try:
        return _codec.decode(data)
    except DecodeError as exc:
        raise _Reject("undecodable", f"{path}: {exc}") from None
    except RecursionError:
        raise _Reject("undecodable", f"{path}: nested too deeply to decode.") from None


def _identity(header: Mapping[str, Any]) -> tuple[str | None, int | None]:
    kind = header.get("kind", _envelope.KIND_TASK)
    name = header.get("task")
    version = header.get("v")
    if kind != _envelope.KIND_TASK or type(name) is not str or not name:
        return None, None
    if version is not None and (
        type(version) is not int or not 1 <= version <= _envelope.MAX_VERSION
    ):
        return None, None
    return name, version


def _identity_error(header: Mapping[str, Any]) -> str:
    if header.get("kind", _envelope.KIND_TASK) != _envelope.KIND_TASK:
        return f"Envelope of kind {header.get('kind')!r} where a task message was expected."
    return "Envelope header lacks a valid task name ('task') or version ('v')."


def _id(header: Mapping[str, Any]) -> Any:
    value = header.get("id")
    # A falsy id would make Huey's Task() draw a new random one on every read.
    if type(value) not in (str, int) or not value:
        raise _Reject("undecodable", "Envelope header lacks a task id ('id').")
    return value


def _priority(header: Mapping[str, Any]) -> int | float | None:
    value = header.get("priority")
    return value if type(value) in _NUMBER else None


def _str_or_none(value: Any) -> str | None:
    return value if type(value) is str else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if type(value) in _NUMBER else None


def _build_task(
    task_class: type[Task],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    header: Mapping[str, Any],
    nested: dict[str, Any],
) -> Task:
    get = header.get
    # Absent retries/delays decode as 0, not None: Task() would replace None
    # with the class default and give a task back retries it had used up.
    retries, delay, backoff = get("retries", 0), get("retry_delay", 0), get("retry_backoff", 0)
    priority, timeout = get("priority"), get("timeout")
    if not (
        type(retries) is int
        and retries >= 0
        and _seconds(delay)
        and _seconds(backoff)
        and (priority is None or (type(priority) in _NUMBER and math.isfinite(priority)))
        and (timeout is None or _seconds(timeout))
    ):
        raise _Reject("undecodable", "Envelope scheduling fields have the wrong types or ranges.")
    return new_task(
        task_class,
        args,
        kwargs,
        _id(header),
        eta=_datetime(get("eta"), "eta"),
        retries=retries,
        retry_delay=delay,
        priority=priority,
        expires=_expires(get("expires")),
        on_complete=nested.get("on_complete"),
        on_error=nested.get("on_error"),
        expires_resolved=_datetime(get("expires_resolved"), "expires_resolved"),
        timeout=timeout,
        chord_config=nested.get("chord_config"),
        retry_backoff=backoff,
    )


def new_task(
    task_class: type[Task],
    args: Any,
    kwargs: Any,
    id: Any,
    *,
    eta: datetime.datetime | None = None,
    retries: Any = 0,
    retry_delay: Any = 0,
    priority: Any = None,
    expires: Any = None,
    on_complete: Any = None,
    on_error: Any = None,
    expires_resolved: datetime.datetime | None = None,
    timeout: Any = None,
    chord_config: Any = None,
    retry_backoff: Any = 0,
) -> Task:
    """Huey's ``Task(...)``, its fourteen positional arguments named: the one place
    the library builds a task.

    The order is that of Huey's own ``Registry.create_task``. Retries and delays
    default to 0, not None: ``Task()`` would replace None with the class default
    and give a task back retries it had used up.
    """
    return task_class(
        args,
        kwargs,
        id,
        eta,
        retries,
        retry_delay,
        priority,
        expires,
        on_complete,
        on_error,
        expires_resolved,
        timeout,
        chord_config,
        retry_backoff,
    )


def _seconds(value: Any) -> bool:
    return type(value) in _NUMBER and 0 <= value <= _MAX_SECONDS


def _eta_or_none(value: Any) -> datetime.datetime | None:
    try:
        return _datetime(value, "eta")
    except _Reject:
        return None


def _datetime(value: Any, key: str) -> datetime.datetime | None:
    if value is None:
        return None
    if type(value) is str:
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # Huey keeps naive datetimes and compares them with naive ones.
            if parsed.tzinfo is None:
                return parsed
    raise _Reject("undecodable", f"Envelope field {key!r} is not a naive ISO 8601 datetime.")


def _expires(value: Any) -> Any:
    if value is None:
        return None
    decoded = _decode(value, "expires")
    if type(decoded) in _NUMBER or isinstance(decoded, datetime.datetime | datetime.timedelta):
        return decoded
    raise _Reject("undecodable", "Envelope field 'expires' has the wrong type.")


def _mark(
    task: Task, version: int, params: tuple[str, ...] | None, header: Mapping[str, Any]
) -> None:
    # Remembered on the instance so that re-serializing it (a retry, a pipeline
    # step completed at run time) keeps its version, parameter order and age.
    at = header.get("at")
    task._vt_wire = (version, params, at if type(at) in _NUMBER else None)


def wire_info(task: Task) -> tuple[int, tuple[str, ...] | None, float | None] | None:
    """``(version, params, enqueued_at)`` of a task read from the wire, else None."""
    info: tuple[int, tuple[str, ...] | None, float | None] | None = task.__dict__.get("_vt_wire")
    return info


def wire_origin(task: Task) -> tuple[str, int | None] | None:
    """``(name, version)`` on the wire of a task read under another name (a rename)
    or at an older version (upcast); None for one read as it runs."""
    origin: tuple[str, int | None] | None = task.__dict__.get("_vt_from")
    return origin


def task_factory(task_class: type[Task]) -> Callable[..., Task]:
    """A fast constructor of plain tasks: ``make(args, kwargs, id, wire)``.

    ``Task.__init__`` is a pure function of its arguments; for a task with no
    scheduling fields and no callbacks only ``args``, ``kwargs``, ``id`` and
    ``revoke_id`` differ between instances. The factory copies the rest from
    a template, which halves the cost of the worker's hot path. It checks that
    premise against the installed Huey first and falls back to the constructor
    if a release ever breaks it.
    """

    def construct(args: Any, kwargs: Any, ident: str, wire: Any) -> Task:
        task = new_task(task_class, args, kwargs, ident)
        task._vt_wire = wire
        return task

    one = construct(("a",), {"a": 1}, "id-one", None).__dict__
    two = construct(("b",), {"b": 2}, "id-two", None).__dict__
    varying = {key for key in one.keys() | two.keys() if one.get(key) != two.get(key)}
    if varying != {"args", "kwargs", "id", "revoke_id"} or two.get("revoke_id") != "r:id-two":
        return construct
    template = dict(one)
    new: Any = task_class.__new__

    def make(args: Any, kwargs: Any, ident: str, wire: Any) -> Task:
        task = new(task_class)
        attrs = template.copy()
        attrs["args"] = args
        attrs["kwargs"] = kwargs
        attrs["id"] = ident
        attrs["revoke_id"] = "r:" + ident
        attrs["_vt_wire"] = wire
        task.__dict__ = attrs
        return task

    return make


# -- writing ------------------------------------------------------------------


class Writer:
    """Turns Huey task objects into envelopes, validating versioned arguments."""

    def __init__(self, registry: SchemaRegistry, frame: Frame, build: str | None = None) -> None:
        self.registry = registry
        self.frame = frame
        self.build = build
        self._tail = b',"by":' + orjson.dumps(PRODUCER)
        if build:
            self._tail += b',"build":' + orjson.dumps(build)
        self._heads: dict[TaskSpec, bytes] = {}
        #: Set by an app with ``emit_versions``; None keeps every task on the
        #: current-version path, with no lookup per message.
        self.emit: Emit | None = None
        self.check_old: OldSchemaCheck | None = None
        #: Set by an integration (contrib.otel): more header fields for each
        #: message, as bytes that start with a comma (``b',"trace":{...}'``) or
        #: are empty. None (the default) writes nothing more and costs one check.
        self.header_fields: Callable[[], bytes] | None = None

    def encode(self, task: Task, *, validate: bool = True) -> bytes:
        """Encode a task; with ``validate=False`` write its arguments unchecked.

        Raises:
            InvalidArguments: the arguments do not fit the task's model.
            EncodeError: a value the envelope cannot carry.
        """
        try:
            return self._encode(task, validate)
        except EncodeError as exc:
            spec: TaskSpec | None = getattr(type(task), "_vt_spec", None)
            name = spec.name if spec is not None else _registry_key(task)
            if str(exc).startswith(f"Task {name!r}"):
                raise
            raise EncodeError(f"Task {name!r}: {exc}", path=exc.path) from None

    def _encode(self, task: Task, validate: bool) -> bytes:
        spec: TaskSpec | None = getattr(type(task), "_vt_spec", None)
        wire = wire_info(task)
        if spec is not None and validate:
            body = self._versioned_body(spec, task, wire)
            head = self._heads.get(spec) or self._head(spec)
            if self.emit is not None:
                target = self.emit(spec)
                if target != spec.version:
                    head, body = self._pinned(spec, target, head, body, wire is None)
        else:
            identity = self._identity(task, spec, wire)
            identity["form"] = _FORM_POSITIONAL
            head = _OPEN_TASK + orjson.dumps(identity)[1:-1]
            body = _dumps(_arguments(task, ""), "its arguments")
        extra = b""
        if _has_scheduling(task):
            fields: dict[str, Any] = {}
            scheduling_fields(task, fields, "", self._nested)
            extra = b"," + _dumps(fields, "its callbacks and scheduling fields")[1:-1]
        if self.header_fields is not None:
            extra += self.header_fields()
        at = wire[2] if wire is not None and wire[2] is not None else time.time()
        ident = orjson.dumps({"id": task.id, "at": at})
        return self.frame(b"%s,%s%s%s}" % (head, ident[1:-1], self._tail, extra), body)

    def _head(self, spec: TaskSpec) -> bytes:
        head = _OPEN_TASK + orjson.dumps({"task": spec.name, "v": spec.version})[1:-1]
        self._heads[spec] = head
        return head

    def _pinned(
        self, spec: TaskSpec, target: int, head: bytes, body: bytes, fresh: bool
    ) -> tuple[bytes, bytes]:
        """Head and body at the pinned version ``target``, through the downcasters.

        A fresh message that cannot be downcast raises; one re-written after it
        was read (a retry, a schedule move, a callback) keeps today's version
        instead, since raising there would lose it.
        """
        chain = self.registry.down_chain(spec.name, spec.version, target)
        if (
            chain is None
            or target > spec.version
            or self.registry.chain(spec.name, target, spec.version) is None
        ):
            problems = self.registry.pin_problems(spec.name, target)
            raise SchemaError(" ".join(problems), task=spec.name)
        try:
            body = self._downcast(spec, target, chain, body)
        except DowncastFailed as exc:
            if fresh:
                raise
            logger.warning("%s It was written at version %s instead.", exc, spec.version)
            return head, body
        return _OPEN_TASK + orjson.dumps({"task": spec.name, "v": target})[1:-1], body

    def _downcast(
        self, spec: TaskSpec, target: int, chain: tuple[Callable[..., Any], ...], body: bytes
    ) -> bytes:
        payload: Any = _json(body)
        version = spec.version

        def failed(step: tuple[int, int], error: str) -> DowncastFailed:
            return DowncastFailed(
                task=spec.name, version=spec.version, target=target, step=step, error=error
            )

        for step in chain:
            try:
                payload = step(payload)
            except Exception as exc:
                raise failed((version, version - 1), f"{type(exc).__name__}: {exc}") from None
            if type(payload) is not dict or not all(type(k) is str for k in payload):
                raise failed(
                    (version, version - 1),
                    f"it returned {type(payload).__name__}, not a dict with string keys",
                )
            version -= 1
        try:
            out = orjson.dumps(payload)
        except orjson.JSONEncodeError as exc:
            raise failed((target + 1, target), f"its result is not JSON ({exc})") from None
        if self.check_old is not None:
            problem = self.check_old(spec.name, target, _json(out))
            if problem is not None:
                raise failed((target, target), problem)
        return out

    def _versioned_body(
        self,
        spec: TaskSpec,
        task: Task,
        wire: tuple[int, tuple[str, ...] | None, float | None] | None,
    ) -> bytes:
        kwargs = _without_context(task)
        if wire is None or wire[0] == spec.version:
            return spec.dump(task.args, kwargs)
        version, params = wire[0], wire[1] or ()
        payload = bind_positional(spec.name, version, params, task.args, kwargs)
        try:
            payload = upcast(self.registry, spec, version, payload)
        except _Reject as rej:
            raise InvalidArguments(
                task=spec.name,
                version=version,
                errors=[{"loc": (), "msg": rej.error, "type": rej.reason}],
            ) from None
        return spec.dump((), payload)

    def _identity(
        self,
        task: Task,
        spec: TaskSpec | None,
        wire: tuple[int, tuple[str, ...] | None, float | None] | None,
    ) -> dict[str, Any]:
        if spec is None:
            return {"task": _registry_key(task)}
        version, params = (wire[0], wire[1]) if wire is not None else (spec.version, None)
        return {
            "task": spec.name,
            "v": version,
            "params": list(params if params is not None else spec.params),
        }

    def _nested(self, task: Task, path: str) -> dict[str, Any]:
        # A callback's arguments are completed at run time (Huey appends the
        # parent's result), so they travel positionally with the parameter
        # order of their version and are validated when Huey enqueues them.
        spec: TaskSpec | None = getattr(type(task), "_vt_spec", None)
        out = self._identity(task, spec, wire_info(task))
        out["id"] = task.id
        out.update(_arguments(task, path))
        scheduling_fields(task, out, path, self._nested)
        return out


_OPEN_TASK: Final = b'{"kind":"task",'


def _dumps(obj: Any, what: str) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:  # nesting past orjson's own limit
        raise EncodeError(f"{what} cannot be written as JSON ({exc}); flatten them.") from None


def _at(path: str, key: str) -> str:
    """The path to ``key`` inside ``path`` (``args``, ``on_complete.args``)."""
    return f"{path}.{key}" if path else key


def _has_scheduling(task: Task) -> bool:
    return not (
        task.eta is None
        and task.on_complete is None
        and not task.retries
        and task.priority is None
        and task.expires is None
        and task.timeout is None
        and task.on_error is None
        and task.chord_config is None
        and not task.retry_delay
        and not task.retry_backoff
        and task.expires_resolved is None
    )


_KIND_TASK: Final = _envelope.KIND_TASK

_NO_VALUE: Final = object()
#: ``trace`` (the producer's W3C trace context, docs/envelope.md) changes nothing
#: about how a message is read, so it keeps a message on the hot path.
_PLAIN_HEADER: Final = frozenset({"kind", "task", "v", "id", "at", "by", "build", "trace"})


def scheduling_fields(
    task: Any, out: dict[str, Any], path: str, nested: Callable[[Any, str], dict[str, Any]]
) -> None:
    """Write Huey's scheduling fields and callbacks of a Task or Message into ``out``."""
    if task.eta is not None:
        out["eta"] = task.eta.isoformat()
    for key in ("retries", "retry_delay", "retry_backoff"):
        value = getattr(task, key)
        if value:
            out[key] = value
    for key in ("priority", "timeout"):
        value = getattr(task, key)
        if value is not None:
            out[key] = value
    if task.expires is not None:
        out["expires"] = _codec.encode(task.expires, _at(path, "expires"))
    if task.expires_resolved is not None:
        out["expires_resolved"] = task.expires_resolved.isoformat()
    if task.on_complete is not None:
        out["on_complete"] = nested(task.on_complete, _at(path, "on_complete"))
    if task.on_error is not None:
        out["on_error"] = nested(task.on_error, _at(path, "on_error"))
    if task.chord_config is not None:
        cid, size, idx, callback = task.chord_config
        out["chord"] = {
            "cid": cid,
            "size": size,
            "idx": idx,
            "callback": nested(callback, _at(path, "chord.callback")),
        }


# -- plain Huey messages (VersionedSerializer on a plain Huey) ------------------


def message_to_envelope(message: Message) -> tuple[dict[str, Any], bytes]:
    """Header and body of a plain Huey ``Message`` (positional arguments).

    Raises:
        EncodeError: naming the task and the path to a value JSON cannot carry.
    """
    header: dict[str, Any] = {"kind": _envelope.KIND_TASK}
    try:
        header.update(message_object(message, ""))
    except EncodeError as exc:
        raise EncodeError(f"Task {message.name!r}: {exc}", path=exc.path) from None
    body = orjson.dumps({"args": header.pop("args"), "kwargs": header.pop("kwargs")})
    header["at"] = time.time()
    header["by"] = PRODUCER
    return header, body


def message_object(message: Message, path: str) -> dict[str, Any]:
    """A ``Message`` as a JSON-ready object: the header fields plus args and kwargs."""
    out: dict[str, Any] = {"task": message.name, "form": _FORM_POSITIONAL, "id": message.id}
    out["args"] = _encode_args(message.args, _at(path, "args"))
    out["kwargs"] = _codec.encode(dict(message.kwargs or {}), _at(path, "kwargs"))
    scheduling_fields(message, out, path, message_object)
    return out


def _encode_args(args: Any, path: str) -> Any:
    # Huey passes args on as given: task.schedule(3, delay=60) stores 3, not (3,).
    if args is None:
        return []
    if type(args) is tuple or type(args) is list:
        return _codec.encode(list(args), path)
    return _codec.encode(args, path)


def message_from_object(obj: Any) -> Message:
    """Inverse of :func:`message_object`.

    Raises:
        DecodeError: the object is not a well-formed message.
    """
    try:
        return _nested_message(obj)
    except _Reject as rej:
        raise DecodeError(rej.error) from None


def message_from_envelope(header: dict[str, Any], body: bytes) -> Message:
    """A plain Huey ``Message`` from a task envelope (named fields become kwargs).

    Raises:
        DecodeError: the envelope is not a well-formed task message.
    """
    try:
        name, _ = _identity(header)
        if name is None:
            raise _Reject("undecodable", _identity_error(header))
        args, kwargs = _plain_arguments(header, body)
        return _message(name, args, kwargs, header)
    except _Reject as rej:
        raise DecodeError(rej.error) from None


def _message(name: str, args: Any, kwargs: Any, obj: Mapping[str, Any]) -> Message:
    # Built through a Task so that the field checks are the same as the worker's.
    nested: dict[str, Any] = {}
    for key in ("on_complete", "on_error"):
        if obj.get(key) is not None:
            nested[key] = _nested_message(obj[key])
    chord = obj.get("chord")
    if chord is not None:
        if type(chord) is not dict:
            raise _Reject("undecodable", "chord is not an object.")
        nested["chord_config"] = (
            chord.get("cid"),
            chord.get("size"),
            chord.get("idx"),
            _nested_message(chord.get("callback")),
        )
    task = _build_task(Task, args, kwargs, obj, {})
    return Message(
        task.id,
        name,
        task.eta,
        task.retries,
        task.retry_delay,
        task.priority,
        task.args,
        task.kwargs,
        nested.get("on_complete"),
        nested.get("on_error"),
        task.expires,
        task.expires_resolved,
        task.timeout,
        nested.get("chord_config"),
        task.retry_backoff,
    )


def _nested_message(obj: Any) -> Message:
    if type(obj) is not dict:
        raise _Reject("undecodable", "A callback is not an object.")
    name, _ = _identity(obj)
    if name is None:
        raise _Reject("undecodable", _identity_error(obj))
    args, kwargs = _codec_arguments(obj, name)
    return _message(name, args, kwargs, obj)


def _arguments(task: Task, path: str) -> dict[str, Any]:
    return {
        "args": _encode_args(task.args, _at(path, "args")),
        "kwargs": _codec.encode(_without_context(task), _at(path, "kwargs")),
    }


def _without_context(task: Task) -> dict[str, Any]:
    kwargs: dict[str, Any] = task.kwargs
    if kwargs and kwargs.get("task") is task:
        kwargs = {k: v for k, v in kwargs.items() if k != "task"}
    return kwargs


def _registry_key(task: Task) -> str:
    kind = type(task)
    return f"{kind.__module__}.{kind.__name__}"


def error_detail(exc: Exception) -> str:
    """The first few problems of an error with pydantic-style ``errors``, one line."""
    errors = getattr(exc, "errors", None)
    if not errors:
        return str(exc)
    return "; ".join(
        f"{'.'.join(map(str, e.get('loc', ()))) or '(arguments)'}: {e.get('msg', 'invalid')}"
        for e in errors[:5]
    )


def is_upcast_error(exc: Exception) -> bool:
    """Whether an InvalidArguments came from an upcaster rather than validation."""
    errors = getattr(exc, "errors", None) or []
    return any(e.get("type") == "upcast_failed" for e in errors)


_codec.register_message_codec(message_object, message_from_object)
