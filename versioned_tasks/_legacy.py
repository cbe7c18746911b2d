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

import heapq
import logging
import os
import pickle
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from huey.api import Task
from huey.registry import Message
from huey.storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisStorage,
    SqliteStorage,
)
from huey.utils import ChordConfig

from . import _envelope
from ._deadletters import DeadLetter, DeadLetterStore, SqliteBackend, backend_for
from ._pipeline import (
    Outcome,
    Reader,
    Rejected,
    Writer,
    _mark,
    error_detail,
    is_upcast_error,
    message_to_envelope,
)
from ._schema import SchemaRegistry, TaskSpec, bind_positional
from .exceptions import ConfigurationError, DecodeError, EncodeError, InvalidArguments

if TYPE_CHECKING:
    from ._huey import VersionedHuey

__all__ = [
    "MAX_LEGACY_BYTES",
    "LegacyConverter",
    "LegacyReader",
    "LegacyValueSerializer",
    "MigrationReport",
    "Tally",
    "build_converter",
    "is_legacy",
    "migrate",
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


def _is_envelope(raw: bytes) -> bool:
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


def build_converter(huey: VersionedHuey, option: Any) -> LegacyConverter | None:
    """The converter of an app for a ``legacy_pickle=`` option (None when off)."""
    names = parameter_names(option)
    if names is None:
        return None
    return LegacyConverter(huey.schema, huey._registry._registry, huey._writer, names)


# -- converting one message -----------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: str, error: str) -> None:
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
        task: Task = task_class(
            args,
            kwargs,
            message.id,
            message.eta,
            message.retries,
            message.retry_delay,
            message.priority,
            message.expires,
            on_complete,
            on_error,
            message.expires_resolved,
            message.timeout,
            chord,
            message.retry_backoff,
        )
        return task

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
            reason = "upcast_failed" if is_upcast_error(exc) else "invalid_payload"
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


# -- migrate-queue ----------------------------------------------------------------------

_CHUNK: Final = 200


@dataclass(slots=True)
class Tally:
    """What a migration did (or, in a dry run, would do) to the queue or the schedule.

    Attributes:
        converted: legacy messages rewritten as envelopes in place.
        envelopes: messages that were envelopes already, left untouched.
        dead_lettered: messages moved to the dead-letter store with their bytes.
        taken: legacy messages a worker popped while the migration ran (the
            worker read them; they were not rewritten).
    """

    converted: int = 0
    envelopes: int = 0
    dead_lettered: int = 0
    taken: int = 0


@dataclass(frozen=True, slots=True)
class Moved:
    """One message the migration dead-lettered (``entry_id`` is None in a dry run)."""

    area: str
    entry_id: str | None
    reason: str
    task: str | None
    version: int | None
    error: str


@dataclass(slots=True)
class MigrationReport:
    """The outcome of :func:`migrate`."""

    dry_run: bool
    queue: Tally = field(default_factory=Tally)
    schedule: Tally = field(default_factory=Tally)
    moved: list[Moved] = field(default_factory=list)
    #: Result-store keys whose values are still legacy pickle (left as they are).
    legacy_values: list[str] = field(default_factory=list)

    @property
    def dead_lettered(self) -> int:
        """Messages dead-lettered (or that would be) in the queue and the schedule."""
        return self.queue.dead_lettered + self.schedule.dead_lettered


@dataclass(frozen=True, slots=True)
class _Op:
    handle: Any
    raw: bytes
    new: bytes | None  # None: remove it (it is dead-lettered)
    rejected: Rejected | None


def migrate(huey: VersionedHuey, converter: LegacyConverter, *, dry_run: bool) -> MigrationReport:
    """Rewrite the legacy messages of the queue and the schedule as envelopes, in place.

    Every change is a compare-and-swap on one stored message: a message a
    worker pops meanwhile is left to the worker, and messages enqueued
    meanwhile are not touched. A message that cannot be converted is
    dead-lettered with its original bytes before it leaves the storage.

    Raises:
        ConfigurationError: the storage has no way to rewrite messages in place.
    """
    queue, schedule = _areas(huey.storage)
    report = MigrationReport(dry_run=dry_run)
    read = huey._reader.read
    report.queue = _migrate_area(queue, converter, read, huey.dead_letters, report)
    report.schedule = _migrate_area(schedule, converter, read, huey.dead_letters, report)
    report.legacy_values = sorted(
        str(key) for key, value in huey.storage.result_items().items() if is_legacy(value)
    )
    return report


def _migrate_area(
    area: _Area,
    converter: LegacyConverter,
    read: Callable[[bytes], Outcome],
    store: DeadLetterStore,
    report: MigrationReport,
) -> Tally:
    tally = Tally()
    for chunk in _chunks(area.items()):
        ops = []
        for handle, raw in chunk:
            if _is_envelope(raw):
                tally.envelopes += 1
                continue
            outcome, envelope = converter.outcome(raw, read)
            if isinstance(outcome, Rejected):
                ops.append(_Op(handle, raw, None, outcome))
            else:
                ops.append(_Op(handle, raw, envelope, None))
        if report.dry_run:
            _count_dry(area, ops, tally, report)
        elif ops:
            _count(area, ops, area.settle(ops, store), tally, report)
    return tally


def _chunks(items: list[tuple[Any, bytes]]) -> Iterator[list[tuple[Any, bytes]]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _count_dry(area: _Area, ops: list[_Op], tally: Tally, report: MigrationReport) -> None:
    for op in ops:
        if op.rejected is None:
            tally.converted += 1
        else:
            tally.dead_lettered += 1
            report.moved.append(_moved(area, None, op.rejected))


def _count(
    area: _Area,
    ops: list[_Op],
    settled: list[DeadLetter | bool],
    tally: Tally,
    report: MigrationReport,
) -> None:
    for op, result in zip(ops, settled, strict=True):
        if result is False:
            tally.taken += 1
        elif isinstance(result, DeadLetter):
            assert op.rejected is not None
            tally.dead_lettered += 1
            report.moved.append(_moved(area, result.id, op.rejected))
            logger.warning(
                "migrate-queue dead-lettered a %s message as %s (task %r): %s [entry %s]",
                area.label,
                result.reason,
                result.task,
                result.error,
                result.id,
            )
        else:
            tally.converted += 1


def _moved(area: _Area, entry_id: str | None, rejected: Rejected) -> Moved:
    return Moved(
        area.label, entry_id, rejected.reason, rejected.task, rejected.version, rejected.error
    )


# -- where messages wait, per storage ---------------------------------------------------


class _Area:
    """The queue or the schedule of one storage, rewritten one message at a time."""

    label = "queue"

    def items(self) -> list[tuple[Any, bytes]]:
        """Every stored message with a handle to find it again, oldest first."""
        raise NotImplementedError

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        """Replace (``op.new``) or remove each message if it is still there; atomic each."""
        raise NotImplementedError

    def settle(self, ops: Sequence[_Op], store: DeadLetterStore) -> list[DeadLetter | bool]:
        """Apply the ops: True converted, a DeadLetter moved, False taken by a worker.

        The dead letter is written before the message leaves the storage: if
        the run is killed in between, the message is in both places, never in
        neither.
        """
        entries: dict[int, DeadLetter] = {}
        for index, op in enumerate(ops):
            if op.rejected is not None:
                r = op.rejected
                entries[index] = store.add(
                    reason=r.reason, raw=op.raw, task=r.task, version=r.version, error=r.error
                )
        done = self.swap(ops)
        settled: list[DeadLetter | bool] = []
        for index, ok in enumerate(done):
            entry = entries.get(index)
            if not ok and entry is not None:
                store.delete(entry.id)  # the worker popped it and read it itself
            settled.append(entry if ok and entry is not None else ok)
        return settled


def _areas(storage: Any) -> tuple[_Area, _Area]:
    if isinstance(storage, RedisStorage):
        queue: _Area = (
            _RedisSortedSet(storage, storage.queue_key, "queue", prefix=8)
            if storage.priority
            else _RedisList(storage)
        )
        return queue, _RedisSortedSet(storage, storage.schedule_key, "schedule", prefix=0)
    if isinstance(storage, SqliteStorage):
        return _SqliteTable(storage, "task", "queue"), _SqliteTable(
            storage, "schedule", "schedule"
        )
    if isinstance(storage, PostgresStorage):
        return (
            _SqlTable(storage, storage.table_task, "queue", "%s"),
            _SqlTable(storage, storage.table_schedule, "schedule", "%s"),
        )
    if isinstance(storage, FileStorage):
        return (
            _Directory(storage, storage.queue_path, "queue"),
            _Directory(storage, storage.schedule_path, "schedule"),
        )
    if isinstance(storage, MemoryStorage):
        return _MemoryQueue(storage), _MemorySchedule(storage)
    raise ConfigurationError(
        f"migrate-queue cannot rewrite a {type(storage).__name__} in place; it knows "
        f"SqliteStorage, PostgresStorage, the Redis storages, FileStorage and MemoryStorage."
    )


# Redis: producers LPUSH at the head, workers (B)RPOP at the tail. A message's
# index counted from the tail changes only when messages to its right leave,
# so it can only move towards the tail: each message is looked for from where
# it was, plus how far the earlier ones had moved (``shift``), and replaced in
# place within the script, atomically.
_LIST_SWAP: Final = """
local key = KEYS[1]
local shift = tonumber(ARGV[1])
local marker = ARGV[2]
local done = {}
for i = 3, #ARGV, 3 do
  local index = tonumber(ARGV[i])
  local old, new = ARGV[i + 1], ARGV[i + 2]
  local pos = index + shift
  local found = 0
  while pos <= -1 do
    if redis.call('LINDEX', key, pos) == old then
      found = 1
      break
    end
    pos = pos + 1
  end
  if found == 1 then
    shift = pos - index
    if new == '' then
      redis.call('LSET', key, pos, marker)
      redis.call('LREM', key, -1, marker)
      shift = shift + 1
    else
      redis.call('LSET', key, pos, new)
    end
  end
  done[#done + 1] = found
end
table.insert(done, 1, shift)
return done
"""

# A sorted set (the schedule; PriorityRedisStorage's queue): the member is
# swapped for the new one under the same score, atomically.
_SET_SWAP: Final = """
local done = {}
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score then
    redis.call('ZREM', KEYS[1], ARGV[i])
    if ARGV[i + 1] ~= '' then
      redis.call('ZADD', KEYS[1], score, ARGV[i + 1])
    end
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
"""


class _RedisList(_Area):
    def __init__(self, storage: RedisStorage) -> None:
        self._conn = storage.conn
        self._key = storage.queue_key
        self._script = storage.conn.register_script(_LIST_SWAP)
        self._shift = 0
        self._marker = f"vt-migrate-queue:{uuid.uuid4().hex}".encode()

    def items(self) -> list[tuple[Any, bytes]]:
        items = self._conn.lrange(self._key, 0, -1)
        count = len(items)
        # Tail first (the next a worker pops), with the index counted from the tail.
        return [(index - count, bytes(items[index])) for index in range(count - 1, -1, -1)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        args: list[Any] = [self._shift, self._marker]
        for op in ops:
            args += [op.handle, op.raw, op.new or b""]
        shift, *done = self._script(keys=[self._key], args=args)
        self._shift = int(shift)
        return [bool(found) for found in done]


class _RedisSortedSet(_Area):
    def __init__(self, storage: RedisStorage, key: str, label: str, *, prefix: int) -> None:
        self._conn = storage.conn
        self._key = key
        self._prefix = prefix  # PriorityRedisStorage prefixes 8 bytes of enqueue time
        self._script = storage.conn.register_script(_SET_SWAP)
        self.label = label

    def items(self) -> list[tuple[Any, bytes]]:
        members = self._conn.zrange(self._key, 0, -1)
        return [(bytes(member), bytes(member[self._prefix :])) for member in members]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        args: list[bytes] = []
        for op in ops:
            member: bytes = op.handle
            args += [member, member[: self._prefix] + op.new if op.new is not None else b""]
        return [bool(found) for found in self._script(keys=[self._key], args=args)]


class _SqlTable(_Area):
    """Huey's task or schedule table, rewritten by row id and content."""

    def __init__(self, storage: Any, table: str, label: str, mark: str) -> None:
        self._storage = storage
        self._table = table
        self._mark = mark
        self.label = label
        p = mark
        self._update = (
            f"update {table} set data = {p} where id = {p} and queue = {p} and data = {p}"
        )
        self._delete = f"delete from {table} where id = {p} and queue = {p} and data = {p}"

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage.db() as cursor:
            cursor.execute(
                f"select id, data from {self._table} where queue = {self._mark} order by id",
                (self._storage.name,),
            )
            return [(row_id, bytes(data)) for row_id, data in cursor.fetchall()]

    def _apply(self, cursor: Any, op: _Op) -> bool:
        name = self._storage.name
        if op.new is not None:
            cursor.execute(self._update, (op.new, op.handle, name, op.raw))
        else:
            cursor.execute(self._delete, (op.handle, name, op.raw))
        return bool(cursor.rowcount == 1)

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        # PostgresStorage's connection is in autocommit: each statement is atomic.
        with self._storage.db() as cursor:
            return [self._apply(cursor, op) for op in ops]


class _SqliteTable(_SqlTable):
    """On SQLite the dead-letter table is in the same database: one transaction
    per chunk removes a message and writes its dead letter together."""

    def __init__(self, storage: SqliteStorage, table: str, label: str) -> None:
        super().__init__(storage, table, label, "?")
        backend = backend_for(storage)
        assert isinstance(backend, SqliteBackend)
        self._backend = backend

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage.db(commit=True) as cursor:
            return [self._apply(cursor, op) for op in ops]

    def settle(self, ops: Sequence[_Op], store: DeadLetterStore) -> list[DeadLetter | bool]:
        self._backend.ensure_table()
        settled: list[DeadLetter | bool] = []
        with self._storage.db(commit=True) as cursor:
            for op in ops:
                if not self._apply(cursor, op):
                    settled.append(False)
                elif op.rejected is not None:
                    settled.append(self._backend.insert(cursor, op.raw, op.rejected))
                else:
                    settled.append(True)
        return settled


class _Directory(_Area):
    """FileStorage: one file per message, rewritten under the storage's lock."""

    def __init__(self, storage: FileStorage, path: str, label: str) -> None:
        self._lock = storage.lock
        self._path = path
        self.label = label

    def _names(self) -> list[str]:
        try:
            names = os.listdir(self._path)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.endswith(".tmp"))

    def items(self) -> list[tuple[Any, bytes]]:
        with self._lock:
            items = []
            for name in self._names():
                with open(os.path.join(self._path, name), "rb") as f:
                    items.append((name, f.read()))
            return items

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._lock:
            return [self._swap_one(op) for op in ops]

    def _swap_one(self, op: _Op) -> bool:
        path = os.path.join(self._path, op.handle)
        try:
            with open(path, "rb") as f:
                if f.read() != op.raw:
                    return False
        except FileNotFoundError:
            return False
        if op.new is None:
            os.remove(path)
            return True
        partial = f"{path}.vt-migrate.tmp"  # ".tmp": FileStorage skips it when listing
        with open(partial, "wb") as f:
            f.write(op.new)
        os.replace(partial, path)
        return True


class _MemoryQueue(_Area):
    """MemoryStorage's heap of ``(priority, counter, data)``: in-process only."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage._lock:
            return [(counter, data) for _, counter, data in sorted(self._storage._queue)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage._lock:
            heap = self._storage._queue
            where = {entry[1]: index for index, entry in enumerate(heap)}
            done, removed = [], set()
            for op in ops:
                index = where.get(op.handle)
                found = index is not None and heap[index][2] == op.raw
                if found and op.new is not None:
                    # Same (priority, counter) key: the heap stays a heap.
                    heap[index] = (heap[index][0], op.handle, op.new)
                elif found:
                    removed.add(index)
                done.append(found)
            if removed:
                heap[:] = [entry for i, entry in enumerate(heap) if i not in removed]
                heapq.heapify(heap)
            return done


class _MemorySchedule(_Area):
    """MemoryStorage's heap of ``(timestamp, data)``: in-process only."""

    label = "schedule"

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def items(self) -> list[tuple[Any, bytes]]:
        with self._storage._lock:
            return [(ts, data) for ts, data in sorted(self._storage._schedule)]

    def swap(self, ops: Sequence[_Op]) -> list[bool]:
        with self._storage._lock:
            heap = self._storage._schedule
            done = []
            for op in ops:
                index = next(
                    (i for i, entry in enumerate(heap) if entry == (op.handle, op.raw)), None
                )
                if index is not None and op.new is not None:
                    heap[index] = (op.handle, op.new)
                elif index is not None:
                    heap.pop(index)
                done.append(index is not None)
            heapq.heapify(heap)
            return done
