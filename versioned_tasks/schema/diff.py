"""Whether today's JSON Schema of a task accepts every payload the locked one did.

``classify(old, new)`` sorts a change of a task's argument schema into one of:

- ``identical``: the same JSON, byte for byte once keys are sorted;
- ``cosmetic``: only annotations differ (titles, descriptions, examples,
  ``x-*`` extension keys such as those ``json_schema_extra`` adds), which
  change no payload's fate;
- ``compatible``: every payload the old schema accepts, the new one accepts too
  (an optional field added, a type widened, a default changed, ...);
- ``breaking``: anything else, including every change this module cannot prove
  compatible. The comparison is conservative on purpose: a keyword it does not
  understand makes the change breaking unless it is unchanged.

"Every payload the old schema accepts" is read as a producer writes them: an
object with declared ``properties`` and no ``additionalProperties`` (pydantic's
``extra="ignore"``) carries only its declared keys, since the model drops the
others before it is written. A model that starts refusing unknown keys
(``additionalProperties`` becoming false) is breaking all the same: an
upcaster's output, or a message written by other code, may carry them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import orjson

__all__ = [
    "Classification",
    "Level",
    "canonical",
    "classify",
    "is_annotation",
    "order_set_values",
    "strip_annotations",
]

Level = Literal["identical", "cosmetic", "compatible", "breaking"]

#: Keywords that describe a schema without constraining what it accepts; any
#: key that starts with ``x-`` (an extension, e.g. from ``json_schema_extra``)
#: is one too.
ANNOTATIONS: Final = frozenset(
    {
        "title",
        "description",
        "examples",
        "example",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)

# Where subschemas sit: annotations are stripped there and nowhere else (a
# property may well be called "title").
_SUBSCHEMA: Final = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SUBSCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SUBSCHEMA_LISTS: Final = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})

# Keywords the comparison understands; any other one must stay the same.
_NUMERIC: Final = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf")
_SIZES: Final = {
    "minLength": "maxLength",
    "minItems": "maxItems",
    "minProperties": "maxProperties",
}
_UNDERSTOOD: Final = frozenset(
    {
        "type",
        "enum",
        "const",
        "default",
        "format",
        "pattern",
        "items",
        "prefixItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "$defs",
        "definitions",
        *_NUMERIC,
        *_SIZES,
        *_SIZES.values(),
    }
)
_MAX_DEPTH: Final = 100
_ABSENT: Final[Any] = object()


def canonical(value: Any) -> bytes:
    """The canonical JSON of a value: sorted keys, no whitespace (orjson)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # An integer past 64 bits (a default, a bound): orjson cannot write it.
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()


def is_annotation(key: str) -> bool:
    """Whether a schema keyword only describes (a title, an ``x-`` extension, ...)."""
    return key in ANNOTATIONS or key.startswith("x-")


def strip_annotations(schema: Any) -> Any:
    """The schema without titles, descriptions, examples and other annotations."""
    if not isinstance(schema, dict):
        return schema
    stripped: dict[str, Any] = {}
    for key, value in schema.items():
        if is_annotation(key):
            continue
        if key in _SUBSCHEMA:
            value = strip_annotations(value)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {name: strip_annotations(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [strip_annotations(sub) for sub in value]
        stripped[key] = value
    return stripped


def order_set_values(schema: Any) -> Any:
    """The schema with the sets in its defaults and examples in a fixed order.

    pydantic writes a set default (``frozenset({"a", "b"})``, also inside a
    model's default) as a list in iteration order, which for strings changes
    with the process's hash seed: sorted, the schema and its fingerprint are
    the same in every process. Only arrays whose schema says ``uniqueItems``
    are sorted; an ordered list keeps its order.
    """
    return _SetOrder(schema).walk(schema)


class _SetOrder:
    def __init__(self, root: Any) -> None:
        self.root = root

    def walk(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key == "default":
                value = self.order(value, node, 0)
            elif key == "examples" and isinstance(value, list):
                value = [self.order(example, node, 0) for example in value]
            elif key in _SUBSCHEMA:
                value = self.walk(value)
            elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                value = {name: self.walk(sub) for name, sub in value.items()}
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                value = [self.walk(sub) for sub in value]
            result[key] = value
        return result

    def order(self, value: Any, schema: Any, depth: int) -> Any:
        schema = self._resolve(schema, depth)
        if depth > _MAX_DEPTH or not isinstance(schema, dict):
            return value
        for key in ("anyOf", "oneOf"):
            for branch in schema.get(key, ()) if isinstance(schema.get(key), list) else ():
                if _fits_type(value, self._resolve(branch, depth)):
                    return self.order(value, branch, depth + 1)
        if isinstance(value, list):
            return self._list(value, schema, depth)
        if isinstance(value, dict):
            properties = schema.get("properties")
            properties = properties if isinstance(properties, dict) else {}
            extra = schema.get("additionalProperties", True)
            return {
                k: self.order(v, properties.get(k, extra), depth + 1) for k, v in value.items()
            }
        return value

    def _list(self, value: list[Any], schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", True)
        ordered = [
            self.order(v, prefix[i] if i < len(prefix) else items, depth + 1)
            for i, v in enumerate(value)
        ]
        if schema.get("uniqueItems") is True:
            ordered.sort(key=canonical)
        return ordered

    def _resolve(self, schema: Any, depth: int) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
            schema, seen = _pointer(self.root, schema["$ref"]), seen + 1
        return schema


def _pointer(root: Any, ref: Any) -> Any:
    """What a local ``$ref`` (``#/$defs/Name``) points to in ``root``, or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    target: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            return None
        target = target[part]
    return target


def _fits_type(value: Any, schema: Any) -> bool:
    types = _type_set(schema) if isinstance(schema, dict) else None
    return types is not None and any(_JSON_TYPES.get(t, lambda v: False)(value) for t in types)


@dataclass(frozen=True, slots=True)
class Classification:
    """How a schema changed: its ``level`` and the changes found, in words."""

    level: Level
    reasons: tuple[str, ...] = ()

    def summary(self, limit: int = 3) -> str:
        """The first ``limit`` reasons on one line."""
        shown = list(self.reasons[:limit])
        if len(self.reasons) > limit:
            shown.append(f"and {len(self.reasons) - limit} more")
        return "; ".join(shown)


def classify(old: Any, new: Any) -> Classification:
    """Classify the change from the JSON Schema ``old`` to ``new``."""
    if canonical(old) == canonical(new):
        return Classification("identical")
    old, new = strip_annotations(old), strip_annotations(new)
    if canonical(old) == canonical(new):
        return Classification(
            "cosmetic", ("only annotations changed (titles, descriptions, examples, x- keys)",)
        )
    comparison = _Comparison(old, new)
    try:
        accepted = comparison.accepts(old, new, "")
    except (TypeError, AttributeError, ValueError, RecursionError):
        # A hand-edited schema of an unexpected shape: nothing can be proved.
        return Classification("breaking", ("the locked schema cannot be compared",))
    if accepted:
        reasons = _worded(comparison.compatible) or [
            "restructured (e.g. a nested model renamed) but accepts every payload it did"
        ]
        return Classification("compatible", tuple(reasons))
    reasons = _worded(comparison.breaking) or [
        "changed in a way that cannot be shown to be compatible"
    ]
    return Classification("breaking", tuple(reasons))


def _worded(reasons: Iterable[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(f"{_where(path)} {text}" for path, text in reasons))


def _where(path: str) -> str:
    return f"{path!r}" if path else "the payload"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def _has_ref(schema: Any) -> bool:
    return b'"$ref"' in canonical(schema)


def _is_any(schema: Any) -> bool:
    return schema is True or schema == {}


def describe(schema: Any) -> str:
    """A short name for a schema: ``integer``, ``integer | null``, ``array of string``."""
    if schema is True or schema == {}:
        return "any value"
    if schema is False:
        return "no value"
    if not isinstance(schema, dict):
        return "?"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema and isinstance(schema[key], list):
            return " | ".join(describe(branch) for branch in schema[key])
    if "const" in schema:
        return f"the constant {schema['const']!r}"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    kinds = schema.get("type")
    names = kinds if isinstance(kinds, list) else [kinds] if kinds else ["any type"]
    text = " | ".join(str(n) for n in names)
    if kinds == "array" and "items" in schema:
        text += f" of {describe(schema['items'])}"
    return text


class _Comparison:
    """One proof that ``new`` accepts whatever ``old`` accepts, with its reasons."""

    def __init__(self, old_root: Any, new_root: Any) -> None:
        self.roots = (old_root, new_root)
        # (path, text) pairs, worded by classify() at the end.
        self.breaking: list[tuple[str, str]] = []
        self.compatible: list[tuple[str, str]] = []
        # Pairs of $refs being compared: met again, they are taken as proven
        # (recursive models), which is sound for finite payloads.
        self.assumed: set[tuple[str, str]] = set()
        self.depth = 0
        # The path of the old union whose branches are being matched one by one.
        self.union_path: str | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def _break(self, path: str, text: str) -> bool:
        self.breaking.append((path, text))
        return False

    def _note(self, path: str, text: str) -> None:
        self.compatible.append((path, text))

    @contextmanager
    def _trial(self) -> Iterator[list[bool]]:
        """Try a proof; its reasons are kept only if it succeeds (``outcome[0]``)."""
        marks = len(self.breaking), len(self.compatible)
        outcome = [False]
        try:
            yield outcome
        finally:
            del self.breaking[marks[0] :]
            if not outcome[0]:
                del self.compatible[marks[1] :]

    def _quietly(self, old: Any, new: Any, path: str) -> bool:
        marks = len(self.breaking), len(self.compatible)
        result = self.accepts(old, new, path)
        del self.breaking[marks[0] :]
        del self.compatible[marks[1] :]
        return result

    # -- the proof -----------------------------------------------------------------------

    def accepts(self, old: Any, new: Any, path: str) -> bool:
        """Whether ``new`` accepts every value ``old`` accepts (reasons recorded)."""
        if isinstance(old, dict) and isinstance(new, dict):
            old, new = _as_union(old, new=False), _as_union(new, new=True)
            self._default(old.pop("default", _ABSENT), new.pop("default", _ABSENT), path)
        if _is_any(new) or old is False:
            if not _is_any(old) and old is not False:
                self._note(path, f"accepts any value (was {describe(old)})")
            return True
        if _is_any(old) or new is False:
            return self._break(path, f"accepts less than before (was {describe(old)})")
        if not isinstance(old, dict) or not isinstance(new, dict):
            return self._break(path, "is not a schema this check can read")
        if not _has_ref(old) and not _has_ref(new) and _same(old, new):
            return True
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                return self._break(path, "is nested too deeply to compare")
            return self._dispatch(old, new, path)
        finally:
            self.depth -= 1

    def _default(self, old: Any, new: Any, path: str) -> None:
        if old is _ABSENT and new is _ABSENT:
            return
        if old is _ABSENT:
            self._note(path, f"has a default now ({new!r})")
        elif new is _ABSENT:
            self._note(path, f"has no default any more (was {old!r})")
        elif not _same(old, new):
            self._note(path, f"default changed from {old!r} to {new!r}")

    def _dispatch(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        if "$ref" in old or "$ref" in new:
            return self._refs(old, new, path)
        if "anyOf" in old:
            return self._old_union(old, new, path)
        if "anyOf" in new:
            return self._new_union(old, new, path)
        return self._simple(old, new, path)

    def _refs(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        pair = (str(old.get("$ref")), str(new.get("$ref")))
        pure = set(old) == {"$ref"} and set(new) == {"$ref"}
        if pure and pair in self.assumed:
            return True
        old_target, new_target = self._resolve(old, 0), self._resolve(new, 1)
        if old_target is None or new_target is None:
            return self._break(path, "has a $ref that cannot be resolved")
        if pure:
            self.assumed.add(pair)
        try:
            return self.accepts(old_target, new_target, path)
        finally:
            if pure:
                self.assumed.discard(pair)

    def _resolve(self, node: dict[str, Any], side: int) -> Any:
        """The schema a ``$ref`` points to (local pointers only), with its siblings."""
        if "$ref" not in node:
            return node
        target = _pointer(self.roots[side], node["$ref"])
        if target is None:
            return None
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if not siblings:
            return target
        if not isinstance(target, dict) or set(siblings) & set(target):
            return None  # not a plain conjunction of independent keywords
        return {**target, **siblings}

    def _old_union(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        branches, rest = old["anyOf"], {k: v for k, v in old.items() if k != "anyOf"}
        if not isinstance(branches, list) or rest:
            return self._break(path, "changed (its anyOf cannot be compared)")
        # Every branch of the old union must be accepted: check them all, for the
        # reasons; whether the union as a whole widened is said once, below.
        ok, lost, noted = True, [], len(self.compatible)
        outer, self.union_path = self.union_path, path
        try:
            for branch in branches:
                mark = len(self.breaking)
                if self.accepts(branch, new, path):
                    continue
                ok = False
                # A branch refused as a whole reads better as what is lost.
                if all(where == path for where, _ in self.breaking[mark:]):
                    del self.breaking[mark:]
                    lost.append(branch)
        finally:
            self.union_path = outer
        if lost:
            shown = describe({"anyOf": lost})
            return self._break(path, f"no longer accepts {shown} (now {describe(new)})")
        if ok and "anyOf" in new:
            self._widened(old, new, path, noted)
        return ok

    def _new_union(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        branches, rest = new["anyOf"], {k: v for k, v in new.items() if k != "anyOf"}
        if not isinstance(branches, list) or rest:
            return self._break(path, "changed (its anyOf cannot be compared)")
        noted = len(self.compatible)
        for branch in branches:
            with self._trial() as outcome:
                outcome[0] = self.accepts(old, branch, path)
            if outcome[0]:
                if path != self.union_path:
                    self._widened(old, new, path, noted)
                return True
        return self._break(path, f"changed from {describe(old)} to {describe(new)}")

    def _widened(self, old: dict[str, Any], new: dict[str, Any], path: str, noted: int) -> None:
        """Note the branches of the new union that accept what the old schema did not."""
        others = [b for b in new["anyOf"] if not self._quietly(b, old, path)]
        if not others:
            return
        if len(self.compatible) == noted:
            self._note(path, f"widened from {describe(old)} to {describe(new)}")
        else:  # the matches have notes of their own: name only what is new
            self._note(path, f"also accepts {describe({'anyOf': others})} now")

    # -- one plain schema against another ----------------------------------------------

    def _simple(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        for key in sorted((set(old) | set(new)) - _UNDERSTOOD):
            if is_annotation(key):
                continue
            if key not in new:
                return self._break(path, f"dropped its {key!r} keyword")
            if key not in old:
                return self._break(path, f"has a new {key!r} keyword")
            if not _same(old[key], new[key]):
                return self._break(path, f"changed its {key!r} keyword")
        if "enum" in old or "const" in old:
            return self._values(old, new, path)
        if "enum" in new or "const" in new:
            return self._break(path, f"is restricted to {describe(new)} (was {describe(old)})")
        checks = [
            self._types(old, new, path),
            self._numbers(old, new, path),
            self._sizes(old, new, path),
            self._texts(old, new, path),
            self._arrays(old, new, path),
            self._objects(old, new, path),
        ]
        return all(checks)

    def _values(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        values = old["enum"] if "enum" in old else [old["const"]]
        if not isinstance(values, list):
            return self._break(path, "has an enum this check cannot read")
        refused = [value for value in values if not _value_fits(value, new)]
        if refused:
            shown = ", ".join(repr(v) for v in refused[:3])
            return self._break(path, f"no longer accepts {shown} (now {describe(new)})")
        if not _same(strip_values(old), strip_values(new)):
            self._note(path, f"widened from {describe(old)} to {describe(new)}")
        return True

    def _types(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        old_types, new_types = _type_set(old), _type_set(new)
        if new_types is None:
            if old_types is not None:
                self._note(path, f"accepts any type now (was {describe(old)})")
            return True
        if old_types is None:
            return self._break(path, f"is restricted to {describe(new)} (was any type)")
        lost = {t for t in old_types if not _type_covered(t, new_types)}
        if lost:
            return self._break(path, f"changed from {describe(old)} to {describe(new)}")
        if new_types - old_types:
            self._note(path, f"widened from {describe(old)} to {describe(new)}")
        return True

    def _numbers(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        ok = True
        for side in ("minimum", "maximum"):
            old_bound, new_bound = _bound(old, side), _bound(new, side)
            if new_bound is None:
                if old_bound is not None:
                    self._note(path, f"has no {side} any more")
                continue
            if old_bound is None or not _within(old_bound, new_bound, side):
                ok = self._break(path, f"{side} tightened (to {_show_bound(new_bound)})")
            elif old_bound != new_bound:
                self._note(path, f"{side} relaxed (to {_show_bound(new_bound)})")
        return self._multiple(old, new, path) and ok

    def _multiple(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        new_step = new.get("multipleOf")
        if new_step is None or _same(new_step, old.get("multipleOf")):
            return True
        old_step = old.get("multipleOf")
        if old_step is not None and _divides(new_step, old_step):
            return True
        return self._break(path, f"must now be a multiple of {new_step}")

    def _sizes(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        ok = True
        for low, high in _SIZES.items():
            for key, tighter in ((low, _gt), (high, _lt)):
                old_size, new_size = old.get(key), new.get(key)
                if new_size is None or _same(old_size, new_size):
                    continue
                if old_size is None or not _sizes_known(old_size, new_size):
                    ok = self._break(path, f"{key} changed to {new_size!r}")
                elif tighter(new_size, old_size):
                    ok = self._break(path, f"{key} tightened to {new_size}")
                else:
                    self._note(path, f"{key} relaxed to {new_size}")
        return ok

    def _texts(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        ok = True
        for key in ("pattern", "format", "uniqueItems"):
            old_value, new_value = old.get(key), new.get(key)
            if _same(old_value, new_value) or new_value in (None, False):
                if old_value not in (None, False) and new_value in (None, False):
                    self._note(path, f"has no {key} any more")
                continue
            ok = self._break(path, f"{key} changed to {new_value!r}")
        return ok

    def _arrays(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        item_path = f"{path}[]"
        ok = True
        if "prefixItems" in old or "prefixItems" in new:
            old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
            if not (isinstance(old_prefix, list) and isinstance(new_prefix, list)) or len(
                old_prefix
            ) != len(new_prefix):
                return self._break(path, "changed its tuple items")
            # Every pair is compared (not all() short-circuiting), for the reasons.
            pairs = zip(old_prefix, new_prefix, strict=True)
            results = [self.accepts(o, n, item_path) for o, n in pairs]
            ok = all(results)
        if "items" in old or "items" in new:
            ok = self.accepts(old.get("items", True), new.get("items", True), item_path) and ok
        return ok

    def _objects(self, old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
        if not {"properties", "required", "additionalProperties"} & (set(old) | set(new)):
            return True
        old_props: dict[str, Any] = old.get("properties", {})
        new_props: dict[str, Any] = new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        old_extra, new_extra = _old_extra(old), _new_extra(new)
        results = [self._required(old_props, old_required, new_required, path)]
        for name in sorted(old_props):
            where = _join(path, name)
            if name in new_props:
                results.append(self.accepts(old_props[name], new_props[name], where))
            else:
                results.append(self._removed(old_props[name], new_extra, where))
        for name in sorted(set(new_props) - set(old_props) - new_required):
            results.append(self._added(old_extra, new_props[name], _join(path, name)))
        if old_extra is not False:
            label = "(extra keys)" if "properties" in old else "(values)"
            results.append(self.accepts(old_extra, new_extra, _join(path, label)))
        elif "additionalProperties" not in old and not _is_any(new_extra):
            results.append(self._closed(new_extra, path))
        return all(results)

    def _closed(self, new_extra: Any, path: str) -> bool:
        """A model that ignored unknown keys (no ``additionalProperties``) checks them now."""
        what = (
            "refuses unknown keys now (extra='forbid'), which it ignored"
            if new_extra is False
            else f"requires unknown keys to be {describe(new_extra)} now, which it ignored"
        )
        return self._break(
            path,
            f"{what}: an older message, or an upcaster's output, that carries one would be "
            f"refused",
        )

    def _required(
        self, old_props: dict[str, Any], old_required: set[str], new_required: set[str], path: str
    ) -> bool:
        ok = True
        for name in sorted(new_required - old_required):
            what = "is now required" if name in old_props else "added as a required field"
            ok = self._break(_join(path, name), what)
        for name in sorted(old_required - new_required):
            self._note(_join(path, name), "is no longer required")
        return ok

    def _removed(self, old_prop: Any, new_extra: Any, path: str) -> bool:
        if new_extra is False:
            return self._break(
                path,
                "removed: messages that carry it would be refused (extra keys are forbidden)",
            )
        if _is_any(new_extra):
            self._note(path, "removed (the model ignores it in older messages)")
            return True
        with self._trial() as outcome:
            outcome[0] = self.accepts(old_prop, new_extra, path)
        if outcome[0]:
            self._note(path, "removed (older messages' values still fit the extra keys)")
            return True
        return self._break(path, "removed: older messages' values no longer fit the extra keys")

    def _added(self, old_extra: Any, new_prop: Any, path: str) -> bool:
        if old_extra is False:
            self._note(path, "added as an optional field")
            return True
        with self._trial() as outcome:
            outcome[0] = self.accepts(old_extra, new_prop, path)
        if outcome[0]:
            self._note(path, "added as an optional field")
            return True
        return self._break(
            path, "added, but older messages may already carry that key (extra keys were allowed)"
        )


def _as_union(schema: dict[str, Any], *, new: bool) -> dict[str, Any]:
    """A copy, with a ``oneOf`` read as ``anyOf`` where that changes nothing.

    An old ``oneOf`` accepts a subset of its ``anyOf``; a new one is the same as
    an ``anyOf`` when a discriminator (pydantic's tagged unions) keeps its
    branches apart.
    """
    schema = dict(schema)
    tagged = isinstance(schema.get("discriminator"), dict)
    if "oneOf" in schema and "anyOf" not in schema and (tagged or not new):
        schema["anyOf"] = schema.pop("oneOf")
        schema.pop("discriminator", None)
    return schema


def strip_values(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without its enum and const (to tell a widened enum from a same one)."""
    return {k: v for k, v in schema.items() if k not in ("enum", "const")} | {
        "values": sorted(canonical(v).decode() for v in schema.get("enum", [schema.get("const")]))
    }


def _type_set(schema: dict[str, Any]) -> set[str] | None:
    kinds = schema.get("type")
    if kinds is None:
        return None
    return {str(k) for k in kinds} if isinstance(kinds, list) else {str(kinds)}


def _type_covered(kind: str, types: set[str]) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _old_extra(schema: dict[str, Any]) -> Any:
    """What keys beyond the declared ones an older producer could have written."""
    extra = schema.get("additionalProperties", _ABSENT)
    if extra is _ABSENT:
        # A model or TypedDict writes its own fields only; a bare dict anything.
        return "properties" not in schema
    return extra


def _new_extra(schema: dict[str, Any]) -> Any:
    extra = schema.get("additionalProperties", _ABSENT)
    return True if extra is _ABSENT else extra


_Bound = tuple[Decimal, bool]  # (value, exclusive)


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _bound(schema: dict[str, Any], side: str) -> _Bound | None:
    """The tighter of ``minimum``/``exclusiveMinimum`` (or the maximum pair)."""
    exclusive_key = "exclusiveMinimum" if side == "minimum" else "exclusiveMaximum"
    candidates: list[_Bound] = []
    for key, exclusive in ((side, False), (exclusive_key, True)):
        number = _decimal(schema.get(key))
        if number is not None:
            candidates.append((number, exclusive))
    if not candidates:
        return None
    if side == "minimum":
        return max(candidates, key=lambda b: (b[0], b[1]))
    return min(candidates, key=lambda b: (b[0], not b[1]))


def _within(old: _Bound, new: _Bound, side: str) -> bool:
    """Whether every number inside ``old`` is inside ``new``."""
    (old_value, old_exclusive), (new_value, new_exclusive) = old, new
    if old_value == new_value:
        return old_exclusive or not new_exclusive
    return old_value > new_value if side == "minimum" else old_value < new_value


def _show_bound(bound: _Bound) -> str:
    return f"{'exclusive ' if bound[1] else ''}{bound[0]}"


def _divides(step: Any, multiple: Any) -> bool:
    step_value, multiple_value = _decimal(step), _decimal(multiple)
    if not step_value or multiple_value is None:
        return False
    return multiple_value % step_value == 0


def _sizes_known(*sizes: Any) -> bool:
    return all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)


def _gt(a: Any, b: Any) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a > b


def _lt(a: Any, b: Any) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a < b


_JSON_TYPES: Final = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_VALUE_KEYWORDS: Final = frozenset(
    {"type", "enum", "const", "pattern", "minLength", "maxLength", *_NUMERIC}
)


def _value_fits(value: Any, schema: Any) -> bool:
    """Whether one value (of an old enum) is accepted by a plain schema."""
    if _is_any(schema):
        return True
    if not isinstance(schema, dict) or set(schema) - _VALUE_KEYWORDS - {"default"}:
        return False  # anyOf, $ref, ...: not worth proving for an enum value
    types = _type_set(schema)
    if types is not None and not any(_JSON_TYPES.get(t, lambda v: False)(value) for t in types):
        return False
    if "const" in schema and not _same(schema["const"], value):
        return False
    if "enum" in schema and not any(_same(v, value) for v in schema["enum"]):
        return False
    return _number_fits(value, schema) and _text_fits(value, schema)


def _number_fits(value: Any, schema: dict[str, Any]) -> bool:
    number = _decimal(value)
    if number is None:
        return True
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    if low is not None and not (number > low[0] or (number == low[0] and not low[1])):
        return False
    if high is not None and not (number < high[0] or (number == high[0] and not high[1])):
        return False
    step = _decimal(schema.get("multipleOf"))
    return not step or number % step == 0


def _text_fits(value: Any, schema: dict[str, Any]) -> bool:
    if not isinstance(value, str):
        return True
    if schema.get("minLength", 0) > len(value):
        return False
    if "maxLength" in schema and schema["maxLength"] < len(value):
        return False
    pattern = schema.get("pattern")
    if pattern is None:
        return True
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return False
