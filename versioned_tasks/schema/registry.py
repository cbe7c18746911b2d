"""Task name -> current version -> argument model, plus upcasters, renames and tombstones.

Everything here is plain Python and pydantic: no Huey consumer, no storage.
The registry is checked as a whole (``SchemaRegistry.check``) when a consumer
starts, on the first dequeue or schedule read, and by ``huey.check_schemas()``.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NotRequired, Required

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    JsonValue,
    PydanticUserError,
    SecretBytes,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import CoreConfig, PydanticSerializationError, SchemaSerializer, SchemaValidator
from typing_extensions import TypedDict

from ..exceptions import EncodeError, InvalidArguments, SchemaError
from ..wire.envelope import MAX_VERSION
from ..wire.values import exception_field

__all__ = [
    "NEWER_VERSION_POLICIES",
    "RESERVED_PARAMETERS",
    "Downcaster",
    "SchemaRegistry",
    "TaskSpec",
    "Upcaster",
    "build_spec",
]

#: Keyword arguments that Huey's ``.s()`` takes for itself: a task parameter
#: with one of these names could never receive a value.
RESERVED_PARAMETERS: Final = frozenset(
    {
        "eta",
        "delay",
        "id",
        "retries",
        "retry_delay",
        "retry_backoff",
        "priority",
        "expires",
        "timeout",
    }
)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
#: A pure step from version N to N - 1, for producers pinned to an older version.
Downcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: What a worker does with a message newer than it knows: put it back on the
#: schedule for a newer worker, or dead-letter it as ``newer_version`` at once.
NEWER_VERSION_POLICIES: Final = ("defer", "dead_letter")

_ARGS_CONFIG: Final = ConfigDict(
    extra="forbid",
    # JSON has no NaN or infinity: refuse them at the producer rather than
    # let them travel as null and fail in the worker.
    allow_inf_nan=False,
    ser_json_bytes="base64",
    val_json_bytes="base64",
)


_SERIALIZER_CONFIG: Final = CoreConfig(ser_json_bytes="base64")
_SECRET_TYPES: Final = (SecretStr, SecretBytes)


@dataclass(eq=False, slots=True)
class TaskSpec:
    """One versioned task as declared today: its logical name, version and model.

    Attributes:
        name: the stable logical name on the wire.
        version: the current schema version (>= 1).
        params: parameter names that positional arguments bind to, in order.
        defaults: default values filled in by the producer.
        model: the user's ``args_model``, or None when the model comes from the
            function's signature.
        adapter: a pydantic ``TypeAdapter`` for the argument payload.
    """

    name: str
    version: int
    params: tuple[str, ...]
    defaults: dict[str, Any]
    model: type[BaseModel] | None
    adapter: TypeAdapter[Any]
    validator: SchemaValidator = field(repr=False)
    serializer: SchemaSerializer = field(repr=False)
    #: Every field is a plain JSON type (str, int, float, bool, None, and lists
    #: and str-keyed dicts of those), which orjson writes exactly as pydantic
    #: would, only faster.
    plain_json: bool = False
    #: Some field takes any value (``Any``, unannotated): non-finite floats,
    #: which JSON cannot carry, must be looked for after validation.
    open_json: bool = False
    #: Names positional arguments and fills defaults, as a Python call would.
    binder: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)
    #: The Huey task class that runs it; set when the task is registered.
    task_class: Any = field(default=None, repr=False)
    #: ``make_task(args, kwargs, id, wire)``: builds a plain task of that class.
    make_task: Any = field(default=None, repr=False)
    #: The pydantic model the task's return value is validated as, if any.
    result_model: type[BaseModel] | None = None
    #: Let ``versioned-tasks check`` accept a backward-compatible change of the
    #: argument schema (an optional field added, a type widened) without a
    #: version bump.
    allow_compatible_changes: bool = False
    #: The task's own newer-version policy (``defer`` or ``dead_letter``);
    #: None follows the app's ``newer_version``.
    newer_version: str | None = None
    #: The function as the user wrote it (for tools that edit or locate it).
    func: Callable[..., Any] | None = field(default=None, repr=False)

    # -- producer side -------------------------------------------------------

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Name positional arguments and fill defaults: the payload to validate."""
        if self.model is not None:
            return self._bind_model(args, kwargs)
        if self.binder is not None:
            try:
                return self.binder(*args, **kwargs)
            except TypeError:
                pass  # _bind_names names the problem: too many arguments, a duplicate, ...
        return self._bind_names(args, kwargs)

    def _bind_names(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        payload: Any
        if args:
            payload = bind_positional(self.name, self.version, self.params, args, kwargs)
        else:
            payload = kwargs  # copied below only if a default must be added
        for key, default in self.defaults.items():
            if key not in payload:
                if payload is kwargs:
                    payload = dict(kwargs)
                payload[key] = default
        return payload

    def _bind_model(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if not args:
            return dict(kwargs)
        if len(args) == 1 and not kwargs:
            return args[0]
        assert self.model is not None
        raise self._binding_error(
            f"pass one {self.model.__name__} instance or its fields as keyword arguments"
        )

    def dump(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
        """Validate a call's arguments and return the JSON body (named fields).

        Raises:
            InvalidArguments: naming the task, version and field.
        """
        # bind(), inlined for the signature's binder: this is the enqueue hot path.
        binder = self.binder
        if binder is None:
            payload = self.bind(args, kwargs)
        else:
            try:
                payload = binder(*args, **kwargs)
            except TypeError:
                payload = self._bind_names(args, kwargs)
        try:
            value = self.validator.validate_python(payload)
        except ValidationError as exc:
            raise self._invalid(exc) from None
        if self.open_json:
            self._refuse_nonfinite(value)
        if self.plain_json:
            try:
                return orjson.dumps(value)
            except orjson.JSONEncodeError:
                pass  # a lone surrogate, an integer past 64 bits: pydantic decides
        try:
            # Aliases and round-trip form (Json fields as strings) are what
            # validate_json reads back in the worker.
            return self.serializer.to_json(value, by_alias=True, round_trip=True)
        except PydanticSerializationError as exc:
            raise EncodeError(
                f"Task {self.name!r} version {self.version}: an argument cannot be written "
                f"as JSON ({exc}); annotate the parameter with a type pydantic can "
                f"serialize, or pass JSON-compatible values.",
                path="args",
            ) from None

    def _refuse_nonfinite(self, value: Any) -> None:
        path = _nonfinite(value, ())
        if path is not None:
            raise InvalidArguments(
                task=self.name,
                version=self.version,
                errors=[
                    {
                        "loc": path,
                        "msg": "NaN and infinity cannot travel as JSON",
                        "type": "finite_number",
                    }
                ],
            )

    # -- worker side ---------------------------------------------------------

    def load_json(self, body: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate a JSON body and return the ``(args, kwargs)`` the function gets.

        Raises:
            pydantic.ValidationError: the payload does not fit today's model.
        """
        value = self.validator.validate_json(body)
        if self.model is not None:
            return (value,), {}
        return (), value

    def load_payload(self, payload: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate a payload that exists as Python data (after upcasting)."""
        value = self.validate_payload(payload)
        if self.model is not None:
            return (value,), {}
        return (), value

    def validate_payload(self, payload: Any) -> Any:
        """Validate Python data as if it had been read from JSON.

        Plain JSON fields validate the same in Python mode, which skips a
        round trip through bytes; anything else (bytes as base64, dates as
        strings) goes through JSON so it is read exactly as from the wire.
        """
        if self.plain_json:
            return self.validator.validate_python(payload)
        return self.validator.validate_json(orjson.dumps(payload))

    def _binding_error(self, message: str) -> InvalidArguments:
        return InvalidArguments(
            task=self.name,
            version=self.version,
            errors=[{"loc": (), "msg": message, "type": "binding"}],
        )

    def _invalid(self, exc: ValidationError) -> InvalidArguments:
        errors = [dict(e) for e in exc.errors(include_url=False, include_input=False)]
        for error in errors:
            if error["type"] == "invalid-json-value":
                error["msg"] = (
                    "an unannotated parameter takes JSON values only (dict, list, str, "
                    "int, float, bool, None); annotate the parameter with the type you pass"
                )
        return InvalidArguments(task=self.name, version=self.version, errors=errors)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the argument payload at the current version."""
        return self.adapter.json_schema()


def _nonfinite(value: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if type(value) is float:
        return None if math.isfinite(value) else path
    if type(value) is dict:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif type(value) is list:
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nonfinite(item, (*path, key))
        if found is not None:
            return found
    return None


def bind_positional(
    task: str,
    version: int,
    params: Sequence[str],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """Name positional arguments by parameter order, as a Python call would."""
    if len(args) > len(params):
        raise InvalidArguments(
            task=task,
            version=version,
            errors=[
                {
                    "loc": (),
                    "msg": f"takes {len(params)} positional arguments but {len(args)} were given",
                    "type": "binding",
                }
            ],
        )
    payload = dict(zip(params, args, strict=False))
    if kwargs:
        for key in kwargs:
            if key in payload:
                raise InvalidArguments(
                    task=task,
                    version=version,
                    errors=[
                        {
                            "loc": (key,),
                            "msg": "got multiple values for argument",
                            "type": "binding",
                        }
                    ],
                )
        payload.update(kwargs)
    return payload


def build_spec(
    func: Callable[..., Any],
    *,
    name: str,
    version: int,
    args_model: type[BaseModel] | None,
    context: bool,
) -> TaskSpec:
    """Build the argument model of a task from its signature or ``args_model``.

    Raises:
        SchemaError: for a version below 1, a reserved or unnamed parameter, a
            default that does not fit its annotation, or an annotation pydantic
            cannot validate.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError(
            f"Task {name!r} declares version {version!r}; versions are integers starting at 1.",
            task=name,
        )
    if version > MAX_VERSION:
        raise SchemaError(
            f"Task {name!r} declares version {version}, above the largest version a message "
            f"can carry ({MAX_VERSION}, 2**31 - 1); number its versions 1, 2, 3, ...",
            task=name,
        )
    if args_model is not None and context and "task" not in inspect.signature(func).parameters:
        raise SchemaError(
            f"Task {name!r} version {version} is declared with context=True but its "
            f"function has no 'task' parameter; add one (Huey passes the running Task "
            f"as task=).",
            task=name,
        )
    try:
        if args_model is not None:
            return _spec_from_model(func, name, version, args_model, context)
        return _spec_from_signature(func, name, version, context)
    except PydanticUserError as exc:  # e.g. no schema for an arbitrary class
        first = str(exc).splitlines()[0]
        raise SchemaError(
            f"Task {name!r} version {version}: pydantic cannot build its argument model: "
            f"{first} Annotate the parameters with types pydantic validates (or pass "
            f"args_model=).",
            task=name,
        ) from exc


def _spec_from_model(
    func: Callable[..., Any],
    name: str,
    version: int,
    model: type[BaseModel],
    context: bool,
) -> TaskSpec:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise SchemaError(
            f"Task {name!r}: args_model must be a pydantic BaseModel subclass, got {model!r}.",
            task=name,
        )
    for field_name in model.model_fields:
        _refuse_reserved(name, version, field_name)
    _refuse_lossy(name, version, model, "")
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    return TaskSpec(
        name=name,
        version=version,
        params=(),
        defaults={},
        model=model,
        adapter=adapter,
        validator=model.__pydantic_validator__,  # type: ignore[arg-type]
        serializer=model.__pydantic_serializer__,
    )


def _spec_from_signature(
    func: Callable[..., Any], name: str, version: int, context: bool
) -> TaskSpec:
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    params: list[str] = []
    has_task_param = False
    for param in signature.parameters.values():
        if context and param.name == "task":
            has_task_param = True
            continue
        _check_parameter(name, version, param)
        # An unannotated parameter takes JSON values only: anything richer
        # (a datetime, a tuple) would reach the worker as something else.
        annotation = _exception_aware(hints.get(param.name, JsonValue))
        _refuse_lossy(name, version, annotation, param.name)
        if param.default is inspect.Parameter.empty:
            fields[param.name] = Required[annotation]
        else:
            _check_default(name, version, param.name, annotation, param.default)
            fields[param.name] = NotRequired[annotation]
            defaults[param.name] = param.default
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            params.append(param.name)
    if context and not has_task_param:
        raise SchemaError(
            f"Task {name!r} version {version} is declared with context=True but its "
            f"function has no 'task' parameter; add one (Huey passes the running Task "
            f"as task=).",
            task=name,
        )
    typed_dict = _typed_dict(f"{func.__name__}_v{version}_args", fields)
    adapter: TypeAdapter[Any] = TypeAdapter(typed_dict)
    return TaskSpec(
        name=name,
        version=version,
        params=tuple(params),
        defaults=defaults,
        model=None,
        adapter=adapter,
        validator=adapter.validator,  # type: ignore[arg-type]
        # The TypedDict's own config does not reach its serializer: give it the
        # JSON settings explicitly so bytes travel as base64, as validated.
        serializer=SchemaSerializer(adapter.core_schema, _SERIALIZER_CONFIG),
        binder=_make_binder(signature, context),
        plain_json=all(_is_plain_json(hint) for hint in _field_types(fields)),
        open_json=any(_is_open(hint) for hint in _field_types(fields)),
    )


def _exception_aware(hint: Any) -> Any:
    """Exception classes (alone or ``| None``) as fields that carry a stand-in."""
    if isinstance(hint, type) and issubclass(hint, BaseException):
        return exception_field(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if any(isinstance(a, type) and issubclass(a, BaseException) for a in args):
            return typing.Union[tuple(_exception_aware(a) for a in args)]  # noqa: UP007
    return hint


def _field_types(fields: dict[str, Any]) -> Iterable[Any]:
    for wrapped in fields.values():
        yield typing.get_args(wrapped)[0]  # Required[X] / NotRequired[X] -> X


_PLAIN_SCALARS: Final = (str, int, float, bool, type(None))


def _is_open(hint: Any) -> bool:
    """Whether the annotation lets any value through (``Any``, ``JsonValue``)."""
    if hint is Any or hint is JsonValue:
        return True
    return any(_is_open(arg) for arg in typing.get_args(hint))


def _is_plain_json(hint: Any) -> bool:
    """Whether pydantic's JSON for this annotation is what orjson writes."""
    if hint in _PLAIN_SCALARS:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and len(args) == 1:
        return _is_plain_json(args[0])
    if origin is dict and len(args) == 2 and args[0] is str:
        return _is_plain_json(args[1])
    if origin in (typing.Union, types.UnionType):
        return all(_is_plain_json(arg) for arg in args)
    return False


def _make_binder(signature: inspect.Signature, context: bool) -> Callable[..., dict[str, Any]]:
    """A function with the task's own parameters that returns them as a dict.

    Python binds the call in C, which is several times faster than naming the
    arguments by hand. Parameter names come from ``inspect.signature``, so they
    are identifiers; defaults are referenced from a namespace, never printed.
    """
    parts: list[str] = []
    namespace: dict[str, Any] = {}
    keyword_only = False
    names = []
    for param in signature.parameters.values():
        if context and param.name == "task":
            continue
        if param.kind is inspect.Parameter.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        if param.default is inspect.Parameter.empty:
            parts.append(param.name)
        else:
            namespace[f"__vt_default_{param.name}"] = param.default
            parts.append(f"{param.name}=__vt_default_{param.name}")
        names.append(param.name)
    items = ", ".join(f"{n!r}: {n}" for n in names)
    source = f"def bind({', '.join(parts)}):\n    return {{{items}}}\n"
    exec(source, namespace)
    binder: Callable[..., dict[str, Any]] = namespace["bind"]
    return binder


def _typed_dict(name: str, fields: dict[str, Any]) -> Any:
    # pydantic needs typing_extensions.TypedDict before Python 3.12.
    factory: Any = TypedDict
    typed_dict = factory(name, fields)
    typed_dict.__pydantic_config__ = _ARGS_CONFIG
    return typed_dict


def _check_parameter(name: str, version: int, param: inspect.Parameter) -> None:
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise SchemaError(
            f"Task {name!r} version {version}: parameter {param}: *args and **kwargs "
            f"cannot become named fields; declare each argument, or pass args_model=.",
            task=name,
        )
    if param.kind is inspect.Parameter.POSITIONAL_ONLY:
        raise SchemaError(
            f"Task {name!r} version {version}: parameter {param.name!r} is "
            f"positional-only; arguments travel as named fields, remove the '/'.",
            task=name,
        )
    _refuse_reserved(name, version, param.name)


def _refuse_reserved(name: str, version: int, field_name: str) -> None:
    if field_name in RESERVED_PARAMETERS:
        raise SchemaError(
            f"Task {name!r} version {version}: argument {field_name!r} is taken by "
            f"Huey's .s() (one of {', '.join(sorted(RESERVED_PARAMETERS))}) and would "
            f"never reach the task; rename it.",
            task=name,
        )


def _refuse_lossy(name: str, version: int, annotation: Any, path: str) -> None:
    """Refuse types whose JSON does not come back as it went in."""
    problem = _lossy(annotation, path, set())
    if problem is not None:
        where, why = problem
        raise SchemaError(
            f"Task {name!r} version {version}: argument {where or '(model)'!r} {why}, so "
            f"the worker would not get the value the producer sent; change the field.",
            task=name,
        )


def _lossy(annotation: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if id(annotation) in seen:
        return None
    seen.add(id(annotation))
    if isinstance(annotation, type) and issubclass(annotation, _SECRET_TYPES):
        return path, (
            f"is a {annotation.__name__}, which pydantic writes as '**********' "
            f"(and secrets should not sit in a queue: pass a reference instead)"
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for field_name, info in annotation.model_fields.items():
            where = f"{path}.{field_name}" if path else field_name
            if info.exclude:
                return where, "is a field with exclude=True, which is left out of the JSON"
            found = _lossy(info.annotation, where, seen)
            if found is not None:
                return found
        return None
    for arg in typing.get_args(annotation):
        found = _lossy(arg, path, seen)
        if found is not None:
            return found
    return None


def _check_default(name: str, version: int, param: str, annotation: Any, default: Any) -> None:
    try:
        TypeAdapter(annotation).validate_python(default)
    except ValidationError:
        if annotation is JsonValue:
            fix = (
                f"is not a JSON value, which is all an unannotated parameter takes; "
                f"annotate it (e.g. {param}: tuple[str, ...] = {default!r})"
            )
        else:
            fix = (
                f"does not fit its annotation {annotation!r}; fix the default or widen "
                f"the annotation (e.g. Optional[...])"
            )
        raise SchemaError(
            f"Task {name!r} version {version}: the default {default!r} of {param!r} {fix}.",
            task=name,
        ) from None


_MISSING: Final = object()


@dataclass(eq=False)
class _Tombstone:
    handler: Callable[[Any], object] | None = None


class SchemaRegistry:
    """Every versioned task of one app with its upcasters, renames and tombstones."""

    def __init__(self) -> None:
        self.specs: dict[str, TaskSpec] = {}
        self.upcasters: dict[str, dict[int, Upcaster]] = {}
        #: Steps from version N (the key) to N - 1, per task.
        self.downcasters: dict[str, dict[int, Downcaster]] = {}
        #: The versions this app's producers are pinned to (``emit_versions``).
        self.emit_versions: dict[str, int] = {}
        self.renames: dict[str, str] = {}
        self.tombstones: dict[str, _Tombstone] = {}
        self._chains: dict[tuple[Any, ...], Any] = {}
        #: Declared tasks that no rename or tombstone shadows: the names the
        #: read pipeline's hot path may take at face value.
        self.runnable: dict[str, TaskSpec] = {}
        self.dirty = True

    def __repr__(self) -> str:
        return (
            f"<SchemaRegistry tasks={len(self.specs)} "
            f"upcasters={sum(map(len, self.upcasters.values()))} "
            f"downcasters={sum(map(len, self.downcasters.values()))} "
            f"renames={len(self.renames)} tombstones={len(self.tombstones)}>"
        )

    # -- declarations --------------------------------------------------------

    def add_task(self, spec: TaskSpec) -> None:
        if spec.name in self.specs:
            raise SchemaError(
                f"Task {spec.name!r} is declared twice (versions "
                f"{self.specs[spec.name].version} and {spec.version}); keep one "
                f"declaration with the current version and upcasters for the older ones.",
                task=spec.name,
            )
        self.specs[spec.name] = spec
        self._changed()

    def add_upcaster(self, task: str, from_version: int, func: Upcaster) -> None:
        if isinstance(from_version, bool) or not isinstance(from_version, int):
            raise SchemaError(
                f"Upcaster for {task!r}: from_version must be an integer, got {from_version!r}.",
                task=task,
            )
        if from_version < 1:
            raise SchemaError(
                f"Upcaster for {task!r} from version {from_version}: versions start at 1.",
                task=task,
            )
        steps = self.upcasters.setdefault(task, {})
        if from_version in steps:
            raise SchemaError(
                f"Task {task!r} has two upcasters from version {from_version} to "
                f"{from_version + 1} ({_describe(steps[from_version])} and "
                f"{_describe(func)}); keep one.",
                task=task,
            )
        steps[from_version] = func
        self._changed()

    def add_downcaster(self, task: str, from_version: int, func: Downcaster) -> None:
        """Register the step from ``from_version`` down to ``from_version - 1``."""
        if isinstance(from_version, bool) or not isinstance(from_version, int):
            raise SchemaError(
                f"Downcaster for {task!r}: from_version must be an integer, got {from_version!r}.",
                task=task,
            )
        if from_version < 2:
            raise SchemaError(
                f"Downcaster for {task!r} from version {from_version}: a downcaster goes "
                f"from version N to N - 1 and versions start at 1, so from_version must be "
                f"2 or more.",
                task=task,
            )
        steps = self.downcasters.setdefault(task, {})
        if from_version in steps:
            raise SchemaError(
                f"Task {task!r} has two downcasters from version {from_version} to "
                f"{from_version - 1} ({_describe(steps[from_version])} and "
                f"{_describe(func)}); keep one.",
                task=task,
            )
        steps[from_version] = func
        self._changed()

    def add_rename(self, old: str, new: str) -> None:
        if old == new:
            raise SchemaError(f"rename({old!r}, {new!r}) renames a task to itself.", task=old)
        if old in self.renames and self.renames[old] != new:
            raise SchemaError(
                f"Task {old!r} is renamed twice (to {self.renames[old]!r} and "
                f"{new!r}); keep one rename.",
                task=old,
            )
        self.renames[old] = new
        self._changed()

    def add_tombstone(self, task: str) -> _Tombstone:
        tomb = self.tombstones.setdefault(task, _Tombstone())
        self._changed()
        return tomb

    def _changed(self) -> None:
        self._chains.clear()
        self.runnable = {
            name: spec
            for name, spec in self.specs.items()
            if name not in self.renames and name not in self.tombstones
        }
        self.dirty = True

    # -- lookups used per message --------------------------------------------

    def resolve(self, name: str) -> str:
        """Follow renames to today's name (chains are checked acyclic)."""
        seen = 0
        while name in self.renames and seen <= len(self.renames):
            name = self.renames[name]
            seen += 1
        return name

    def chain(self, task: str, from_version: int, to_version: int) -> tuple[Upcaster, ...] | None:
        """The upcasters from ``from_version`` to ``to_version``, or None if one is missing."""
        key = (task, from_version, to_version)
        chain = self._chains.get(key, _MISSING)
        if chain is _MISSING:
            steps = self.upcasters.get(task, {})
            try:
                chain = tuple(steps[v] for v in range(from_version, to_version))
            except KeyError:
                chain = None
            self._chains[key] = chain
        result: tuple[Upcaster, ...] | None = chain
        return result

    def down_chain(
        self, task: str, from_version: int, to_version: int
    ) -> tuple[Downcaster, ...] | None:
        """The downcasters from ``from_version`` down to ``to_version``, or None if one
        is missing."""
        key = ("down", task, from_version, to_version)
        chain = self._chains.get(key, _MISSING)
        if chain is _MISSING:
            steps = self.downcasters.get(task, {})
            try:
                chain = tuple(steps[v] for v in range(from_version, to_version, -1))
            except KeyError:
                chain = None
            self._chains[key] = chain
        result: tuple[Downcaster, ...] | None = chain
        return result

    def pin_problems(self, task: str, pinned: int, *, skip: Iterable[int] = ()) -> list[str]:
        """What keeps this app from writing ``task`` at the pinned version, with the fix.

        Empty when the task is declared, the pin is not above its current
        version, every downcaster from the current version to the pin exists,
        and the upcasters lead back (so that this app's own workers read what
        it writes). Missing downcasters in ``skip`` are left out (the chain
        check reports them already).
        """
        spec = self.specs.get(task)
        if spec is None:
            return [
                f"emit_versions pins {task!r} to version {pinned}, but no task of that name "
                f"is declared; declare it, or drop it from emit_versions (or "
                f"VERSIONED_TASKS_EMIT_VERSIONS)."
            ]
        current = spec.version
        if pinned > current:
            return [
                f"emit_versions pins {task!r} to version {pinned}, above its current version "
                f"{current}; a producer cannot write a version it does not know. Pin "
                f"{current} or lower."
            ]
        steps = self.downcasters.get(task, {})
        problems = [
            f"emit_versions pins {task!r} to version {pinned}, but it has no downcaster from "
            f"version {v} to {v - 1}; register one with "
            f"@huey.downcaster({task!r}, from_version={v})."
            for v in range(current, pinned, -1)
            if v not in steps and v not in skip
        ]
        up = self.upcasters.get(task, {})
        problems.extend(
            f"emit_versions pins {task!r} to version {pinned}, but it has no upcaster from "
            f"version {v} to {v + 1}, so this app's own workers could not read what it "
            f"writes; register one with @huey.upcaster({task!r}, from_version={v})."
            for v in range(pinned, current)
            if v not in up
        )
        return problems

    # -- whole-registry check ------------------------------------------------


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
