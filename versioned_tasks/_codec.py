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
import uuid
from collections.abc import Callable
from typing import Any

from huey.utils import SKIPPED, Error
from pydantic import BaseModel

from .exceptions import DecodeError, EncodeError

__all__ = ["RemoteException", "decode", "encode"]

_SCALARS = (str, int, float, bool, type(None))
# orjson writes integers in this range; others travel as strings.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class RemoteException(Exception):
    """Stands in for an exception that crossed the queue (e.g. the one Huey
    appends to an ``on_error`` handler's arguments).

    Attributes:
        type_name: the original exception's qualified type name.
        message: ``str()`` of the original exception.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
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
        return {"$error": encode(value.metadata, f"{path}.metadata")}
    if isinstance(value, tuple):
        return {"$tuple": [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return _encode_dict(dict(value), path)
    if isinstance(value, BaseModel):
        return encode(value.model_dump(mode="json"), path)
    if isinstance(value, BaseException):
        return {"$exception": [_qualname(type(value)), str(value)]}
    for kind, encoder in _ENCODERS.items():
        if isinstance(value, kind):
            return encoder(value, path)
    raise EncodeError(
        f"Cannot encode {type(value).__name__} at {path}: the JSON envelope carries "
        f"JSON types, tuples, sets, bytes, datetimes, dates, timedeltas, UUIDs, "
        f"Decimals and pydantic models; convert the value to one of these.",
        path=path,
    )


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
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation) as exc:
        raise DecodeError(f"Malformed {tag} value: {exc}") from None


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
    "$exception": lambda p: RemoteException(str(p[0]), str(p[1])),
}
