"""Adopting a live queue: reading the pickled messages a plain Huey left behind.

A team that moves an existing Huey deployment to ``VersionedHuey`` has a
queue, a schedule and a result store written by Huey's default
``Serializer``: pickle (protocol 2 or higher, first byte ``0x80``), possibly
gzip- or zlib-compressed (first byte ``0x1f`` or ``0x78``, which Huey sniffs
the same way). With ``VersionedHuey(..., legacy_pickle=True)`` such a message
is unpickled into a Huey ``Message``, converted into an envelope, and then
read by the ordinary pipeline:

- a message naming a versioned task is version 1 of it: its arguments are
  named by the version-1 parameters, upcast to today's version and validated;
- a message naming a plain ``@huey.task()`` runs as that plain task;
- anything else is dead-lettered with the pipeline's reason and the original
  pickle bytes.

Legacy pickle is read, never written. Unpickling runs whatever code the bytes
name, so the flag is off by default and logs a warning when on; ``migrate``
(the ``versioned-tasks migrate-queue`` command) rewrites the queue and the
schedule as envelopes in place, so that the flag can be turned off again.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson
from huey.api import Task
from huey.registry import Message
from huey.utils import ChordConfig

from ..exceptions import ConfigurationError, DecodeError, EncodeError, InvalidArguments
from ..schema.registry import SchemaRegistry, TaskSpec, bind_positional
from ..wire import envelope as _envelope
from .readwrite import (
    Outcome,
    Reader,
    Rejected,
    Writer,
    _mark,
    error_detail,
    is_upcast_error,
    message_to_envelope,
    new_task,
)
from .reasons import Reason

__all__ = [
    "MAX_LEGACY_BYTES",
    "LegacyConverter",
    "LegacyReader",
    "LegacyValueSerializer",
    "build_converter",
    "is_envelope",
    "is_legacy",
    "unpickle",
    "warn_enabled",
]

logger = logging.getLogger("versioned_tasks")

#: First bytes of what Huey's default Serializer writes: a pickle, gzip, zlib.
_PICKLE: Final = b"\x80"
_GZIP: Final = b"\x1f"
_ZLIB: Final = b"\x78"
_LEADS: Final = (_PICKLE, _GZIP, _ZLIB)

#: The largest legacy message or value decompressed; a guard against bombs.
MAX_LEGACY_BYTES: Final = 64 * 1024 * 1024


def is_legacy(raw: bytes) -> bool:
    """Whether stored bytes look like Huey's pickle serializer wrote them."""
    return bytes(raw[:1]) in _LEADS


def is_envelope(raw: bytes) -> bool:
    # Any format number: an envelope this release cannot read is still not pickle.
    return bytes(raw[: len(_envelope.MAGIC)]) in (_envelope.MAGIC, _envelope.SIGNED_MAGIC)


def unpickle(raw: bytes) -> Any:
    """Decompress (when Huey compressed it) and unpickle legacy bytes.

    Unpickling runs code named by the bytes: call it only with legacy pickle
    switched on.

    Raises:
        DecodeError: the bytes are not a readable (compressed) pickle.
    """
    data = _decompress(bytes(raw))
    try:
        # The only unpickling in versioned_tasks. Reached only when the user
        # opted in: VersionedHuey(legacy_pickle=...) builds the converter and
        # the value serializer that call this, and migrate-queue refuses to run
        # without that option or --legacy-pickle. Off by default, warned about.
        return pickle.loads(data)
    except Exception as exc:
        raise DecodeError(
            f"Legacy pickle could not be unpickled ({type(exc).__name__}: {exc}); a class "
            f"or function it names may be gone."
        ) from None


def _decompress(raw: bytes) -> bytes:
    lead = raw[:1]
    if lead == _PICKLE:
        return raw
    if lead not in (_GZIP, _ZLIB):
        raise DecodeError(f"Not legacy pickle: unknown leading bytes {raw[:8]!r}.")
    inflater = zlib.decompressobj(31 if lead == _GZIP else 15)
    try:
        data = inflater.decompress(raw, MAX_LEGACY_BYTES + 1)
    except zlib.error as exc:
        raise DecodeError(f"Compressed legacy data could not be decompressed ({exc}).") from None
    if len(data) > MAX_LEGACY_BYTES:
        raise DecodeError(
            f"Compressed legacy data inflates beyond {MAX_LEGACY_BYTES} bytes; not read."
        )
    if not inflater.eof:
        raise DecodeError("Compressed legacy data is truncated.")
    return data


# -- the option and the start-up warning --------------------------------------------


def parameter_names(option: Any) -> dict[str, tuple[str, ...]] | None:
    """Read the ``legacy_pickle=`` option: None when off, else version-1 names per task.

    Raises:
        ConfigurationError: neither a bool nor a mapping of task names to names.
    """
    if option is None or option is False:
        return None
    if option is True:
        return {}
    if not isinstance(option, Mapping):
        raise ConfigurationError(
            f"legacy_pickle must be True, False or a mapping of task names to their "
            f"version-1 parameter names, got {option!r}."
        )
    names: dict[str, tuple[str, ...]] = {}
    for task, params in option.items():
        if not (
            isinstance(task, str)
            and isinstance(params, Sequence)
            and not isinstance(params, str)
            and all(isinstance(p, str) and p.isidentifier() for p in params)
        ):
            raise ConfigurationError(
                f"legacy_pickle: {task!r}: {params!r} is not a task's logical name mapped to "
                f"the sequence of its version-1 parameter names, e.g. "
                f"{{'billing.send_invoice': ('invoice_id', 'amount')}}."
            )
        names[task] = tuple(params)
    return names


def warn_enabled(name: str) -> None:
    """Log, once per app, the risk that legacy pickle brings."""
    logger.warning(
        "VersionedHuey %r reads legacy pickled messages and values (legacy_pickle is on). "
        "Unpickling runs code named by the bytes: whoever can write to this queue's storage "
        "can run code in this process. Close the window: rewrite the queue and the schedule "
        "with `versioned-tasks migrate-queue --app ...`, then turn legacy_pickle off.",
        name,
    )


def build_converter(
    option: Any, schema: SchemaRegistry, task_classes: Mapping[str, Any], writer: Writer
) -> LegacyConverter | None:
    """The converter for a ``legacy_pickle=`` option (None when off): ``task_classes``
    are the app's registered task classes by key, ``writer`` writes its envelopes."""
    names = parameter_names(option)
    if names is None:
        return None
    return LegacyConverter(schema, task_classes, writer, names)


# -- converting one message -----------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: Reason, error: str) -> None:
        self.reason = reason
        self.error = error


class LegacyConverter:
    """Turns one legacy pickled message into envelope bytes, or says why it cannot run.

    The envelope is written by the app's Writer (signed when the serializer
    signs): a versioned task is read as version 1 (positional arguments named
    by its version-1 parameters), validated and upcast as a producer would;
    callbacks keep their positional arguments with version 1 and its names.
    """

    def __init__(
        self,
        schema: SchemaRegistry,
        task_classes: Mapping[str, Any],
        writer: Writer,
        names: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.schema = schema
        self.task_classes = task_classes
        self.writer = writer
        self.names = dict(names)

    def __repr__(self) -> str:
        return f"<LegacyConverter names_for={sorted(self.names)}>"

    def outcome(
        self, raw: bytes, read: Callable[[bytes], Outcome]
    ) -> tuple[Outcome, bytes | None]:
        """What the read pipeline makes of legacy bytes, with the envelope they became.

        Rejections say that the message was legacy pickle; the envelope is None
        when the message could not be converted at all.
        """
        converted = self.convert(raw)
        if isinstance(converted, Rejected):
            return _legacy_rejection(converted), None
        outcome = read(converted)
        if isinstance(outcome, Rejected):
            return _legacy_rejection(outcome), converted
        return outcome, converted

    def convert(self, raw: bytes) -> bytes | Rejected:
        """Envelope bytes for a legacy message, or why it cannot become one."""
        try:
            message = unpickle(raw)  # opted in: this converter exists only then
        except DecodeError as exc:
            return Rejected("undecodable", None, None, str(exc))
        if not isinstance(message, Message):
            return Rejected(
                "undecodable",
                None,
                None,
                f"Legacy pickle holds a {type(message).__name__}, not a Huey Message.",
            )
        name = message.name if type(message.name) is str and message.name else None
        if name is None:
            return Rejected("undecodable", None, None, "Legacy message has no task name.")
        spec, task_class = self._lookup(name)
        task_name, version = (spec.name, 1) if spec is not None else (name, None)
        try:
            return self._envelope(message, name, spec, task_class)
        except _Refused as refused:
            return Rejected(refused.reason, task_name, version, refused.error)
        except Exception as exc:
            # A safety net, as the Reader has: bytes that hit a corner nothing
            # foresaw must end in the dead-letter store, not raise out of dequeue().
            logger.exception("Unexpected error while converting a legacy message.")
            return Rejected(
                "undecodable",
                task_name,
                version,
                f"Legacy message could not be converted ({type(exc).__name__}: {exc}).",
            )

    def _lookup(self, name: str) -> tuple[TaskSpec | None, Any]:
        """The spec and Huey task class a name on the wire runs as (None, None if none)."""
        resolved = self.schema.resolve(name)
        if resolved in self.schema.tombstones:
            return None, None
        spec = self.schema.specs.get(resolved)
        if spec is not None:
            return spec, spec.task_class
        task_class = self.task_classes.get(resolved)
        if task_class is None:
            return None, None
        return getattr(task_class, "_vt_spec", None), task_class

    def _envelope(
        self, message: Message, name: str, spec: TaskSpec | None, task_class: Any
    ) -> bytes:
        if task_class is None:
            if self.schema.resolve(name) in self.schema.tombstones:
                # Written as it is: the worker hands it to the tombstone (or
                # dead-letters it as retired) like any message of that task.
                return self._plain_envelope(message)
            raise _Refused("unknown_task", _unknown(name, "message"))
        args, kwargs = _arguments(message, "message")
        params: tuple[str, ...] | None = None
        if spec is not None:
            args, kwargs, params = self._name_arguments(spec, args, kwargs)
        task = self._build(task_class, message, args, kwargs, "message")
        if spec is not None:
            _mark(task, 1, params, {})
        return self._encode(task, spec)

    def _plain_envelope(self, message: Message) -> bytes:
        try:
            header, body = message_to_envelope(message)
        except EncodeError as exc:
            raise _Refused("undecodable", str(exc)) from None
        return self.writer.frame(orjson.dumps(header), body)

    def _name_arguments(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[str, ...]]:
        names = self.names.get(spec.name)
        if names is not None:
            try:
                kwargs = bind_positional(spec.name, 1, names, args, kwargs)
            except InvalidArguments as exc:
                raise _Refused("invalid_payload", _detail(exc)) from None
            return (), kwargs, names
        if spec.version == 1:
            return args, kwargs, spec.params
        if args:
            raise _Refused("upcast_failed", _unnamed(spec))
        return args, kwargs, ()

    def _build(
        self,
        task_class: Any,
        message: Message,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        path: str,
    ) -> Task:
        on_complete = self._callback(message.on_complete, f"{path}.on_complete")
        on_error = self._callback(message.on_error, f"{path}.on_error")
        chord = self._chord(message.chord_config, f"{path}.chord")
        # The same fields, in the same order, as Huey's own Registry.create_task.
        return new_task(
            task_class,
            args,
            kwargs,
            message.id,
            eta=message.eta,
            retries=message.retries,
            retry_delay=message.retry_delay,
            priority=message.priority,
            expires=message.expires,
            on_complete=on_complete,
            on_error=on_error,
            expires_resolved=message.expires_resolved,
            timeout=message.timeout,
            chord_config=chord,
            retry_backoff=message.retry_backoff,
        )

    def _callback(self, message: Any, path: str) -> Task | None:
        if message is None:
            return None
        if not isinstance(message, Message) or type(message.name) is not str:
            raise _Refused("undecodable", f"Callback {path} is not a Huey Message.")
        resolved = self.schema.resolve(message.name)
        if resolved in self.schema.tombstones:
            raise _Refused("retired", f"Callback {path} names the retired task {message.name!r}.")
        spec, task_class = self._lookup(message.name)
        if task_class is None:
            raise _Refused("unknown_task", _unknown(message.name, f"callback {path}"))
        args, kwargs = _arguments(message, path)
        task = self._build(task_class, message, args, kwargs, path)
        if spec is not None:
            # Huey appends the parent's result (or error) at run time, so a
            # callback's arguments stay positional: they need version-1 names.
            names = self.names.get(spec.name)
            if names is None and spec.version != 1:
                raise _Refused("upcast_failed", _unnamed(spec, path))
            _mark(task, 1, names if names is not None else spec.params, {})
        return task

    def _chord(self, config: Any, path: str) -> ChordConfig | None:
        if config is None:
            return None
        if not isinstance(config, tuple | list) or len(config) != 4:
            raise _Refused("undecodable", f"{path} is not a (cid, size, idx, callback) tuple.")
        cid, size, idx, callback = config
        task = self._callback(callback, f"{path}.callback")
        return ChordConfig(cid, size, idx, task)

    def _encode(self, task: Task, spec: TaskSpec | None) -> bytes:
        try:
            return self.writer.encode(task)
        except InvalidArguments as exc:
            reason: Reason = "upcast_failed" if is_upcast_error(exc) else "invalid_payload"
            raise _Refused(reason, _detail(exc)) from None
        except EncodeError as exc:
            raise _Refused("invalid_payload" if spec else "undecodable", str(exc)) from None


def _arguments(message: Message, path: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = () if message.args is None else message.args
    kwargs = {} if message.kwargs is None else message.kwargs
    if not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
        raise _Refused("undecodable", f"{path}: args must be a tuple and kwargs a dict.")
    if not all(type(key) is str for key in kwargs):
        raise _Refused("undecodable", f"{path}: keyword argument names must be strings.")
    return tuple(args), dict(kwargs)


def _unknown(name: str, what: str) -> str:
    return (
        f"The {what} names the task {name!r}, which is not declared in this app; declare "
        f"it (a versioned task keeps Huey's name module.function when declared without "
        f"name=), map it with huey.rename({name!r}, ...), or retire it with "
        f"huey.tombstone(), then replay."
    )


def _unnamed(spec: TaskSpec, path: str = "message") -> str:
    return (
        f"Positional arguments of {spec.name!r} version 1 ({path}) cannot be named: the task "
        f"is now at version {spec.version}. Give its version-1 parameter names with "
        f"legacy_pickle={{{spec.name!r}: ('first', 'second', ...)}}, then replay."
    )


def _detail(exc: InvalidArguments) -> str:
    return (
        f"Arguments of {exc.task!r} read as version 1 do not fit: {error_detail(exc)}. "
        f"Fix the task's signature, its upcasters or the version-1 parameter names, then replay."
    )


def _legacy_rejection(rejected: Rejected) -> Rejected:
    error = rejected.error
    if not error.startswith("Legacy "):
        error = f"Legacy pickle: {error}"
    return Rejected(rejected.reason, rejected.task, rejected.version, error)


class LegacyReader(Reader):
    """The app's Reader, converting legacy pickle on the way in (envelopes as before)."""

    def __init__(self, reader: Reader, converter: LegacyConverter) -> None:
        super().__init__(
            reader.registry, reader.unpack, reader.plain_task, max_depth=reader.max_depth
        )
        self.converter = converter

    def read(self, raw: bytes) -> Outcome:
        """Run the pipeline on stored bytes; legacy pickle is converted first."""
        if bytes(raw[:1]) not in _LEADS:
            return super().read(raw)
        return self.converter.outcome(bytes(raw), super().read)[0]


class LegacyValueSerializer:
    """The app's serializer, which also reads the values Huey pickled (results,
    revocation records, chord partials); everything it writes is an envelope.
    """

    def __init__(self, serializer: Any) -> None:
        self.serializer = serializer

    def __repr__(self) -> str:
        return f"LegacyValueSerializer({self.serializer!r})"

    def __getattr__(self, name: str) -> Any:
        if name == "serializer":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.serializer, name)

    def serialize(self, data: Any) -> bytes:
        """Write as the app's serializer does: an envelope."""
        value: bytes = self.serializer.serialize(data)
        return value

    def deserialize(self, data: bytes) -> Any:
        """Read an envelope, or a value Huey pickled before the switch."""
        if is_legacy(data):
            return unpickle(data)  # opted in: installed only with legacy_pickle
        return self.serializer.deserialize(data)
