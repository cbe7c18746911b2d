"""JSON for the Python values Huey keeps: results, revocations, locks, chord partials.

orjson writes tuples as lists and datetimes as strings, and cannot write sets,
bytes or Huey's own ``Error`` and ``SKIPPED``. Values that would not come back
as they went in are wrapped in a one-key object whose key starts with ``$``::

    (1, 2)                       {"$tuple": [1, 2]}
    datetime(2026, 1, 2, 3, 4)   {"$datetime": "2026-01-02T03:04:00"}

A plain dict that happens to look like such a wrapper (one key, starting with
``$``) or has keys that are not strings travels as ``{"$dict": [[k, v], ...]}``,
so no user value is ever mistaken for a tag.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Annotated, Any

import orjson
from huey.registry import Message
from huey.utils import SKIPPED, Error
from pydantic import (
    BaseModel,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from ..exceptions import DecodeError, EncodeError

__all__ = ["RemoteException", "decode", "encode", "register_model"]

_SCALARS = (str, int, float, bool, type(None))
# orjson writes integers in this range; others travel as strings.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class RemoteException(Exception):
    """Stands in for an exception that crossed the queue (e.g. the one Huey
    appends to an ``on_error`` handler's arguments).

    When the original class is already loaded in the reading process (its
    module is in ``sys.modules``; nothing is imported) and is an ``Exception``
    subclass, the stand-in is an instance of a class deriving from both that
    class and ``RemoteException``: ``isinstance(exc, ValueError)``,
    ``type(exc).__name__`` and ``repr(exc)`` behave as for the original. Its
    ``args`` and attributes are restored from JSON; a user-defined class's
    ``__init__`` is not called. Otherwise it is a plain ``RemoteException``.

    Attributes:
        type_name: the original exception's qualified type name
            (``"module.QualName"``).
        message: ``str()`` of the original exception.
        remote_traceback: the traceback text captured where it was raised,
            or ``None``.
    """

    type_name: str
    message: str
    remote_traceback: str | None

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")


def encode(value: Any, path: str = "value") -> Any:
    """Turn ``value`` into JSON-ready data, tagging what JSON cannot say.

    Raises:
        EncodeError: naming the path to a value that cannot be encoded.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else {"$int": str(value)}
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if kind is list:
        return [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return _encode_dict(value, path)
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value, path)
    return _encode_other(value, path)


def _encode_dict(value: dict[Any, Any], path: str) -> Any:
    plain = all(type(k) is str for k in value) and not (
        len(value) == 1 and next(iter(value)).startswith("$")
    )
    if plain:
        return {k: encode(v, f"{path}.{k}") for k, v in value.items()}
    pairs = [[encode(k, f"{path}<key>"), encode(v, f"{path}[{k!r}]")] for k, v in value.items()]
    return {"$dict": pairs}


def _encode_other(value: Any, path: str) -> Any:
    if isinstance(value, _SCALARS):  # subclasses: str enums, int flags, ...
        return encode(_plain_scalar(value), path)
    if value is SKIPPED:
        return {"$skipped": True}
    if isinstance(value, Error):
        return {"$error": encode(_short_error(value.metadata), f"{path}.metadata")}
    if isinstance(value, Message):  # a namedtuple: before the tuple case
        return {"$message": _encode_message(value, path)}
    if isinstance(value, tuple):
        return {"$tuple": [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return _encode_dict(dict(value), path)
    for kind, encoder in _ENCODERS.items():
        if isinstance(value, kind):
            return encoder(value, path)
    raise EncodeError(
        f"Cannot encode {type(value).__name__} at {path}: the JSON envelope carries "
        f"JSON types, tuples, sets, bytes, datetimes, dates, timedeltas, UUIDs, "
        f"Decimals and pydantic models; convert the value to one of these.",
        path=path,
    )


def _encode_model(value: BaseModel, path: str) -> Any:
    data = value.model_dump(mode="json")
    name = _qualname(type(value))
    if _MODELS.get(name) is type(value):
        return {"$model": [name, data]}
    return encode(data, path)


def _plain_scalar(value: Any) -> Any:
    # str.__str__, not str(): a str-mixin Enum's str() is "Color.RED".
    if isinstance(value, str):
        return str.__str__(value)
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


# Attributes of a stand-in that belong to RemoteException, not to the original.
_STAND_IN_ATTRS = frozenset(("type_name", "message", "remote_traceback"))


_ENCODING = threading.local()


# An exception travels inside the message that reports it: its text is cut to
# this many characters (the end of a traceback is kept), and args or an
# attribute whose JSON is longer (an HTTP response body, say) are left out.
_EXCEPTION_TEXT_LIMIT = 32 * 1024
_EXCEPTION_PART_LIMIT = 16 * 1024


def _encode_exception(exc: BaseException, path: str) -> dict[str, Any]:
    """The exception's type, message, traceback text, ``args`` and attributes;
    whatever of the last two JSON cannot carry, or that is too long, is left
    out, never an error."""
    if isinstance(exc, RemoteException):
        kind = type(exc)
        module = kind.__module__ if kind is not RemoteException else None
        qualname = kind.__qualname__ if kind is not RemoteException else None
        type_name, message, tb = exc.type_name, exc.message, exc.remote_traceback
    else:
        module, qualname = type(exc).__module__, type(exc).__qualname__
        type_name, message = _qualname(type(exc)), _safe_str(exc)
        tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ else None
    limit = _EXCEPTION_TEXT_LIMIT
    out: dict[str, Any] = {"type": type_name, "message": message[:limit]}
    if tb is not None:
        out["traceback"] = tb if len(tb) <= limit else "...\n" + tb[-limit:]
    # An exception reachable from its own args or attributes is written once.
    active: set[int] = _ENCODING.__dict__.setdefault("active", set())
    if module is None or qualname is None or id(exc) in active:
        return out
    out["module"], out["qualname"] = module, qualname
    active.add(id(exc))
    try:
        args = _small_part(list(exc.args), f"{path}.args")
        if args is not None:
            out["args"] = args
        state = {}
        for key, item in vars(exc).items():
            if key in _STAND_IN_ATTRS or type(key) is not str:
                continue
            part = _small_part(item, f"{path}.{key}")
            if part is not None:
                state[key] = part
        if state:
            out["state"] = state
    finally:
        active.discard(id(exc))
    return out


def _short_error(metadata: Any) -> Any:
    """Huey's error result with its ``error`` (a repr) and ``traceback`` texts cut
    as an exception's are, so that a huge failure still fits its envelope."""
    if type(metadata) is not dict:
        return metadata
    limit = _EXCEPTION_TEXT_LIMIT
    return {
        k: (v[:limit] if k == "error" else "...\n" + v[-limit:])
        if k in ("error", "traceback") and type(v) is str and len(v) > limit
        else v
        for k, v in metadata.items()
    }


def _small_part(value: Any, path: str) -> Any:
    """``value`` encoded, or None when it cannot be or its JSON is too long."""
    try:
        data = encode(value, path)
    except EncodeError:
        return None
    return data if len(orjson.dumps(data)) <= _EXCEPTION_PART_LIMIT else None


def exception_field(kind: type[BaseException]) -> Any:
    """A pydantic annotation for a task parameter typed as an exception class.

    Huey appends the failure to an ``on_error`` handler's arguments: a
    versioned handler declared ``def handler(exc: Exception)`` receives it. On
    the wire it is the same object as ``$exception`` carries; the worker gets
    the stand-in described in :class:`RemoteException`, which must be an
    instance of ``kind``.
    """

    def validate(value: Any) -> BaseException:
        if type(value) is dict:
            try:
                value = _decode_exception(value)
            except (DecodeError, TypeError, ValueError, LookupError):
                raise ValueError("not an exception as versioned_tasks writes one") from None
        elif isinstance(value, BaseException) and not isinstance(value, RemoteException):
            # Huey appends the live exception in the worker: hand on the same
            # stand-in the handler would get after the trip through the queue.
            value = _decode_exception(_encode_exception(value, "exception"))
        if not isinstance(value, kind):
            raise ValueError(f"expected an exception of type {kind.__name__}")
        return value

    return Annotated[
        kind,
        PlainValidator(validate),
        PlainSerializer(lambda exc: _encode_exception(exc, "exception"), return_type=dict),
        WithJsonSchema({"type": "object", "description": f"an exception ({kind.__name__})"}),
    ]


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the failure report
        return f"<unprintable {type(exc).__name__}>"


def _decode_exception(payload: Any) -> RemoteException:
    if type(payload) is list and len(payload) == 2:  # written by 0.1.0: [type, message]
        return RemoteException(str(payload[0]), str(payload[1]))
    if type(payload) is not dict or "type" not in payload or "message" not in payload:
        raise TypeError("an exception is an object with 'type' and 'message'")
    type_name, message = str(payload["type"]), str(payload["message"])
    tb = payload.get("traceback")
    tb = None if tb is None else str(tb)
    cls = _loaded_class(payload.get("module"), payload.get("qualname"))
    if cls is not None:
        args = decode(payload.get("args", [message]))
        state = decode(payload.get("state", {}))
        if type(args) is list and type(state) is dict:
            built = _rebuild(cls, tuple(args), state)
            if built is not None:
                built.type_name, built.message, built.remote_traceback = type_name, message, tb
                return built
    return RemoteException(type_name, message, tb)


def _loaded_class(module: Any, qualname: Any) -> type[RemoteException] | None:
    """The stand-in class for an exception class that is already loaded."""
    if type(module) is not str or type(qualname) is not str:
        return None
    found: Any = sys.modules.get(module)  # never imports
    for part in qualname.split("."):
        if found is None or part.startswith("__"):
            return None
        # vars(), not getattr(): a module-level __getattr__ could import.
        found = vars(found).get(part) if isinstance(found, type | ModuleType) else None
    if not (isinstance(found, type) and issubclass(found, Exception)) or _runs_code(found):
        return None
    return _stand_in_class(found)


def _runs_code(cls: type) -> bool:
    """Whether deriving from ``cls`` or making an instance would run code of the
    app's own: a metaclass, ``__init_subclass__`` or ``__new__`` defined outside
    the built-in exceptions. Such a class gets a plain RemoteException."""
    if type(cls) is not type:
        return True
    return any(
        ("__new__" in vars(k) or "__init_subclass__" in vars(k)) and k.__module__ != "builtins"
        for k in cls.__mro__
    )


_STAND_INS: dict[type[Exception], type[RemoteException] | None] = {}


def _stand_in_class(original: type[Exception]) -> type[RemoteException] | None:
    if issubclass(original, RemoteException):
        return original
    if original not in _STAND_INS:
        namespace = {"__module__": original.__module__, "__qualname__": original.__qualname__}
        try:
            made = type(original.__name__, (original, RemoteException), namespace)
        except TypeError:  # a final class, or a layout that cannot be mixed
            made = None
        _STAND_INS[original] = made
    return _STAND_INS[original]


def _rebuild(
    cls: type[RemoteException], args: tuple[Any, ...], state: dict[Any, Any]
) -> RemoteException | None:
    try:
        exc = cls.__new__(cls, *args)
        # Built-in exceptions keep fields in C slots that only their __init__
        # fills; a user-defined __init__ is not run (its state comes from JSON).
        builtin: Any = next(k for k in cls.__mro__ if k.__module__ == "builtins")
        builtin.__init__(exc, *args)
        exc.args = args
        exc.__dict__.update({k: v for k, v in state.items() if type(k) is str})
    except Exception:
        return None
    return exc


_ENCODERS: dict[type, Callable[[Any, str], Any]] = {
    tuple: lambda v, p: {"$tuple": [encode(x, f"{p}[{i}]") for i, x in enumerate(v)]},
    datetime.datetime: lambda v, p: {"$datetime": v.isoformat()},
    datetime.date: lambda v, p: {"$date": v.isoformat()},
    datetime.time: lambda v, p: {"$time": v.isoformat()},
    datetime.timedelta: lambda v, p: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    bytes: lambda v, p: {"$bytes": base64.b64encode(v).decode("ascii")},
    uuid.UUID: lambda v, p: {"$uuid": str(v)},
    decimal.Decimal: lambda v, p: {"$decimal": str(v)},
    set: lambda v, p: {"$set": [encode(x, f"{p}<item>") for x in v]},
    frozenset: lambda v, p: {"$frozenset": [encode(x, f"{p}<item>") for x in v]},
    BaseModel: _encode_model,
    BaseException: lambda v, p: {"$exception": _encode_exception(v, p)},
}


def decode(data: Any) -> Any:
    """Inverse of :func:`encode` on parsed JSON."""
    if isinstance(data, _SCALARS):
        return data
    if type(data) is list:
        return [decode(item) for item in data]
    if type(data) is dict:
        if len(data) == 1:
            key = next(iter(data))
            if key.startswith("$"):
                return _decode_tag(key, data[key])
        return {k: decode(v) for k, v in data.items()}
    raise DecodeError(f"Unexpected JSON value of type {type(data).__name__}.")


def _decode_tag(tag: str, payload: Any) -> Any:
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise DecodeError(f"Unknown value tag {tag!r}; was it written by a newer release?")
    try:
        return decoder(payload)
    except (TypeError, ValueError, LookupError, OverflowError, decimal.InvalidOperation) as exc:
        raise DecodeError(f"Malformed {tag} value: {exc!r}") from None


# Result models declared with versioned_task(result_model=...), by qualified
# name: only these are rebuilt from a stored value; nothing is imported.
_MODELS: dict[str, type[BaseModel]] = {}


def register_model(model: type[BaseModel]) -> None:
    """Let values of ``model`` come back as ``model`` rather than as a dict."""
    _MODELS[_qualname(model)] = model


def _decode_model(payload: Any) -> Any:
    name, data = payload
    model = _MODELS.get(name)
    if model is None:
        return data  # JSON-mode data, as model_dump(mode="json") wrote it
    try:
        return model.model_validate_json(orjson.dumps(data))
    except ValidationError as exc:
        raise ValueError(
            f"stored value no longer validates as {name} ({exc.error_count()} errors)"
        ) from None


# The ``$message`` tag: a Huey Message stored inside a value (a pipeline's next
# step, a chord's callback). Its object form is the message layer's business; that
# layer registers it here, so this module never imports upward.
_MESSAGE_CODEC: list[tuple[Callable[[Message, str], Any], Callable[[Any], Message]]] = []


def register_message_codec(
    to_object: Callable[[Message, str], Any], from_object: Callable[[Any], Message]
) -> None:
    """Set how a Huey ``Message`` inside a value is written and read (the ``$message`` tag)."""
    _MESSAGE_CODEC[:] = [(to_object, from_object)]


def _encode_message(message: Message, path: str) -> Any:
    if not _MESSAGE_CODEC:
        raise EncodeError(
            f"Cannot encode a Huey Message at {path}: no message codec is registered."
        )
    return _MESSAGE_CODEC[0][0](message, path)


def _decode_message(payload: Any) -> Message:
    if not _MESSAGE_CODEC:
        raise DecodeError("Unknown value tag '$message': no message codec is registered.")
    return _MESSAGE_CODEC[0][1](payload)


def _decode_dict_pairs(pairs: list[list[Any]]) -> dict[Any, Any]:
    return {_hashable(decode(k)): decode(v) for k, v in pairs}


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict | set):
        raise TypeError(f"unhashable key {key!r}")
    return key


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$tuple": lambda p: tuple(decode(x) for x in p),
    "$int": int,
    "$float": float,
    "$datetime": datetime.datetime.fromisoformat,
    "$date": datetime.date.fromisoformat,
    "$time": datetime.time.fromisoformat,
    "$timedelta": lambda p: datetime.timedelta(days=p[0], seconds=p[1], microseconds=p[2]),
    "$bytes": lambda p: base64.b64decode(p, validate=True),
    "$uuid": uuid.UUID,
    "$decimal": decimal.Decimal,
    "$set": lambda p: {_hashable(decode(x)) for x in p},
    "$frozenset": lambda p: frozenset(_hashable(decode(x)) for x in p),
    "$dict": _decode_dict_pairs,
    "$skipped": lambda p: SKIPPED,
    "$error": lambda p: Error(decode(p)),
    "$exception": _decode_exception,
    "$message": _decode_message,
    "$model": _decode_model,
}
