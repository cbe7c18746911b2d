"""Declarations made anywhere: ``@versioned_task`` and its companions at module level.

A module declares its tasks, upcasters, renames and tombstones without importing
the app; they bind to the process's *default app*, the one created with
``VersionedHuey(..., default=True)`` or passed to :func:`set_default_app` (in
Django, djhuey's instance). Import order does not matter: what is declared
before the default app exists is applied to it when it becomes the default, and
what is declared after is applied at once. Each app that becomes the default
gets every declaration, once.

A module-level task is a :class:`DeclaredTask`: calling it, ``.s()``,
``.schedule()``, ``.call_local()`` and every other attribute go to the task
registered with the current default app, so a task called with no default app
raises :class:`~versioned_tasks.ConfigurationError` naming the fix.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import pkgutil
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from huey.api import Task, TaskWrapper
from pydantic import BaseModel

from ..exceptions import ConfigurationError, SchemaError
from ..messages.readwrite import RetiredMessage
from ..schema.registry import Downcaster, TaskSpec, Upcaster, build_spec

if TYPE_CHECKING:
    from .huey import VersionedHuey, VersionedTaskWrapper

__all__ = [
    "MIGRATIONS_PACKAGE",
    "DeclaredTask",
    "default_app",
    "default_app_or_none",
    "discover_migrations",
    "downcaster",
    "rename",
    "set_default_app",
    "tombstone",
    "upcaster",
    "versioned_periodic_task",
    "versioned_task",
]

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[[RetiredMessage], object])

_FIX = (
    "create the app with VersionedHuey(..., default=True), or call "
    "versioned_tasks.set_default_app(huey) where the app is made (in Django, add "
    "'versioned_tasks.contrib.djhuey' to INSTALLED_APPS)"
)


class _Declaration:
    """One module-level declaration: applied once to every app that becomes the default."""

    __slots__ = ("apply", "describe")

    def __init__(self, apply: Callable[[VersionedHuey], Any], describe: str) -> None:
        self.apply = apply
        self.describe = describe


class _Declarations:
    """The process's declarations, its default app, and what each app was given."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.items: list[_Declaration] = []
        self.default: VersionedHuey | None = None
        #: Per app, what each declaration returned when applied to it.
        self.applied: weakref.WeakKeyDictionary[VersionedHuey, dict[_Declaration, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def declare(self, declaration: _Declaration) -> None:
        with self.lock:
            app = self.default
            if app is not None:
                self._apply(app, declaration)
            self.items.append(declaration)

    def _apply(self, app: VersionedHuey, declaration: _Declaration) -> Any:
        done = self.applied.setdefault(app, {})
        if declaration not in done:
            done[declaration] = declaration.apply(app)
        return done[declaration]

    def set_default(self, app: VersionedHuey | None) -> None:
        with self.lock:
            if app is None or app is self.default:
                self.default = app
                return
            if self.default is not None:
                raise ConfigurationError(
                    f"Two apps claim to be the default: {self.default.name!r} "
                    f"({type(self.default).__name__}) already is, and {app.name!r} "
                    f"({type(app).__name__}) asks to be. Module-level @versioned_task "
                    f"declarations bind to one app: pass default=True to one app only, or "
                    f"call versioned_tasks.set_default_app(None) before switching."
                )
            for declaration in self.items:
                self._apply(app, declaration)
            self.default = app

    def bound(self, declaration: _Declaration) -> Any:
        with self.lock:
            app = self.default
            if app is None:
                raise ConfigurationError(
                    f"{declaration.describe} has no app to bind to: no VersionedHuey is the "
                    f"default app of this process; {_FIX}."
                )
            return self._apply(app, declaration)


_DECLARATIONS = _Declarations()

#: The package beside a task's module that holds its migrations (the
#: ``@upcaster`` modules ``versioned-tasks makemigrations`` writes).
MIGRATIONS_PACKAGE = "task_migrations"
#: Migration packages looked for already, found or not (once per process).
_DISCOVERED: set[str] = set()
_DISCOVER_LOCK = threading.Lock()


def set_default_app(app: VersionedHuey | None) -> None:
    """Make ``app`` the process's default app, or clear it with None.

    Every module-level declaration made so far (``@versioned_task``,
    ``@upcaster``, ``rename()``, ...) is applied to ``app`` now, and later ones
    as they are made. ``VersionedHuey(..., default=True)`` does the same.

    Raises:
        ConfigurationError: another app is already the default (clear it first).
        SchemaError: a declaration that ``app`` refuses (a task declared twice, ...).
    """
    _DECLARATIONS.set_default(app)


def default_app_or_none() -> VersionedHuey | None:
    """The process's default app, or None."""
    return _DECLARATIONS.default


def default_app() -> VersionedHuey:
    """The process's default app.

    Raises:
        ConfigurationError: no app is the default, naming the ways to make one.
    """
    app = _DECLARATIONS.default
    if app is None:
        raise ConfigurationError(f"No VersionedHuey is the default app of this process; {_FIX}.")
    return app


class DeclaredTask(Generic[P, R]):
    """What the module-level ``@versioned_task`` returns: a task of the default app.

    It behaves as the :class:`~versioned_tasks.VersionedTaskWrapper` that the
    default app registered for it: calling it enqueues, ``.s()`` builds a call
    for pipelines, ``.call_local()`` runs it here; every other attribute
    (``.schedule()``, ``.map()``, ``.revoke()``, ``.task_class``, ...) is the
    wrapper's. Type checkers see the function's own parameters.
    """

    def __init__(self, declaration: _Declaration, name: str, version: int) -> None:
        self._declaration = declaration
        self._name = name
        self._version = version

    def __repr__(self) -> str:
        return f"<DeclaredTask {self._name!r} v{self._version}>"

    @property
    def task(self) -> VersionedTaskWrapper[P, R]:
        """The task registered with the current default app.

        Raises:
            ConfigurationError: no app is the default.
        """
        return cast("VersionedTaskWrapper[P, R]", _DECLARATIONS.bound(self._declaration))

    @property
    def version(self) -> int:
        """The task's current schema version."""
        return self._version

    @property
    def logical_name(self) -> str:
        """The stable logical name written on the wire."""
        return self._name

    @property
    def spec(self) -> TaskSpec:
        """The task's schema as the default app registered it."""
        return self.task.spec

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Enqueue a call on the default app (validated first); returns Huey's ``Result``."""
        return self.task(*args, **kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Build the call as a Huey ``Task`` without enqueueing it (for pipelines)."""
        return self.task.s(*args, **kwargs)

    def call_local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, with arguments validated as the worker would."""
        return self.task.call_local(*args, **kwargs)

    def map(self, it: Iterable[Any]) -> Any:
        """Enqueue one call per item, but only if every item is valid."""
        return self.task.map(it)

    def __getattr__(self, name: str) -> Any:
        # Private and special names are looked up by tools (copy, inspect, test
        # collectors) that expect AttributeError, whether or not an app is bound.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.task, name)


@overload
def versioned_task(
    version: int,
    *,
    name: str | None = None,
    args_model: None = None,
    result_model: type[BaseModel] | None = None,
    allow_compatible_changes: bool = False,
    newer_version: str | None = None,
    **huey_task_options: Any,
) -> Callable[[Callable[P, R]], DeclaredTask[P, R]]: ...
@overload
def versioned_task(
    version: int,
    *,
    name: str | None = None,
    args_model: type[BaseModel],
    result_model: type[BaseModel] | None = None,
    allow_compatible_changes: bool = False,
    newer_version: str | None = None,
    **huey_task_options: Any,
) -> Callable[[Callable[..., R]], DeclaredTask[..., R]]: ...
def versioned_task(
    version: int,
    *,
    name: str | None = None,
    args_model: type[BaseModel] | None = None,
    result_model: type[BaseModel] | None = None,
    allow_compatible_changes: bool = False,
    newer_version: str | None = None,
    **huey_task_options: Any,
) -> Callable[[Callable[..., Any]], DeclaredTask[..., Any]]:
    """Declare a versioned task in any module, bound to the process's default app.

    Takes what :meth:`VersionedHuey.versioned_task` takes. The declaration is
    checked here (a reserved parameter, a bad version raise at once) and
    registered with the default app now if there is one, else when one becomes
    the default.

    Raises:
        SchemaError: as for :meth:`VersionedHuey.versioned_task`.
    """
    options: dict[str, Any] = dict(
        name=name,
        args_model=args_model,
        result_model=result_model,
        allow_compatible_changes=allow_compatible_changes,
        newer_version=newer_version,
        **huey_task_options,
    )

    def decorator(func: Callable[..., Any]) -> DeclaredTask[..., Any]:
        return _declare_task(
            func,
            version,
            name,
            args_model,
            lambda app: app.versioned_task(version, **options),
            huey_task_options,
        )

    return decorator


def versioned_periodic_task(
    validate_datetime: Callable[[datetime.datetime], bool],
    *,
    version: int = 1,
    name: str | None = None,
    **huey_task_options: Any,
) -> Callable[[Callable[..., Any]], DeclaredTask[..., Any]]:
    """Declare a periodic versioned task in any module (see
    :meth:`VersionedHuey.versioned_periodic_task`), bound to the default app.
    """

    def decorator(func: Callable[..., Any]) -> DeclaredTask[..., Any]:
        return _declare_task(
            func,
            version,
            name,
            None,
            lambda app: app.versioned_periodic_task(
                validate_datetime, version=version, name=name, **huey_task_options
            ),
            huey_task_options,
        )

    return decorator


def _declare_task(
    func: Callable[..., Any],
    version: int,
    name: str | None,
    args_model: type[BaseModel] | None,
    declare: Callable[[VersionedHuey], Callable[[Callable[..., Any]], Any]],
    options: dict[str, Any],
) -> DeclaredTask[..., Any]:
    func = func.func if isinstance(func, TaskWrapper) else func
    logical = name or f"{func.__module__}.{func.__name__}"
    # Checked now, so a bad declaration fails at import even with no app yet.
    build_spec(
        func,
        name=logical,
        version=version,
        args_model=args_model,
        context=bool(options.get("context", False)),
    )
    declaration = _Declaration(
        lambda app: declare(app)(func), f"Task {logical!r} version {version}"
    )
    _DECLARATIONS.declare(declaration)
    return DeclaredTask(declaration, logical, version)


def upcaster(task: str, /, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register an upcaster with the default app (see :meth:`VersionedHuey.upcaster`)."""

    def decorator(func: Upcaster) -> Upcaster:
        _DECLARATIONS.declare(
            _Declaration(
                lambda app: app.upcaster(task, from_version=from_version)(func),
                f"Upcaster of {task!r} from version {from_version}",
            )
        )
        return func

    return decorator


def downcaster(task: str, /, *, from_version: int) -> Callable[[Downcaster], Downcaster]:
    """Register a downcaster with the default app (see :meth:`VersionedHuey.downcaster`)."""

    def decorator(func: Downcaster) -> Downcaster:
        _DECLARATIONS.declare(
            _Declaration(
                lambda app: app.downcaster(task, from_version=from_version)(func),
                f"Downcaster of {task!r} from version {from_version}",
            )
        )
        return func

    return decorator


def rename(old: str, new: str, /) -> None:
    """Run messages written under ``old`` as the task ``new``, on the default app."""
    _DECLARATIONS.declare(
        _Declaration(lambda app: app.rename(old, new), f"rename({old!r}, {new!r})")
    )


class _Tombstone:
    """Returned by ``tombstone(name)``: apply it to a function to handle retired messages."""

    def __init__(self, task: str) -> None:
        self._task = task
        self._handler: Callable[[RetiredMessage], object] | None = None
        self._given: list[Callable[[Any], Any]] = []
        _DECLARATIONS.declare(_Declaration(self._apply, f"tombstone({task!r})"))

    def __repr__(self) -> str:
        return f"<tombstone {self._task!r}>"

    def _apply(self, app: VersionedHuey) -> None:
        given = app.tombstone(self._task)
        if self._handler is not None:
            given(self._handler)
        self._given.append(given)

    def __call__(self, handler: H) -> H:
        self._handler = handler
        for given in self._given:
            given(handler)
        return handler


@overload
def tombstone(task: str, /) -> _Tombstone: ...
@overload
def tombstone(task: str, /, handler: H) -> H: ...
def tombstone(task: str, /, handler: Any = None) -> Any:
    """Retire a task on the default app (see :meth:`VersionedHuey.tombstone`).

    As a decorator the handler runs once per message of the retired task; as a
    plain call, its messages are dead-lettered as ``retired``.
    """
    decorator = _Tombstone(task)
    if handler is not None:
        return decorator(handler)
    return decorator


def discover_migrations(specs: Iterable[TaskSpec]) -> None:
    """Import the ``task_migrations`` package beside each task's module, and its modules.

    ``versioned-tasks makemigrations`` writes there; the app calls this from
    ``check_schemas()``, so a written step is registered (with the default
    app) wherever the app is checked: at consumer start, on the first
    dequeue, in the CLI. Each package is looked for once per process.

    Raises:
        SchemaError: a migration module that does not import, naming it.
    """
    packages = {_package_of(spec) for spec in specs}
    for package in sorted(p for p in packages if p is not None):
        with _DISCOVER_LOCK:
            if package in _DISCOVERED:
                continue
            _DISCOVERED.add(package)
        _import_migrations(package)


def _package_of(spec: TaskSpec) -> str | None:
    """``<package of the task's module>.task_migrations`` (top-level beside a top-level module)."""
    if spec.func is None:
        return None
    name = spec.func.__module__
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) is None:
        return None
    parent = name if hasattr(module, "__path__") else name.rpartition(".")[0]
    return f"{parent}.{MIGRATIONS_PACKAGE}" if parent else MIGRATIONS_PACKAGE


def _import_migrations(package: str) -> None:
    try:
        if importlib.util.find_spec(package) is None:
            return
    except (ImportError, ValueError):
        return
    for name in [package, *_submodules(package)]:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise SchemaError(
                f"The migration module {name!r} does not import ({type(exc).__name__}: "
                f"{exc}); fix it or remove it."
            ) from exc


def _submodules(package: str) -> list[str]:
    try:
        module = importlib.import_module(package)
    except Exception as exc:
        raise SchemaError(
            f"The migration package {package!r} does not import ({type(exc).__name__}: "
            f"{exc}); fix it or remove it."
        ) from exc
    path = getattr(module, "__path__", None)
    if path is None:
        return []
    return sorted(f"{package}.{info.name}" for info in pkgutil.iter_modules(path))
