"""``VersionedHuey``: a Huey whose messages are typed, versioned JSON envelopes.

All Huey-specific glue lives here, through Huey's own seams: ``serialize_task``,
``deserialize_task``, ``enqueue``, ``dequeue``, ``read_schedule``,
``get_task_wrapper_class`` and ``storage_class``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import inspect
import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, cast, overload

from huey.api import Huey, PeriodicTask, Result, ResultGroup, Task, TaskWrapper, chord, group
from huey.constants import EmptyData
from huey.signals import SIGNAL_ENQUEUED, SIGNAL_INTERRUPTED, SIGNAL_SCHEDULED
from pydantic import BaseModel, ValidationError

from ..exceptions import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    InvalidArguments,
    InvalidResult,
    MessageRejected,
    ReplayFailed,
    SchemaError,
    SignatureError,
)
from ..messages.actions import (
    SIGNAL_DEFERRED,
    DeadLetterAction,
    DeferredMessage,
)
from ..messages.legacy import (
    LegacyConverter,
    LegacyReader,
    LegacyValueSerializer,
    build_converter,
    warn_enabled,
)
from ..messages.readwrite import (
    Newer,
    Reader,
    Rejected,
    Retired,
    RetiredMessage,
    Writer,
    error_detail,
    is_upcast_error,
    task_factory,
    wire_info,
)
from ..messages.reasons import Reason
from ..messages.rolling import (
    DEFAULT_NEWER_VERSION_DELAY,
    DEFAULT_NEWER_VERSION_MAX_AGE,
    AutoEmit,
    HandOffs,
    LockSchemas,
    NewerVersionPolicy,
    check_policy,
    parse_emit_versions,
)
from ..schema.checks import check_registry
from ..schema.registry import Downcaster, SchemaRegistry, TaskSpec, Upcaster, build_spec
from ..storage.adapters import adapter_for, fleet_enabled, reliable_enabled
from ..storage.atomic import AtomicSql
from ..storage.classes import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    PriorityRedisExpireStorage,
    PriorityRedisStorage,
    RedisExpireStorage,
    RedisStorage,
    SqliteStorage,
)
from ..storage.deadletters import DeadLetterBackend, DeadLetterStore, Requeue
from ..storage.forking import guard_across_fork, guard_storage_across_fork
from ..storage.reliable import InflightLists, Slot, is_transient
from ..wire.envelope import MAX_DEPTH_CEILING
from ..wire.revocations import check_record, restore_hint
from ..wire.values import register_model
from .declare import discover_migrations, set_default_app
from .dispatch import Dispatcher, dequeued_bytes, remember_dequeued
from .events import Events
from .fleet import (
    DEFAULT_FLEET_INTERVAL,
    FleetConsumer,
    Heartbeat,
    WorkerInfo,
    live_workers,
)
from .observe import Observer, read_info
from .serializer import VersionedSerializer

if TYPE_CHECKING:
    from ..ops.census import CensusRow

__all__ = [
    "VersionedFileHuey",
    "VersionedHuey",
    "VersionedMemoryHuey",
    "VersionedPostgresHuey",
    "VersionedPriorityRedisExpireHuey",
    "VersionedPriorityRedisHuey",
    "VersionedRedisExpireHuey",
    "VersionedRedisHuey",
    "VersionedSqliteHuey",
    "VersionedTaskWrapper",
]

logger = logging.getLogger("versioned_tasks")

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[[RetiredMessage], object])

#: The tasks this context's worker is executing, innermost last (a task runs
#: another inline in immediate mode). The last one is the task being executed;
#: the callbacks and retries any of them may enqueue are dead-lettered, when
#: invalid, instead of raising inside Huey (see :func:`_may_enqueue`). One
#: variable set per execute: this is the worker's hot path.
_RUNNING: contextvars.ContextVar[tuple[Task, ...]] = contextvars.ContextVar(
    "versioned_tasks_running", default=()
)


class _Replaying:
    """One ``dead_letters.replay(id)`` call in progress (see ``_REPLAYING``)."""

    __slots__ = ("entry_id", "rejected", "task_id")

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        #: Why today's pipeline refused the message again (then the entry gets it).
        self.rejected: MessageRejected | None = None
        self.task_id: str | None = None


#: The replay this context is running, so that the app's replay callback and the
#: store's result can be told as one event.
_REPLAYING: contextvars.ContextVar[_Replaying | None] = contextvars.ContextVar(
    "versioned_tasks_replaying", default=None
)


class _AppDeadLetters(DeadLetterStore):
    """The app's dead-letter store: a replay, or a replay that fails again, is
    logged and signalled (``SIGNAL_REPLAYED``, ``SIGNAL_DEAD_LETTERED``)."""

    def __init__(
        self, backend: DeadLetterBackend, replay: Callable[[bytes], Requeue], events: Events
    ) -> None:
        super().__init__(backend, replay)
        self._events = events

    def replay(self, id: str) -> Any:
        replaying = _Replaying(id)
        token = _REPLAYING.set(replaying)
        try:
            return super().replay(id)
        except ReplayFailed as exc:
            # Today's pipeline refused it and the entry now holds the new reason:
            # the message is dead-lettered again (a corrupt entry changed nothing).
            rejected = replaying.rejected
            if rejected is not None:
                action = DeadLetterAction(
                    cast(Reason, exc.reason), exc.task, exc.version, exc.error, replaying.task_id
                )
                self._events.dead_lettered(action, id)
            raise
        finally:
            _REPLAYING.reset(token)


class _Kept(NamedTuple):
    """A dead letter the worker writes for a task Huey could not write."""

    raw: bytes
    reason: Reason
    task: str
    version: int | None
    error: str


class VersionedTaskWrapper(TaskWrapper, Generic[P, R]):  # type: ignore[misc]
    """What ``@huey.versioned_task()`` returns: a Huey ``TaskWrapper`` with a schema.

    Calls, ``.s()``, ``.schedule()``, ``.map()``, ``.revoke()`` and the rest
    behave as on a plain Huey task; arguments are validated whenever a message
    is written. For type checkers, calling it and ``.s()`` take the function's
    own parameters, and ``call_local()`` returns what the function returns.
    """

    spec: TaskSpec

    def __init__(
        self, huey: VersionedHuey, func: Callable[..., Any], *, spec: TaskSpec, **options: Any
    ) -> None:
        self.spec = spec
        super().__init__(huey, func, _vt_spec=spec, **options)
        spec.task_class = self.task_class
        spec.make_task = task_factory(self.task_class)

    def __repr__(self) -> str:
        return f"<VersionedTask {self.spec.name!r} v{self.spec.version}>"

    @property
    def version(self) -> int:
        """The task's current schema version."""
        return self.spec.version

    @property
    def logical_name(self) -> str:
        """The stable logical name written on the wire."""
        return self.spec.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Enqueue a call (validated first); returns Huey's ``Result``."""
        return super().__call__(*args, **kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Build the call as a Huey ``Task`` without enqueueing it (for pipelines)."""
        return super().s(*args, **kwargs)

    def map(self, it: Iterable[Any]) -> Any:
        """Huey's map: enqueue one call per item, but only if every item is valid."""
        results = self.huey._enqueue_all(self._apply(it))
        return ResultGroup(results) if self.huey.results else None

    def call_local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, with arguments validated as the worker would."""
        task_args, task_kwargs = self.spec.load_json(self.spec.dump(args, kwargs))
        result: R = self.func(*task_args, **task_kwargs)
        return result


class _TombstoneDecorator:
    """Returned by ``huey.tombstone(name)``: apply it to a function to handle retired messages."""

    def __init__(self, registry: SchemaRegistry, name: str) -> None:
        self._tomb = registry.add_tombstone(name)
        self._name = name

    def __repr__(self) -> str:
        return f"<tombstone {self._name!r}>"

    def __call__(self, handler: H) -> H:
        self._tomb.handler = handler
        return handler


class VersionedHuey(Huey):  # type: ignore[misc]
    """A ``huey.Huey`` whose tasks are typed and versioned, and whose bad
    messages land in a dead-letter store instead of being lost.

    Args:
        name: the queue name, as for Huey.
        storage_class: Huey's storage class (Huey's own default when omitted).
        serializer: a :class:`VersionedSerializer` (the default); pickle is refused.
        newer_version: what a worker does with a message newer than it knows:
            ``"defer"`` (the default) hands the exact bytes back to the queue
            for another worker, and when they come back puts them on the
            schedule; ``"dead_letter"`` dead-letters the message as
            ``newer_version`` at once. A task's own ``newer_version=``
            overrides it.
        newer_version_delay: seconds before a deferred message is due again,
            the first time; later delays grow with the message's age:
            ``min(max(age / 2, newer_version_delay), newer_version_max_delay)``,
            plus a random fraction of a second.
        newer_version_max_delay: the longest delay (default one hour, or
            ``newer_version_delay`` if that is longer).
        newer_version_max_age: seconds after its enqueue time at which a
            newer message is dead-lettered as ``newer_version`` instead.
        emit_versions: write some tasks at an older version, through their
            downcasters, while old workers still run: a mapping of logical
            task names to versions, or ``"auto"`` for the highest version
            every live worker reads. When None (the default), the environment
            variable ``VERSIONED_TASKS_EMIT_VERSIONS`` is read
            (``"billing.send_invoice=2,other=1"`` or ``"auto"``).
        schema_lock: a schema lock (its path, or the loaded lock) whose
            version history checks downcast payloads against the older
            version's JSON Schema (needs the ``jsonschema`` package).
        app_build: an optional build id written into every envelope's header.
        legacy_pickle: read (never write) the pickled messages and values a
            plain Huey left in this storage: off by default, since unpickling
            runs code named by the bytes (a warning is logged when on; see
            docs/adoption.md). ``True``, or a mapping of logical task names to
            their version-1 parameter names, for tasks now past version 1 whose
            legacy messages pass positional arguments.
        fleet: whether this app's consumers publish a heartbeat naming the
            tasks and versions they run (see ``huey.fleet()``): None (the
            default) for Redis storages only, True or False for any storage.
        fleet_interval: seconds between two heartbeats of a consumer; one not
            seen for three intervals is no longer counted as live.
        reliable: reliable fetch on Redis, closing Huey's window between a
            worker's pop and the message's outcome. None (the default) turns
            it on for RedisStorage and RedisExpireStorage (with ``fleet`` on);
            True or False say so. A worker moves each message from the queue
            into its own in-flight list (``BLMOVE``) and removes it once the
            outcome is stored: the task ran (success, failure, retry,
            revoked, expired, moved to the schedule for a future eta), or the
            message was dead-lettered, deferred, requeued or handed to a
            tombstone handler; where the outcome is a Redis write, in the same
            transaction. The in-flight lists of a consumer that stopped
            publishing its heartbeat (three missed beats, or killed), and of
            a worker process Huey restarted, go back to the queue. So after a
            crash a message runs twice only when its worker died during the
            task (at-least-once for that case, as Celery's ``acks_late``);
            every other message runs, or is dead-lettered, once. The removal
            of a task that ran rides on the worker's next pop (one pipelined
            round trip), so a worker costs Redis no extra round trip per message.
            Only the consumer's own thread and process workers pop this way.
            Refused (``ConfigurationError``) on other storages, including the
            priority Redis storages, and with ``fleet=False``.
        default: make this the process's default app, the one that module-level
            declarations (``from versioned_tasks import versioned_task``) bind
            to; every declaration made so far is applied to it now. Refused
            (``ConfigurationError``) when another app already is the default.
        **huey_kwargs: every other Huey option (``results``, ``utc``,
            ``immediate``, storage options such as ``filename`` or ``url``, ...).

    Constructing one touches no storage beyond what Huey's storage itself does;
    the dead-letter store opens on first use.
    """

    def __init__(
        self,
        name: str = "huey",
        *,
        storage_class: type[Any] | None = None,
        serializer: VersionedSerializer | None = None,
        newer_version: str = "defer",
        newer_version_delay: float = DEFAULT_NEWER_VERSION_DELAY,
        newer_version_max_delay: float | None = None,
        newer_version_max_age: float = DEFAULT_NEWER_VERSION_MAX_AGE,
        emit_versions: Mapping[str, int] | str | None = None,
        schema_lock: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        app_build: str | None = None,
        legacy_pickle: bool | Mapping[str, Sequence[str]] = False,
        fleet: bool | None = None,
        fleet_interval: float = DEFAULT_FLEET_INTERVAL,
        reliable: bool | None = None,
        default: bool = False,
        **huey_kwargs: Any,
    ) -> None:
        serializer = _check_serializer(serializer, huey_kwargs)
        self._newer = NewerVersionPolicy.from_options(
            newer_version, newer_version_delay, newer_version_max_delay, newer_version_max_age
        )
        emit = parse_emit_versions(emit_versions)
        old_schemas = LockSchemas(schema_lock) if schema_lock is not None else None
        self.schema = SchemaRegistry()
        self._deferrals: Counter[str] = Counter()
        #: Integrations watching every message (``add_observer``); empty: no cost.
        self._observers: list[Observer] = []
        #: Those of them that wrap each execution (their own ``Observer.execute``).
        self._wrappers: list[Observer] = []
        self._deferrals_lock = threading.Lock()
        self._hand_offs = HandOffs()
        self._dead_letters: DeadLetterStore | None = None
        self._dead_letters_storage: Any = None
        self._dead_letters_lock = threading.Lock()
        self._atomic_sql: AtomicSql | None = None
        # A fresh number after each revocation record this process writes or
        # clears: records read with a pop are used only if none changed since.
        self._revocation_numbers = itertools.count(1)
        self._revocations_changed = 0
        #: How many tasks were declared when migrations packages were last looked for.
        self._migrations_seen = 0
        super().__init__(name, storage_class=storage_class, serializer=serializer, **huey_kwargs)
        # Threads of a consumer's main process (metrics, heartbeat) use these
        # while it forks its workers.
        guard_across_fork(self, "_dead_letters_lock")
        guard_across_fork(self, "_deferrals_lock")
        guard_storage_across_fork(self.storage)
        self._dispatch = Dispatcher(self)
        self._reader = Reader(
            self.schema, serializer.unpack, self._plain_task, max_depth=serializer.max_depth
        )
        self._writer = Writer(self.schema, serializer.frame, app_build)
        #: Keeps what the worker cannot write within max_depth (see _beyond_limits).
        self._deep_writer = Writer(self.schema, serializer.frame_deep, app_build)
        self._configure_emit(emit, old_schemas)
        # Adopting a pickle queue: legacy bytes are converted where they are read.
        self._legacy = build_converter(legacy_pickle, self.schema, self.task_classes, self._writer)
        if self._legacy is not None:
            self._reader = LegacyReader(self._reader, self._legacy)
            self.serializer = LegacyValueSerializer(serializer)
            warn_enabled(self.name)
        # Heartbeats are published by consumers (create_consumer); checked here.
        if not fleet_interval > 0:
            raise ConfigurationError(f"fleet_interval must be positive, got {fleet_interval!r}.")
        self.fleet_interval = float(fleet_interval)
        adapter = adapter_for(self.storage)
        self.fleet_enabled = fleet_enabled(fleet, adapter)
        self.reliable = reliable_enabled(reliable, adapter, heartbeats=self.fleet_enabled)
        #: The in-flight lists of reliable fetch (None when it is off).
        self.inflight = (
            InflightLists(self.storage, required=reliable is True) if self.reliable else None
        )
        if default:
            set_default_app(self)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} storage={type(self.storage).__name__} "
            f"versioned_tasks={len(self.schema.specs)}>"
        )

    # -- rolling deploys -----------------------------------------------------

    @property
    def newer_version(self) -> str:
        """The app's newer-version policy: ``"defer"`` or ``"dead_letter"``."""
        return self._newer.policy

    @property
    def newer_version_delay(self) -> float:
        """Seconds before a deferred message is read again, the first time."""
        return self._newer.delay

    @property
    def newer_version_max_delay(self) -> float:
        """The longest delay between two reads of a deferred message."""
        return self._newer.max_delay

    @property
    def newer_version_max_age(self) -> float:
        """Age (from the envelope's ``at``) at which a newer message is dead-lettered."""
        return self._newer.max_age

    @property
    def emit_versions(self) -> Mapping[str, int] | str:
        """The versions this app writes below today's: a mapping, or ``"auto"``."""
        if isinstance(self._writer.emit, AutoEmit):
            return "auto"
        return dict(self.schema.emit_versions)

    def deferral_counts(self) -> dict[str, int]:
        """How many times this process deferred a newer message, by task name on the wire."""
        with self._deferrals_lock:
            return dict(self._deferrals)

    def _configure_emit(
        self, emit: Mapping[str, int] | str, old_schemas: LockSchemas | None
    ) -> None:
        self._writer.check_old = old_schemas
        if emit == "auto":
            from .fleet import readable_versions

            self._writer.emit = AutoEmit(self, self.schema, readable_versions)
        elif emit:
            pins = dict(cast(Mapping[str, int], emit))
            self.schema.emit_versions = pins

            def pinned(spec: TaskSpec) -> int:
                return pins.get(spec.name, spec.version)

            # Only an app with pins pays for a lookup per message written.
            self._writer.emit = pinned

    def _deferred(self, message: DeferredMessage) -> None:
        """A deferral is on the schedule: count it and send ``SIGNAL_DEFERRED``."""
        with self._deferrals_lock:
            self._deferrals[message.task] += 1
        self._emit(SIGNAL_DEFERRED, message)

    # -- declarations --------------------------------------------------------

    @overload
    def versioned_task(
        self,
        version: int,
        *,
        name: str | None = None,
        args_model: None = None,
        result_model: type[BaseModel] | None = None,
        allow_compatible_changes: bool = False,
        newer_version: str | None = None,
        **huey_task_options: Any,
    ) -> Callable[[Callable[P, R]], VersionedTaskWrapper[P, R]]: ...
    @overload
    def versioned_task(
        self,
        version: int,
        *,
        name: str | None = None,
        args_model: type[BaseModel],
        result_model: type[BaseModel] | None = None,
        allow_compatible_changes: bool = False,
        newer_version: str | None = None,
        **huey_task_options: Any,
    ) -> Callable[[Callable[..., R]], VersionedTaskWrapper[..., R]]: ...
    def versioned_task(
        self,
        version: int,
        *,
        name: str | None = None,
        args_model: type[BaseModel] | None = None,
        result_model: type[BaseModel] | None = None,
        allow_compatible_changes: bool = False,
        newer_version: str | None = None,
        **huey_task_options: Any,
    ) -> Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]]:
        """Declare a task with a typed argument model and a schema version.

        Args:
            version: the current schema version of the task's arguments (>= 1).
            name: the stable logical name on the wire (default ``module.function``).
            args_model: a pydantic model for the arguments; the function then
                receives one instance of it.
            result_model: a pydantic model the return value is validated as in
                the worker (a dict or a model instance); ``Result.get()``
                gives it back as an instance of this model. A return value
                that does not validate fails the task with ``InvalidResult``.
            allow_compatible_changes: let ``versioned-tasks check`` accept a
                backward-compatible change of the argument schema (an optional
                field added, a type widened) without a version bump.
            newer_version: this task's own newer-version policy (``"defer"`` or
                ``"dead_letter"``); None follows the app's ``newer_version``.
            **huey_task_options: Huey's task options (``retries``,
                ``retry_delay``, ``priority``, ``expires``, ``context``, ...).

        Raises:
            SchemaError: a reserved or unnamed parameter, a bad default, a
                duplicate name or version, a ``result_model`` that is not a
                pydantic model.
            ConfigurationError: an unknown ``newer_version`` policy.
        """
        if newer_version is not None:
            check_policy(newer_version, "newer_version")

        def decorator(func: Callable[..., Any]) -> VersionedTaskWrapper[..., Any]:
            func = func.func if isinstance(func, TaskWrapper) else func
            written = func
            logical = name or f"{func.__module__}.{func.__name__}"
            if result_model is not None:
                func = _returning(func, logical, version, result_model)
            spec = build_spec(
                func,
                name=logical,
                version=version,
                args_model=args_model,
                context=bool(huey_task_options.get("context", False)),
            )
            spec.func = written
            spec.result_model = result_model
            spec.allow_compatible_changes = allow_compatible_changes
            spec.newer_version = newer_version
            self.schema.add_task(spec)
            try:
                return self._versioned_wrapper(func, spec, name, dict(huey_task_options))
            except ValueError as exc:
                del self.schema.specs[logical]
                raise SchemaError(
                    f"Task {logical!r} version {version} cannot be registered with Huey: {exc}",
                    task=logical,
                ) from None
            except Exception:
                del self.schema.specs[logical]
                raise

        return decorator

    def _versioned_wrapper(
        self,
        func: Callable[..., Any],
        spec: TaskSpec,
        name: str | None,
        options: dict[str, Any],
    ) -> VersionedTaskWrapper[..., Any]:
        context = options.pop("context", False)
        defaults = {
            f"default_{key}": options.pop(key)
            for key in (
                "retries",
                "retry_delay",
                "retry_backoff",
                "priority",
                "expires",
                "timeout",
            )
            if key in options
        }
        return VersionedTaskWrapper(
            self, func, spec=spec, context=context, name=name, **defaults, **options
        )

    def versioned_periodic_task(
        self,
        validate_datetime: Callable[[datetime.datetime], bool],
        *,
        version: int = 1,
        name: str | None = None,
        **huey_task_options: Any,
    ) -> Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]]:
        """A versioned task that the consumer's scheduler also enqueues on a schedule.

        ``validate_datetime`` is what Huey's ``periodic_task`` takes (a
        ``crontab(...)``); the scheduler enqueues the task with no arguments, so
        every parameter needs a default. It can still be called like any
        versioned task.

        Raises:
            SchemaError: as for :meth:`versioned_task`, or a parameter without
                a default.
        """

        def method_validate(task: Task, timestamp: datetime.datetime) -> bool:
            return validate_datetime(timestamp)

        def decorator(func: Callable[..., Any]) -> VersionedTaskWrapper[..., Any]:
            target = func.func if isinstance(func, TaskWrapper) else func
            required = _required_parameters(target, huey_task_options)
            if required:
                logical = name or f"{target.__module__}.{target.__name__}"
                raise SchemaError(
                    f"Periodic task {logical!r} version {version} has parameters without "
                    f"defaults ({', '.join(required)}); the scheduler calls it with none. "
                    f"Give them defaults.",
                    task=logical,
                )
            declare = cast(
                Callable[[Callable[..., Any]], VersionedTaskWrapper[..., Any]],
                self.versioned_task(
                    version,
                    name=name,
                    task_base=PeriodicTask,
                    validate_datetime=method_validate,
                    **huey_task_options,
                ),
            )
            return declare(target)

        return decorator

    def periodic_task(
        self, validate_datetime: Callable[[datetime.datetime], bool], **options: Any
    ) -> Callable[[Callable[..., Any]], Any]:
        """Huey's ``periodic_task``; on a versioned task, use ``versioned_periodic_task``.

        Raises:
            SchemaError: when stacked on ``@huey.versioned_task``, which would
                register a second, unversioned task for the same function.
        """
        plain = super().periodic_task(validate_datetime, **options)

        def decorator(func: Callable[..., Any]) -> Any:
            if isinstance(func, VersionedTaskWrapper):
                raise SchemaError(
                    f"@huey.periodic_task() on the versioned task {func.spec.name!r} would "
                    f"register a second, unversioned task; declare it with "
                    f"@huey.versioned_periodic_task(crontab(...), version="
                    f"{func.spec.version}) instead.",
                    task=func.spec.name,
                )
            return plain(func)

        return decorator

    def upcaster(self, task: str, /, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a pure ``dict -> dict`` step from ``from_version`` to the next.

        A task's steps must form a contiguous range ending at its current
        version - 1; the chain is checked as a whole at start-up.
        """

        def decorator(func: Upcaster) -> Upcaster:
            self.schema.add_upcaster(task, from_version, func)
            return func

        return decorator

    def downcaster(self, task: str, /, *, from_version: int) -> Callable[[Downcaster], Downcaster]:
        """Register a pure ``dict -> dict`` step from ``from_version`` down to the one before.

        Producers pinned to an older version (``emit_versions``) write through
        these steps. A task's downcasters must form a contiguous range starting
        at its current version; the chain, and that every pinned version is
        reachable both ways, is checked with the rest of the schema.

        Raises:
            SchemaError: a second step from the same version, or ``from_version``
                below 2.
        """

        def decorator(func: Downcaster) -> Downcaster:
            self.schema.add_downcaster(task, from_version, func)
            return func

        return decorator

    def rename(self, old: str, new: str, /) -> None:
        """Run messages written under the logical name ``old`` as the task ``new``."""
        self.schema.add_rename(old, new)

    @overload
    def tombstone(self, task: str, /) -> _TombstoneDecorator: ...
    @overload
    def tombstone(self, task: str, /, handler: H) -> H: ...
    def tombstone(self, task: str, /, handler: Any = None) -> Any:
        """Retire a task: its messages never run.

        As a decorator, the handler runs once per message of the retired task
        (in the worker, before any task code) with a :class:`RetiredMessage`.
        As a plain call with no handler, its messages go to the dead-letter
        store with reason ``retired``.
        """
        decorator = _TombstoneDecorator(self.schema, task)
        if handler is not None:
            return decorator(handler)
        return decorator

    def check_schemas(self) -> None:
        """Check every task, upcaster chain, rename and tombstone together.

        First imports the ``task_migrations`` package beside each task's module
        (where ``versioned-tasks makemigrations`` writes its steps), once per
        process.

        Raises:
            SchemaError: naming each problem, the task, the versions and the fix.
        """
        self._migrations_seen = len(self.schema.specs)
        discover_migrations(self.schema.specs.values())
        plain = (
            key
            for key, task_class in self._registry._registry.items()
            if getattr(task_class, "_vt_spec", None) is None
        )
        check_registry(self.schema, plain)

    def _ensure_checked(self) -> None:
        if self.schema.dirty:
            self.check_schemas()

    def create_consumer(self, **options: Any) -> Any:
        """Huey's consumer, after checking the schemas and the dead-letter store.

        With ``fleet`` on, the consumer publishes a heartbeat from ``start()``
        until ``stop()``.
        """
        self.check_schemas()
        self.dead_letters  # noqa: B018 - fails early for a storage without a store
        _log_with_the_consumer()
        board = adapter_for(self.storage).fleet_board() if self.fleet_enabled else None
        if board is None:
            consumer = super().create_consumer(**options)
        else:
            heartbeat = Heartbeat(self, board, self.fleet_interval)
            consumer = FleetConsumer(self, heartbeat=heartbeat, **options)
        for observer in self._observers:
            observer.consumer_created(consumer)
        return consumer

    def add_observer(self, observer: Observer) -> None:
        """Add an integration's hooks (see ``versioned_tasks.app.observe.Observer``).

        For integrations such as ``versioned_tasks.contrib.prometheus``; an app
        without observers pays nothing for them.
        """
        if observer in self._observers:
            return
        if observer.writes_header:
            for writer in (self._writer, self._deep_writer):
                if writer.header_fields is not None:
                    raise ConfigurationError(
                        f"App {self.name!r} already has an observer that writes header "
                        f"fields; remove it first (huey.remove_observer())."
                    )
                writer.header_fields = observer.header_fields
        self._observers.append(observer)
        self._wrappers = [o for o in self._observers if type(o).execute is not Observer.execute]

    def remove_observer(self, observer: Observer) -> None:
        """Remove hooks added with :meth:`add_observer` (nothing if absent)."""
        if observer in self._observers:
            self._observers.remove(observer)
            self._wrappers = [o for o in self._wrappers if o is not observer]
            if observer.writes_header:
                self._writer.header_fields = self._deep_writer.header_fields = None

    def fleet(self) -> list[WorkerInfo]:
        """The consumers of this queue that published a heartbeat recently."""
        return live_workers(self)

    # -- internal accessors, for the operations modules and testing ----------------
    # Not part of the public API: they let census, lock, migrate-queue, the fleet
    # and testing reach the app's reader and writer without its private attributes.

    @property
    def message_reader(self) -> Reader:
        """The reader of this app's stored bytes (the legacy one when pickle is adopted)."""
        return self._reader

    @property
    def message_events(self) -> Events:
        """The logs and signals of what happens to messages (migrate-queue's dead letters)."""
        return self._dispatch.events

    @property
    def message_writer(self) -> Writer:
        """The writer of this app's envelopes."""
        return self._writer

    @property
    def legacy_converter(self) -> LegacyConverter | None:
        """The converter of legacy pickled messages, when ``legacy_pickle`` is on."""
        return self._legacy

    @property
    def task_classes(self) -> Mapping[str, type[Task]]:
        """Every task class registered with this app, by registry key (plain ones too)."""
        return cast("Mapping[str, type[Task]]", self._registry._registry)

    def plain_task(self, name: str) -> type[Task] | None:
        """The plain ``@huey.task()`` registered under ``name``, if any."""
        return self._plain_task(name)

    # -- dead letters ----------------------------------------------------------

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The dead-letter store beside this app's storage (opened on first use)."""
        with self._dead_letters_lock:
            if self._dead_letters is None or self._dead_letters_storage is not self.storage:
                guard_storage_across_fork(self.storage)
                adapter = adapter_for(self.storage)
                backend = adapter.dead_letters()
                self._dead_letters = _AppDeadLetters(backend, self._replay, self._dispatch.events)
                self._dead_letters_storage = self.storage
                self._atomic_sql = adapter.atomic_pops(backend)
            return self._dead_letters

    def census(self, *, progress: Callable[[str, int], None] | None = None) -> list[CensusRow]:
        """Count the queue, the schedule and the dead-letter store by task and version.

        Rows ``{"task", "version", "where", "count"}``, reading message headers
        only, in chunks; ``progress(where, n)`` is called after each chunk. For
        what still needs each upcaster, rename and tombstone, see
        :func:`versioned_tasks.take_census`.
        """
        # The census is an operation over the app, a layer above it: imported when used.
        from ..ops.census import take_census

        return take_census(self, progress=progress).rows

    def _replay(self, raw: bytes) -> Requeue:
        """What a replay of ``raw`` enqueues; the store removes the entry with it."""
        outcome = self._reader.read(raw)
        if isinstance(outcome, Task):
            return self._replay_task(outcome)
        if isinstance(outcome, Retired) and self._has_handler(outcome):
            # The exact bytes go back; the worker hands them to the tombstone
            # handler. No task, no result.
            message = outcome.message
            return Requeue(
                raw,
                outcome.priority,
                lambda: self._replayed(message.task, message.version, str(message.id)),
            )
        rejected = _rejection(outcome)
        replaying = _REPLAYING.get()
        if replaying is not None:
            replaying.rejected = rejected
            replaying.task_id = getattr(outcome, "id", None)
        raise rejected

    def _replayed(self, task: str | None, version: int | None, task_id: str | None) -> None:
        replaying = _REPLAYING.get()
        if replaying is not None:
            self._dispatch.events.replayed(replaying.entry_id, task, version, task_id)

    def _replay_task(self, task: Task) -> Requeue:
        # As enqueue() does, except that the storage write is the store's.
        if task.expires:
            task.resolve_expires(self.utc)
        data = self.serialize_task(task)
        wire = read_info(task, task)

        def enqueued() -> Any:
            self._replayed(wire.task, wire.version, task.id)
            if "_vt_from" in task.__dict__:
                self._dispatch.events.migrated(task)
            self._emit(SIGNAL_ENQUEUED, task)
            if self._immediate:
                self.execute(self.deserialize_task(data))
            return self._enqueued_result(task)

        return Requeue(None if self._immediate else data, task.priority, enqueued)

    # -- writing ---------------------------------------------------------------

    def serialize_task(self, task: Task) -> bytes:
        """Validate a task's arguments and write its envelope."""
        if len(self.schema.specs) != self._migrations_seen:
            # A producer pinned to an older version writes through downcasters
            # that may live in a migrations package: import it before writing.
            self._migrations_seen = len(self.schema.specs)
            discover_migrations(self.schema.specs.values())
        return self._writer.encode(task)

    def enqueue(self, task: Any) -> Any:
        """Huey's enqueue, validating (serializing) before ``SIGNAL_ENQUEUED`` fires.

        In immediate mode the message still makes the full envelope round trip.
        """
        if isinstance(task, group) and all(isinstance(t, Task) for t in task.tasks):
            return ResultGroup(self._enqueue_all(task.tasks))
        if isinstance(task, group | chord):
            self._validate_members(task)  # chords: members are written again below
            return super().enqueue(task)
        data = self._encode_for_enqueue(task)
        return None if data is None else self._enqueue_encoded(task, data)

    def _enqueue_all(self, tasks: list[Task]) -> list[Any]:
        # Every task is written before any is stored, so that one bad task
        # raises before the others fire SIGNAL_ENQUEUED (groups, .map()).
        encoded = [(task, self._encode_for_enqueue(task)) for task in tasks]
        return [
            None if data is None else self._enqueue_encoded(task, data) for task, data in encoded
        ]

    def _encode_for_enqueue(self, task: Task) -> bytes | None:
        if task.expires:
            task.resolve_expires(self.utc)
        return self._encode_or_dead_letter(task)

    def _enqueue_encoded(self, task: Task, data: bytes) -> Any:
        self._emit(SIGNAL_ENQUEUED, task)
        if self._immediate:
            self.execute(remember_dequeued(self.deserialize_task(data), data))
        elif _in_flight(task) is not None and not task.priority and _executing(task):
            # A retry of the task this worker holds in flight: one transaction.
            queue = self.storage.queue_key
            self._settle_task(task, lambda pipe: pipe.lpush(queue, data))
        else:
            self.storage.enqueue(data, task.priority)
        return self._enqueued_result(task)

    def _enqueued_result(self, task: Task) -> Any:
        if not self.results:
            return None
        results = self._pipeline_results(task)
        return results[0] if len(results) == 1 else ResultGroup(results)

    def _validate_members(self, tasks: Any) -> None:
        # Every member is written once up front, so that one bad member raises
        # before any other is stored or fires SIGNAL_ENQUEUED. A chord's
        # callback is completed at run time and validated then.
        for member in tasks.tasks:
            if isinstance(member, group | chord):
                self._validate_members(member)
            else:
                self.serialize_task(member)

    def _encode_or_dead_letter(self, task: Task) -> bytes | None:
        try:
            return self.serialize_task(task)
        except (InvalidArguments, EncodeError) as exc:
            if not _may_enqueue(task.id):
                raise
            # A callback, retry or schedule move written by Huey inside the
            # worker: raising here would lose it, so it is kept as a dead letter.
            kept = self._unwritable(task, exc)
            try:
                self._dispatch.dead_letter(
                    kept.raw, kept.reason, kept.task, kept.version, kept.error, task_id=task.id
                )
            except Exception:
                self._dispatch.rescue(kept.raw)
                raise
            return None

    def _unwritable(self, task: Task, exc: Exception) -> _Kept:
        """What to keep of a task Huey could not write inside the worker."""
        name, version = _task_identity(task)
        where = (
            f"Huey enqueued {name!r} version {version} inside the worker (a pipeline "
            f"step, on_error handler, chord callback, retry or schedule move)"
        )
        try:
            raw = self._writer.encode(task, validate=False)
        except EncodeError as again:
            return self._beyond_limits(task, where, again)
        reason: Reason = "upcast_failed" if is_upcast_error(exc) else "invalid_payload"
        error = (
            f"{where} with arguments that do not fit: {error_detail(exc)}. Fix the task's "
            f"signature or the caller, then replay."
        )
        return _Kept(raw, reason, name, version, error)

    def _beyond_limits(self, task: Task, where: str, exc: EncodeError) -> _Kept:
        if task is _current():
            # A retry or a move to the schedule: the bytes it was dequeued from
            # are the message itself.
            return self._parent_bytes(task, where, exc)
        try:
            raw = self._deep_writer.encode(task, validate=False)
        except EncodeError as last:
            return self._parent_bytes(task, where, last)
        error = (
            f"{where}, and it cannot be written within this worker's limits ({exc}). It "
            f"was kept as written with max_depth {MAX_DEPTH_CEILING}: raise max_depth on "
            f"the workers' VersionedSerializer, or split the pipeline, then replay."
        )
        # undecodable: these bytes nest deeper than this worker reads or writes
        # (its reader refuses such callbacks); they replay once max_depth is raised.
        return _Kept(raw, "undecodable", *_task_identity(task), error)

    def _parent_bytes(self, task: Task, where: str, exc: EncodeError) -> _Kept:
        """The bytes of the task being executed, which hold ``task`` (or are it)."""
        parent = _current()
        raw = dequeued_bytes(parent) if parent is not None else None
        if parent is None or raw is None:
            # Not in a worker's run of a dequeued task: the caller sees the
            # error, as on any write.
            raise exc
        if parent is task:
            note = (
                "These are the bytes it was dequeued from: replaying them runs it as it "
                "was first enqueued."
            )
        else:
            note = (
                f"These are the bytes of the task that enqueued it (id {parent.id}), which "
                f"had already run: replaying them runs it again, then the rest of its chain."
            )
        error = (
            f"{where}, and it cannot be written here ({exc}). {note} Make the data "
            f"smaller or flatter, or raise the limits of the workers' VersionedSerializer."
        )
        # undecodable, as above: what failed is the writing, not the task's schema.
        return _Kept(raw, "undecodable", *_task_identity(parent), error)

    def execute(self, task: Task, timestamp: datetime.datetime | None = None) -> Any:
        """Huey's execute, remembering which callbacks this task may enqueue.

        With reliable fetch, the message then leaves the worker's in-flight
        list, whatever the task did; unless the task was interrupted (the
        consumer stopping), so that it runs again once recovered.
        """
        if self._wrappers:
            with contextlib.ExitStack() as hooks:
                for observer in self._wrappers:
                    hooks.enter_context(observer.execute(task))
                return self._execute_versioned(task, timestamp)
        return self._execute_versioned(task, timestamp)

    def _execute_versioned(self, task: Task, timestamp: datetime.datetime | None) -> Any:
        token = _RUNNING.set((*_RUNNING.get(), task))
        try:
            value = super().execute(task, timestamp)
        except Exception as exc:
            if is_transient(exc):
                # The storage could not be reached (the revocation lookup, the
                # move to the schedule, the result): whether the outcome is
                # stored is unknown, so the message stays in flight and goes
                # back to the queue with the worker's next pop.
                self._unsettled(task)
            else:
                self._settle_ran(task)
            raise
        finally:
            _RUNNING.reset(token)
        if not task.__dict__.pop("_vt_interrupted", False):
            self._settle_ran(task)
        return value

    def _emit(self, signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        if signal == SIGNAL_INTERRUPTED and isinstance(task, Task) and _in_flight(task):
            task.__dict__["_vt_interrupted"] = True
            logger.warning(
                "Task %s was interrupted; its message stays in flight and runs again once "
                "this consumer is gone and another one recovers it.",
                task.id,
            )
        super()._emit(signal, task, *args, **kwargs)

    def add_schedule(self, task: Task) -> None:
        """Huey's add_schedule, for a task Huey moves to the schedule inside the
        worker (a retry with a delay, an eta not yet due).

        One that cannot be written is dead-lettered rather than lost; for the
        task a worker holds in flight, the schedule write and the settle are
        one transaction.
        """
        data = self._encode_or_dead_letter(task)
        if data is None:
            return
        eta = task.eta or datetime.datetime.fromtimestamp(0)
        if _in_flight(task) is not None and _executing(task):
            storage = self.storage
            score = storage.convert_ts(eta)
            self._settle_task(task, lambda pipe: pipe.zadd(storage.schedule_key, {data: score}))
        else:
            self.storage.add_to_schedule(data, eta)
        logging.getLogger("huey").info("Added task %s to schedule, eta %s", task.id, eta)
        self._emit(SIGNAL_SCHEDULED, task)

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        """Huey's is_revoked; in the worker, a revocation record that cannot be
        read dead-letters the task instead of losing it.

        Huey checks revocations after the message left the queue: an error here
        would drop the task. A record that is not an envelope, not the pair
        ``(revoke_until, revoke_once)`` Huey writes, or whose time cannot be
        compared, keeps the task, with the bytes it was dequeued from, under
        ``undecodable`` (``bad_signature`` for a signature), and the task counts
        as revoked for this run.

        Raises:
            DecodeError: outside the worker, for such a record (SignatureError
                for a signature), naming the task, the key and the fix.
        """
        keys = self._revoke_keys(task)
        # Records read by the SQL pop that took this task (storage.atomic), once.
        looked_up = task.__dict__.pop("_vt_revocations", None) if isinstance(task, Task) else None
        read_at = task.__dict__.pop("_vt_revocations_at", None) if isinstance(task, Task) else None
        if looked_up is not None and (looked_up[0], read_at) != (keys, self._revocations_changed):
            looked_up = None  # other keys, or a revocation changed since: read them again
        try:
            data = looked_up[1] if looked_up is not None else self.storage.peek_many(keys)
        except Exception as exc:
            if _current() is not task or is_transient(exc):
                raise
            # The storage cannot even look the records up (PostgreSQL refuses a
            # key holding NUL, say): keep the task rather than drop it.
            self._dead_letter_revoked(task, self._lookup_error(task, exc))
            return True
        if not data:
            return False  # no record (peek_many leaves out missing keys): the usual case
        for key in keys:
            try:
                revoked, restore = check_record(
                    data.get(key, EmptyData),
                    self.serializer.deserialize,
                    timestamp,
                    self._get_timestamp,
                    peek=peek,
                )
            except DecodeError as exc:
                error = self._revocation_error(task, key, exc)
                if _current() is not task:
                    raise error from None
                self._dead_letter_revoked(task, error)
                return True
            if restore:
                self.delete(key)
                self._revocation_changed()
            if revoked:
                return True
        return False

    def _revocation_keys_for_pop(self, task: Task) -> list[str]:
        """The task's revocation keys, for the SQL pop that reads the records
        with the delete; notes which revocation change they were read after."""
        task.__dict__["_vt_revocations_at"] = self._revocations_changed
        return self._revoke_keys(task)  # type: ignore[no-any-return]

    def _revocation_changed(self) -> None:
        # After the write: a pop that read the records before it sees a new number.
        self._revocations_changed = next(self._revocation_numbers)

    def revoke_all(
        self, task_class: Any, revoke_until: Any = None, revoke_once: bool = False
    ) -> None:
        """Huey's revoke_all (records read with a pop before it are not used)."""
        super().revoke_all(task_class, revoke_until, revoke_once)
        self._revocation_changed()

    def restore_all(self, task_class: Any) -> bool:
        """Huey's restore_all (records read with a pop before it are not used)."""
        restored = bool(super().restore_all(task_class))
        self._revocation_changed()
        return restored

    def revoke(self, task: Any, revoke_until: Any = None, revoke_once: bool = False) -> None:
        """Huey's revoke (records read with a pop before it are not used)."""
        super().revoke(task, revoke_until, revoke_once)
        self._revocation_changed()

    def restore(self, task: Any) -> bool:
        """Huey's restore (records read with a pop before it are not used)."""
        restored = bool(super().restore(task))
        self._revocation_changed()
        return restored

    @staticmethod
    def _lookup_error(task: Any, exc: Exception) -> DecodeError:
        return DecodeError(
            f"The revocation records of {_revoked_subject(task)} cannot be looked up "
            f"({type(exc).__name__}: {str(exc).strip()}); the task was not run. Fix the "
            f"cause (a task id the storage cannot hold, the storage itself), then replay "
            f"this dead letter."
        )

    def _revocation_error(self, task: Any, key: str, exc: DecodeError) -> DecodeError:
        text = (
            f"The revocation record {key!r} of {_revoked_subject(task)} cannot be read: "
            f"{str(exc).rstrip('.')}"
        )
        if _current() is task:
            text += f"; the task was not run. Delete it with {restore_hint(key)}, then replay "
            text += "this dead letter."
        else:
            text += f". Delete it with {restore_hint(key)}."
        if isinstance(exc, SignatureError):
            return SignatureError(text, key_id=exc.key_id)
        return DecodeError(text)

    def _dead_letter_revoked(self, task: Task, error: DecodeError) -> None:
        reason: Reason = "bad_signature" if isinstance(error, SignatureError) else "undecodable"
        name, version = _task_identity(task)
        raw = dequeued_bytes(task)
        slot = _in_flight(task)
        if slot is not None and raw is not None:
            # In flight: the exact bytes leave the list with the dead-letter write.
            del task.__dict__["_vt_slot"]
            key, dequeued = slot.key, raw

            def dead_letter() -> None:
                self._dispatch.dead_letter(
                    dequeued, reason, name, version, str(error), inflight=key, task_id=task.id
                )

            with contextlib.suppress(Exception):
                self._dispatch.settle(slot, dequeued, dead_letter)
            return
        if raw is None:
            # Not dequeued by this app (a task handed to execute() directly):
            # there are no bytes off the queue, and its own encoding is the
            # closest there is to what was enqueued.
            raw = self._writer.encode(task, validate=False)
        try:
            self._dispatch.dead_letter(raw, reason, name, version, str(error), task_id=task.id)
        except Exception:
            self._dispatch.rescue(raw)
            raise

    # -- reading ---------------------------------------------------------------

    def deserialize_task(self, data: bytes) -> Task:
        """Run the read pipeline on stored bytes, with no side effects.

        Raises:
            MessageRejected: the message cannot run (with the reason).
        """
        outcome = self._reader.read(data)
        if isinstance(outcome, Task):
            return outcome
        handler = isinstance(outcome, Retired) and self._has_handler(outcome)
        raise _rejection(outcome, has_handler=handler)

    def _has_handler(self, retired: Retired) -> bool:
        return self.schema.tombstones[retired.tombstone].handler is not None

    # -- reliable fetch ----------------------------------------------------------

    def _settle_ran(self, task: Task) -> None:
        """The task's outcome is stored (or it cannot run): its message leaves the
        list with the worker's next pop (Huey's worker pops again at once)."""
        slot: Slot | None = task.__dict__.pop("_vt_slot", None)
        if slot is None:
            return  # not in flight (reliable fetch off): nothing to settle
        raw = dequeued_bytes(task)
        if raw is not None:
            slot.ran.append(raw)

    def _unsettled(self, task: Task) -> None:
        """The task's outcome may not be stored: its in-flight message goes back to
        the queue (at least once) when the worker pops next."""
        slot: Slot | None = task.__dict__.pop("_vt_slot", None)
        if slot is not None:
            slot.dirty = True

    def _settle_task(self, task: Task, write: Callable[[Any], Any]) -> None:
        # In the worker after the task ran: an owed settlement must not look
        # like a failure of the task, so it is logged, not raised.
        slot: Slot = task.__dict__.pop("_vt_slot")
        raw = dequeued_bytes(task)
        assert raw is not None
        assert self.inflight is not None
        inflight, key = self.inflight, slot.key
        with contextlib.suppress(Exception):
            self._dispatch.settle(slot, raw, lambda: inflight.remove(key, raw, write))

    def dequeue(self) -> Task | None:
        """Pop the next runnable task; bad messages are dead-lettered on the way
        (see :class:`versioned_tasks.app.dispatch.Dispatcher`). Never raises for a
        bad message."""
        return self._dispatch.dequeue()

    def read_schedule(self, timestamp: datetime.datetime | None = None) -> list[Task]:
        """Pop the due tasks; bad ones are dead-lettered, as the storage removes them."""
        return self._dispatch.read_schedule(timestamp)

    def settle_owed(self, slot: Slot) -> None:
        """Make the settlements this worker still owes; raises while Redis is unreachable."""
        self._dispatch.settle_owed(slot)

    @property
    def _atomic(self) -> AtomicSql | None:
        # Only where the dead-letter table lives in the queue's own database.
        if self._dead_letters_storage is not self.storage:
            self.dead_letters  # noqa: B018 - (re)opens the store and _atomic_sql with it
        return self._atomic_sql

    def _deserialize_all(self, messages: Iterable[bytes]) -> list[Task]:
        # pending() and scheduled(): read-only listings skip what cannot run.
        tasks = []
        for raw in messages:
            outcome = self._reader.read(raw)
            if isinstance(outcome, Task):
                tasks.append(outcome)
        return tasks

    def _plain_task(self, name: str) -> type[Task] | None:
        task_class = self._registry._registry.get(name)
        if task_class is None or getattr(task_class, "_vt_spec", None) is not None:
            return None
        return task_class  # type: ignore[no-any-return]


def _log_with_the_consumer() -> None:
    """Show the library's log lines where the consumer shows its own.

    ``huey_consumer`` gives a handler to Huey's ``huey`` logger only. Unless the
    ``versioned_tasks`` logger or the root logger has handlers of its own (the
    app configured logging), the library's records go to the ``huey`` logger's
    handlers, at its level, so that the consumer's output shows dead letters,
    renames and tombstones as they happen.
    """
    ours, theirs = logging.getLogger("versioned_tasks"), logging.getLogger("huey")
    if ours.handlers or logging.getLogger().handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(theirs.getEffectiveLevel())


def _required_parameters(func: Callable[..., Any], options: dict[str, Any]) -> list[str]:
    """The arguments a call with none would be missing."""
    model = options.get("args_model")
    if model is not None:
        return [n for n, f in model.model_fields.items() if f.is_required()]
    skip = {"task"} if options.get("context") else set()
    return [
        p.name
        for p in inspect.signature(func).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in skip
    ]


def _returning(
    func: Callable[..., Any], task: str, version: int, model: type[BaseModel]
) -> Callable[..., Any]:
    """``func`` with its return value validated as ``model``."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise SchemaError(
            f"Task {task!r} version {version}: result_model must be a pydantic model "
            f"class, not {model!r}.",
            task=task,
        )
    register_model(model)
    model_name = model.__name__

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        value = func(*args, **kwargs)
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise InvalidResult(
                task=task,
                version=version,
                model=model_name,
                errors=[dict(e) for e in exc.errors()],
            ) from None

    return run


def _check_serializer(
    serializer: VersionedSerializer | None, huey_kwargs: dict[str, Any]
) -> VersionedSerializer:
    if serializer is None:
        serializer = VersionedSerializer()
    elif not isinstance(serializer, VersionedSerializer):
        raise ConfigurationError(
            f"VersionedHuey needs a VersionedSerializer, got {type(serializer).__name__}; "
            f"drop serializer= (pickle is never read from the queue)."
        )
    for option in ("compression", "use_zlib"):
        if huey_kwargs.pop(option, False):
            raise ConfigurationError(
                f"{option}= is not supported by VersionedHuey: envelopes are JSON and "
                f"Huey would silently ignore it; remove the option."
            )
    return serializer


def _rejection(outcome: Any, *, has_handler: bool = False) -> MessageRejected:
    if isinstance(outcome, Rejected):
        return MessageRejected(
            reason=outcome.reason,
            task=outcome.task,
            version=outcome.version,
            error=outcome.error,
        )
    if isinstance(outcome, Newer):
        return MessageRejected(
            reason="newer_version",
            task=outcome.task,
            version=outcome.version,
            error=f"{outcome.detail}; deploy the newer code first.",
        )
    message = outcome.message
    if has_handler:
        error = (
            f"Task {message.task!r} is retired (tombstoned); its message goes to the "
            f"tombstone handler of {outcome.tombstone!r} in the worker, not to a task."
        )
    else:
        error = f"Task {message.task!r} is retired (tombstoned) and has no handler."
    return MessageRejected(
        reason="retired", task=message.task, version=message.version, error=error
    )


def _current() -> Task | None:
    """The task this context's worker is executing, if any."""
    running = _RUNNING.get()
    return running[-1] if running else None


def _may_enqueue(task_id: str) -> bool:
    """Whether a task being executed here may enqueue ``task_id``: itself (a retry,
    a move to the schedule) or one of its callbacks. Computed only when a write
    fails, so that executing a task costs no walk over its callbacks."""
    return any(task_id in _callback_ids(task) for task in _RUNNING.get())


def _callback_ids(task: Task) -> frozenset[str]:
    ids = {task.id}
    step: Task | None = task
    while step is not None:
        if step.on_error is not None:
            ids.add(step.on_error.id)
        if step.chord_config is not None:
            ids.add(step.chord_config.callback.id)
        step = step.on_complete
        if step is not None:
            ids.add(step.id)
    return frozenset(ids)


def _executing(task: Task) -> bool:
    """Whether ``task`` is the one this worker is executing."""
    return _current() is task


def _in_flight(task: Task) -> Slot | None:
    """The in-flight list holding the message ``task`` was dequeued from, until settled."""
    slot: Slot | None = task.__dict__.get("_vt_slot")
    return slot


def _plain_name(task: Task) -> str:
    """A plain task's name on the wire: its Huey registry key."""
    kind = type(task)
    return f"{kind.__module__}.{kind.__name__}"


def _revoked_subject(task: Any) -> str:
    """What ``is_revoked(task)`` is about, for its errors: task name and version."""
    if isinstance(task, Result):
        task = task.task
    if isinstance(task, TaskWrapper):
        task = task.task_class
    if isinstance(task, Task):
        name, version = _task_identity(task)
    elif isinstance(task, type):
        spec = getattr(task, "_vt_spec", None)
        name = spec.name if spec is not None else f"{task.__module__}.{task.__name__}"
        version = spec.version if spec is not None else None
    else:
        return f"the task with id {task!r}"
    return f"task {name!r} " + (f"version {version}" if version is not None else "(unversioned)")


def _task_identity(task: Task) -> tuple[str, int | None]:
    """A task's name and version on the wire."""
    spec = getattr(type(task), "_vt_spec", None)
    name = spec.name if spec is not None else _plain_name(task)
    return name, _wire_version(task, spec)


def _wire_version(task: Task, spec: TaskSpec | None) -> int | None:
    wire = wire_info(task)
    if wire is not None:
        return wire[0]
    return spec.version if spec is not None else None


class VersionedMemoryHuey(VersionedHuey):
    """A VersionedHuey on Huey's in-process MemoryStorage."""

    storage_class = MemoryStorage


class VersionedSqliteHuey(VersionedHuey):
    """A VersionedHuey on Huey's SqliteStorage (``filename=``)."""

    storage_class = SqliteStorage


class VersionedFileHuey(VersionedHuey):
    """A VersionedHuey on Huey's FileStorage (``path=``); for development, as Huey says."""

    storage_class = FileStorage


class VersionedRedisHuey(VersionedHuey):
    """A VersionedHuey on Huey's RedisStorage (``url=`` or connection options)."""

    storage_class = RedisStorage


class VersionedRedisExpireHuey(VersionedHuey):
    """A VersionedHuey on Huey's RedisExpireStorage (results expire)."""

    storage_class = RedisExpireStorage


class VersionedPriorityRedisHuey(VersionedHuey):
    """A VersionedHuey on Huey's PriorityRedisStorage (task priorities)."""

    storage_class = PriorityRedisStorage


class VersionedPriorityRedisExpireHuey(VersionedHuey):
    """A VersionedHuey on Huey's PriorityRedisExpireStorage."""

    storage_class = PriorityRedisExpireStorage


class VersionedPostgresHuey(VersionedHuey):
    """A VersionedHuey on Huey's PostgresStorage (``dsn=``, ``connection=`` or
    psycopg connection options; needs ``psycopg`` 3, the ``postgres`` extra).

    Dead letters go to a ``<table_prefix>_vt_dead_letters`` table beside
    Huey's own tables, created on first use.
    """

    storage_class = PostgresStorage
