"""One plain, valid example of a JSON Schema: a payload as an older version wrote it.

``example(schema)`` builds the value a reader would write by hand: every
property of an object (a producer writes every field, defaults included), the
first choice of a union that is not null, the lower bounds of numbers, sizes
and lengths. It covers what pydantic writes for task arguments (``$ref`` into
``$defs``, ``anyOf``, ``enum``, ``const``, formats, bounds); for a schema it
cannot satisfy it raises :class:`ValueError` naming where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["example"]

#: Values for string formats, each valid for its format.
_FORMATS: Final[Mapping[str, str]] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "PT1S",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "binary": "",
    "base64url": "",
}
_MAX_DEPTH: Final = 32


def example(schema: Any) -> Any:
    """A JSON value that ``schema`` accepts.

    Raises:
        ValueError: a part of the schema this builder cannot satisfy (a
            ``pattern``, ``not``, a recursive ``$ref`` without a way out), with
            its JSON Pointer.
    """
    return _Builder(schema if isinstance(schema, Mapping) else {}).value(schema, "", 0)


class _Builder:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.defs: Mapping[str, Any] = root.get("$defs", {}) or {}

    def value(self, schema: Any, where: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError(f"{where or '/'}: nested too deep (a recursive $ref?)")
        if schema is True or schema == {} or not isinstance(schema, Mapping):
            return None
        if "$ref" in schema:
            return self.value(self._ref(schema["$ref"], where), where, depth + 1)
        for key in ("default", "const"):
            if key in schema:
                return schema[key]
        if schema.get("enum"):
            return schema["enum"][0]
        if {"anyOf", "oneOf", "allOf"} & schema.keys():
            return self.value(self._chosen(schema, where), where, depth + 1)
        if "not" in schema or "pattern" in schema:
            raise ValueError(f"{where or '/'}: 'not' and 'pattern' are not supported")
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
        if kind is None and "properties" in schema:
            kind = "object"
        return self._typed(kind, schema, where, depth)

    def _chosen(self, schema: Mapping[str, Any], where: str) -> Any:
        """The branch of a union to follow, or the parts of an ``allOf`` merged."""
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return _preferred(schema[key])
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(self._resolved(part, where))
        return merged

    def _typed(self, kind: Any, schema: Mapping[str, Any], where: str, depth: int) -> Any:
        if kind == "object":
            properties = schema.get("properties", {})
            return {
                name: self.value(sub, f"{where}/{name}", depth + 1)
                for name, sub in properties.items()
            }
        if kind == "array":
            size = int(schema.get("minItems", 0))
            prefix = schema.get("prefixItems", [])
            items = [self.value(sub, f"{where}/{i}", depth + 1) for i, sub in enumerate(prefix)]
            while len(items) < size:
                items.append(self.value(schema.get("items", {}), f"{where}/*", depth + 1))
            return items
        if kind == "string":
            text = _FORMATS.get(str(schema.get("format", "")), "text")
            low = int(schema.get("minLength", 0))
            high = schema.get("maxLength")
            if len(text) < low:
                text += "x" * (low - len(text))
            if high is not None and len(text) > int(high):
                text = text[: int(high)]
            return text
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        return None

    def _ref(self, ref: Any, where: str) -> Any:
        prefix = "#/$defs/"
        if not isinstance(ref, str) or not ref.startswith(prefix):
            raise ValueError(f"{where or '/'}: $ref {ref!r} is not into $defs")
        name = ref[len(prefix) :]
        if name not in self.defs:
            raise ValueError(f"{where or '/'}: $ref {ref!r} names no definition")
        return self.defs[name]

    def _resolved(self, schema: Any, where: str) -> Mapping[str, Any]:
        while isinstance(schema, Mapping) and "$ref" in schema:
            schema = self._ref(schema["$ref"], where)
        return schema if isinstance(schema, Mapping) else {}


def _preferred(choices: Any) -> Any:
    """The first choice that is not ``null`` (the value an older version usually wrote)."""
    for choice in choices:
        if not (isinstance(choice, Mapping) and choice.get("type") == "null"):
            return choice
    return choices[0] if choices else {}


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    value: float = 1
    if low is not None:
        value = max(value, float(low)) if schema.get("maximum") is None else float(low)
    if exclusive is not None:
        value = float(exclusive) + 1 if value <= float(exclusive) else value
    high = schema.get("maximum")
    if high is not None and value > float(high):
        value = float(high)
    top = schema.get("exclusiveMaximum")
    if top is not None and value >= float(top):
        value = float(top) - 1 if integer else float(top) / 2 if float(top) > 0 else float(top) - 1
    step = schema.get("multipleOf")
    if step is not None and float(step) > 0:
        value = math.ceil(value / float(step)) * float(step)
    if integer:
        return math.ceil(value)
    return float(value)
