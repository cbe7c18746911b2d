"""Rolling deploys: what a worker does with a message newer than it knows, and
which version a producer writes.

Worker side, the newer-version policy: ``defer`` puts the exact bytes back on
the schedule with a delay that grows with the message's age, until a maximum
age; ``dead_letter`` dead-letters the message at once. Producer side, pinned
emit versions: ``emit_versions={"task": 2}``, the environment variable
``VERSIONED_TASKS_EMIT_VERSIONS`` or ``"auto"`` (the highest version every live
worker reads) make a producer write an older version through the downcasters.

Nothing here touches Huey's consumer; the app (``_huey.py``) wires it in.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..exceptions import ConfigurationError
from ..schema.registry import NEWER_VERSION_POLICIES, SchemaRegistry, TaskSpec
from .actions import Action, DeadLetterAction, DeferAction, DeferredMessage, RequeueAction
from .readwrite import Newer

__all__ = [
    "AUTO_EMIT_TTL",
    "DEFAULT_NEWER_VERSION_DELAY",
    "DEFAULT_NEWER_VERSION_MAX_AGE",
    "DEFAULT_NEWER_VERSION_MAX_DELAY",
    "EMIT_VERSIONS_ENV",
    "HAND_OFF_MEMORY",
    "HAND_OFF_TTL",
    "AutoEmit",
    "HandOffs",
    "LockSchemas",
    "NewerVersionPolicy",
    "check_policy",
    "parse_emit_versions",
]

logger = logging.getLogger("versioned_tasks")

DEFAULT_NEWER_VERSION_DELAY: Final = 30.0
DEFAULT_NEWER_VERSION_MAX_DELAY: Final = 3600.0
DEFAULT_NEWER_VERSION_MAX_AGE: Final = 24 * 3600.0
#: The environment variable deploy tooling sets: ``"task=2,other=1"`` or ``"auto"``.
EMIT_VERSIONS_ENV: Final = "VERSIONED_TASKS_EMIT_VERSIONS"
#: Seconds for which ``emit_versions="auto"`` reuses what the fleet said.
AUTO_EMIT_TTL: Final = 5.0
#: How many handed-off message ids a process remembers.
HAND_OFF_MEMORY: Final = 10_000
#: Seconds after which a hand-off is forgotten (its message was surely taken).
HAND_OFF_TTL: Final = 600.0

EmitVersions = dict[str, int] | Literal["auto"]


# -- the newer-version policy ---------------------------------------------------------


def check_policy(value: Any, option: str) -> str:
    """``value`` if it names a policy, else ConfigurationError naming ``option``."""
    if value not in NEWER_VERSION_POLICIES:
        raise ConfigurationError(
            f"{option}={value!r} is not a newer-version policy; use "
            f"{' or '.join(repr(p) for p in NEWER_VERSION_POLICIES)}."
        )
    return str(value)


def _seconds(value: Any, option: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{option} must be a finite number of seconds, not {value!r}.")
    if value < 0 or (positive and value == 0):
        need = "positive" if positive else "zero or more"
        raise ConfigurationError(f"{option} must be {need}, not {value!r}.")
    return float(value)


@dataclass(frozen=True, slots=True)
class NewerVersionPolicy:
    """What an app's workers do with a message newer than they know.

    The delay before a deferred message is read again grows with its age (the
    time since its envelope's ``at``), so that the bytes never change::

        delay = min(max(age / 2, delay), max_delay)

    A message is dead-lettered as ``newer_version`` at the first read after it
    is older than ``max_age``, so it is deferred a bounded number of times and
    lands in the dead-letter store no later than ``max_age + max_delay``.

    Only workers defer, and a worker process first hands a newer message
    straight back to the queue, where any other worker blocked on it takes it
    at once; it defers the message only when the same message comes back to it
    (see :class:`HandOffs`). A scheduler that reads a deferred message once it
    is due puts the exact bytes back on the queue. Deferring it again from the
    scheduler, or deferring it at the first meeting, would let an old
    consumer, whose loops beat in step with the delays it chose, take the
    message back every time before a newer consumer sees it.
    """

    policy: str
    delay: float
    max_delay: float
    max_age: float

    @classmethod
    def from_options(
        cls, policy: Any, delay: Any, max_delay: Any, max_age: Any
    ) -> NewerVersionPolicy:
        """Check the app's options; ConfigurationError names the option at fault."""
        first = _seconds(delay, "newer_version_delay", positive=True)
        if max_delay is None:
            longest = max(first, DEFAULT_NEWER_VERSION_MAX_DELAY)
        else:
            longest = _seconds(max_delay, "newer_version_max_delay", positive=True)
            if longest < first:
                raise ConfigurationError(
                    f"newer_version_max_delay ({longest:g}s) is shorter than "
                    f"newer_version_delay ({first:g}s); raise it or lower the first delay."
                )
        return cls(
            policy=check_policy(policy, "newer_version"),
            delay=first,
            max_delay=longest,
            max_age=_seconds(max_age, "newer_version_max_age", positive=False),
        )

    def delay_for(self, age: float) -> float:
        """Seconds until a message of this age is read again."""
        return min(max(age / 2.0, self.delay), self.max_delay)

    def decide(
        self,
        newer: Newer,
        spec: TaskSpec | None,
        now: datetime.datetime,
        notify: Callable[[DeferredMessage], None],
        *,
        from_schedule: bool = False,
        hand_offs: HandOffs | None = None,
    ) -> Action:
        """Defer, requeue or dead-letter a newer message; ``now`` is the app's clock."""
        policy = spec.newer_version if spec is not None and spec.newer_version else self.policy
        if policy == "dead_letter":
            return DeadLetterAction(
                "newer_version",
                newer.task,
                newer.version,
                f"{newer.detail}, and the newer-version policy of this task is "
                f"'dead_letter'; deploy the newer code and replay.",
            )
        if newer.enqueued_at is None:
            return DeadLetterAction(
                "newer_version",
                newer.task,
                newer.version,
                f"{newer.detail}, and it has no enqueue time ('at') to bound its deferral; "
                f"deploy the newer code and replay.",
            )
        # A producer's clock ahead of ours must not make a message look young
        # forever. A scheduled message ages from when it came due, not from
        # when it was enqueued weeks before.
        age = max(time.time() - newer.enqueued_at, 0.0)
        if newer.eta is not None:
            age = min(age, max((now - newer.eta).total_seconds(), 0.0))
        if age > self.max_age:
            return DeadLetterAction(
                "newer_version",
                newer.task,
                newer.version,
                f"{newer.detail} and was deferred until it was {self.max_age:.0f}s old; "
                f"deploy the newer code and replay.",
            )
        if from_schedule or (hand_offs is not None and hand_offs.first_meeting(newer.id)):
            return RequeueAction(newer.priority)
        # Up to a second of jitter: consumers' loops beat in whole seconds, and a
        # delay in step with them would hand the message back to the same worker.
        delay = self.delay_for(age) + random.random()
        eta = now + datetime.timedelta(seconds=delay)
        return DeferAction(eta, newer, delay, age, notify)


class HandOffs:
    """The newer messages this process handed straight back to the queue.

    A worker that meets a newer message puts it back on the queue once; if the
    same message (by id) comes back to this process before anyone else ran it,
    the worker defers it to the schedule and forgets it, so the next round
    starts with a hand-off again. Per process, in memory, bounded: forgetting
    an entry early costs one extra hand-off, never a message.
    """

    def __init__(self, size: int = HAND_OFF_MEMORY, ttl: float = HAND_OFF_TTL) -> None:
        self._size = size
        self._ttl = ttl
        self._ids: dict[str, float] = {}  # id -> when handed back, oldest first
        self._lock = threading.Lock()

    def first_meeting(self, ident: str | None) -> bool:
        """True (and remembered) the first time; False, and forgotten, the second.

        Also False when the memory is full of recent hand-offs: the message is
        deferred at once. An id is never forgotten while it may still come
        round, which would hand the same messages back forever.
        """
        if ident is None:
            return False
        with self._lock:
            if self._ids.pop(ident, None) is not None:
                return False
            if len(self._ids) >= self._size:
                stale = time.monotonic() - self._ttl
                while self._ids and next(iter(self._ids.values())) < stale:
                    del self._ids[next(iter(self._ids))]
                if len(self._ids) >= self._size:
                    return False
            self._ids[ident] = time.monotonic()
            return True


# -- pinned emit versions ---------------------------------------------------------------


def parse_emit_versions(value: Any, environ: Mapping[str, str] | None = None) -> EmitVersions:
    """The app's ``emit_versions``: a mapping, ``"auto"``, or (None) the environment's.

    Raises:
        ConfigurationError: naming the option or the environment variable.
    """
    if value is None:
        text = (os.environ if environ is None else environ).get(EMIT_VERSIONS_ENV, "")
        return _parse_env(text)
    if value == "auto":
        return "auto"
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"emit_versions must be a mapping of task names to versions, or 'auto'; got {value!r}."
        )
    return _checked_pins(value, "emit_versions")


def _parse_env(text: str) -> EmitVersions:
    text = text.strip()
    if text == "auto":
        return "auto"
    pins: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, version = (part.strip() for part in item.partition("="))
        if not sep or not name or not version.isdigit():
            raise ConfigurationError(
                f"{EMIT_VERSIONS_ENV}: {item!r} is not 'task=version'; write e.g. "
                f"'billing.send_invoice=2,reports.build=1', or 'auto'."
            )
        if name in pins:
            raise ConfigurationError(f"{EMIT_VERSIONS_ENV} names {name!r} twice; keep one.")
        pins[name] = int(version)
    return _checked_pins(pins, EMIT_VERSIONS_ENV)


def _checked_pins(pins: Mapping[Any, Any], option: str) -> dict[str, int]:
    for name, version in pins.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{option}: task names must be non-empty strings, not {name!r}."
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(
                f"{option}: the version of {name!r} must be an integer of 1 or more, "
                f"not {version!r}."
            )
    return dict(pins)


class AutoEmit:
    """``emit_versions="auto"``: write the highest version every live worker reads.

    Asks the fleet (``_fleet.readable_versions``) at most once per
    :data:`AUTO_EMIT_TTL` seconds. Never writes above today's version; writes
    today's version for a task no live worker lists, for one whose downcasters
    or upcasters do not reach the fleet's version (logged once), and while the
    fleet cannot be read (logged).
    """

    def __init__(
        self, app: Any, registry: SchemaRegistry, readable: Callable[[Any], Mapping[str, int]]
    ) -> None:
        self._app = app
        self._registry = registry
        self._readable = readable
        self._lock = threading.Lock()
        self._versions: Mapping[str, int] = {}
        self._until = 0.0
        self._warned: set[tuple[str, int]] = set()

    def __call__(self, spec: TaskSpec) -> int:
        target = self.versions().get(spec.name, spec.version)
        if type(target) is not int or not 1 <= target < spec.version:
            return spec.version
        registry = self._registry
        if (
            registry.down_chain(spec.name, spec.version, target) is None
            or registry.chain(spec.name, target, spec.version) is None
        ):
            self._warn_once(spec, target)
            return spec.version
        return target

    def versions(self) -> Mapping[str, int]:
        """What the fleet reads, from the cache while it is fresh."""
        with self._lock:
            now = time.monotonic()
            if now >= self._until:
                try:
                    self._versions = dict(self._readable(self._app))
                except Exception:
                    logger.warning(
                        "emit_versions='auto': the fleet's versions cannot be read; "
                        "writing today's versions.",
                        exc_info=True,
                    )
                    self._versions = {}
                self._until = now + AUTO_EMIT_TTL
            return self._versions

    def _warn_once(self, spec: TaskSpec, target: int) -> None:
        key = (spec.name, target)
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning(
            "emit_versions='auto': a live worker reads task %r only up to version %s, but "
            "the downcasters (or upcasters) between versions %s and %s are missing; writing "
            "version %s, which that worker defers.",
            spec.name,
            target,
            target,
            spec.version,
            spec.version,
        )


class LockSchemas:
    """Checks downcast payloads against the older versions' JSON Schemas in a lock."""

    def __init__(self, lock: str | os.PathLike[str] | Mapping[str, Any]) -> None:
        try:
            jsonschema = importlib.import_module("jsonschema")
        except ImportError:  # pragma: no cover - jsonschema comes with the dev extras
            raise ConfigurationError(
                "schema_lock= checks downcast payloads with the jsonschema package, which "
                "is not installed; pip install jsonschema, or drop schema_lock=."
            ) from None
        from ..schema.lockfile import parse_lock, read_lock, version_schema

        if isinstance(lock, str | os.PathLike):
            self._lock = read_lock(lock)
        else:
            self._lock = parse_lock(json.dumps(lock), source="schema_lock")
        self._schema = version_schema
        self._jsonschema: Any = jsonschema
        self._validators: dict[tuple[str, int], Any] = {}

    def __call__(self, task: str, version: int, payload: Any) -> str | None:
        key = (task, version)
        validator = self._validators.get(key)
        if validator is None:
            schema = self._schema(self._lock, task, version)
            if schema is None:
                return None  # the lock does not know that version: nothing to check
            cls = self._jsonschema.validators.validator_for(schema)
            validator = self._validators[key] = cls(schema)
        error = self._jsonschema.exceptions.best_match(validator.iter_errors(payload))
        if error is None:
            return None
        where = ".".join(map(str, error.absolute_path)) or "(payload)"
        return f"{where}: {error.message} (the lock's schema of version {version})"
