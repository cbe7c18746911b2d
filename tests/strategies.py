"""Hypothesis strategies for values, envelopes, byte-level damage and upcaster chains.

- ``json_values``: what a JSON document can hold (no NaN, 64-bit integers).
- ``codec_values``: everything the value codec promises to bring back as it
  went in: tuples, sets, datetimes, bytes, UUIDs, Decimals, dicts with
  non-string or tag-like keys, nested in lists, tuples and dicts.
- ``mutated_envelopes(valid)``: a valid envelope damaged in one or more ways
  (bytes flipped, inserted, deleted, truncated; header values replaced,
  dropped or retyped; version numbers changed) or plain arbitrary bytes.
- ``chains()``: the fields of a task at version 1 and a list of steps, each
  adding or renaming one field (the upcaster from version k is step k).
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "FIXED_OFFSETS",
    "HEADER_KEYS",
    "INT64",
    "SCHEDULING_VALUES",
    "TAG_LIKE_KEYS",
    "Step",
    "chains",
    "codec_values",
    "datetimes",
    "frame",
    "json_values",
    "mutated_envelopes",
    "same",
    "split",
]

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SAFE_TEXT = st.text(max_size=12)

# -- JSON and codec values -------------------------------------------------------

json_scalars = st.none() | st.booleans() | INT64 | FINITE_FLOATS | SAFE_TEXT

json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)

FIXED_OFFSETS = st.sampled_from(
    [
        None,
        datetime.UTC,
        datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
        datetime.timezone(-datetime.timedelta(hours=8)),
    ]
)

datetimes = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
    ),
    FIXED_OFFSETS,
)

decimals = st.decimals(allow_nan=False, allow_infinity=False)

#: Tag-looking keys: a plain dict with one of these as its only key must not
#: be mistaken for a tagged value.
TAG_LIKE_KEYS = st.sampled_from(
    ["$tuple", "$datetime", "$set", "$dict", "$bytes", "$error", "$unknown", "$", "$$"]
)

hashable_scalars = (
    st.none()
    | st.booleans()
    | INT64
    | FINITE_FLOATS
    | SAFE_TEXT
    | st.binary(max_size=8)
    | st.uuids()
    | st.dates()
    | datetimes
    | decimals
)

hashables = st.recursive(
    hashable_scalars,
    lambda children: (
        st.lists(children, max_size=3).map(tuple) | st.frozensets(children, max_size=3)
    ),
    max_leaves=6,
)

codec_scalars = (
    hashable_scalars
    | st.times()
    | st.timedeltas()
    | st.sets(hashable_scalars, max_size=4)
    | st.frozensets(hashable_scalars, max_size=4)
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(SAFE_TEXT, children, max_size=4)
        | st.dictionaries(hashables, children, max_size=3)
        | st.builds(lambda k, v: {k: v}, TAG_LIKE_KEYS, children)
        | st.sets(hashables, max_size=3)
    )


codec_values = st.recursive(codec_scalars, _containers, max_leaves=16)


def same(a: Any, b: Any) -> bool:
    """Equality that also insists on the same types (``True`` is not ``1``,
    a tuple is not a list), recursively through containers."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, datetime.datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


# -- envelope damage --------------------------------------------------------------

#: Header keys a reader looks at; mutations favour them over random names.
HEADER_KEYS = (
    "kind",
    "task",
    "v",
    "id",
    "at",
    "by",
    "form",
    "params",
    "eta",
    "retries",
    "retry_delay",
    "retry_backoff",
    "priority",
    "timeout",
    "expires",
    "expires_resolved",
    "on_complete",
    "on_error",
    "chord",
)

#: Values of every JSON type, and some that are well-typed but out of range.
odd_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            0,
            -1,
            1,
            2,
            3,
            99,
            2**53,
            1.5,
            "",
            "task",
            "value",
            "positional",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+05:00",
            "not a date",
            [],
            {},
            {"$tuple": [1]},
            {"$datetime": "nope"},
            {"task": "x"},
        ]
    ),
)

#: Well-formed but odd values for the scheduling fields: the types a reader
#: checks are right, the values are at the edges.
ISO_DATETIMES = st.sampled_from(
    [
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00+05:00",
        "2024-01-01T00:00:00Z",
        "2024-01-01",
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59.999999",
        "2100-01-01T00:00:00-12:00",
    ]
)
SCHEDULING_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "eta": ISO_DATETIMES,
    "expires_resolved": ISO_DATETIMES,
    "retries": st.sampled_from([-1, 0, 1, 5, 10**6, 2**63 - 1]),
    "retry_delay": st.sampled_from([-5, 0, 0.001, 1.5, 1e9, 1e308]),
    "retry_backoff": st.sampled_from([-1, 0, 0.5, 2, 1e308]),
    "priority": st.sampled_from([-(2**63), -1, 0, 1.5, 2**63 - 1]),
    "timeout": st.sampled_from([-1, 0, 0.001, 1e308]),
    "expires": st.sampled_from(
        [
            -1,
            0,
            1e12,
            {"$timedelta": [-1, 0, 0]},
            {"$timedelta": [999999999, 0, 0]},
            {"$datetime": "2024-01-01T00:00:00+05:00"},
            {"$datetime": "2000-01-01T00:00:00"},
            {"$date": "2024-01-01"},
        ]
    ),
    "at": st.sampled_from([-1, 0, 1e308, -1e308, "x"]),
    "chord": st.fixed_dictionaries(
        {
            "cid": st.sampled_from(["c", ""]),
            "size": st.sampled_from([0, 1, 2, -1]),
            "idx": st.sampled_from([0, 1, 5, -1]),
            "callback": st.sampled_from(
                [None, {"task": "fuzz.send", "id": "cb", "args": [], "kwargs": {}}]
            ),
        }
    ),
}

Mutation = Callable[[bytes], bytes]


def split(raw: bytes) -> tuple[dict[str, Any], bytes] | None:
    """Header and body of bytes that still frame as an envelope, else None."""
    end = raw.find(b"\n")
    if not raw.startswith(b"VTE1") or end < 0:
        return None
    try:
        header = json.loads(raw[4:end])
    except ValueError:
        return None
    if type(header) is not dict:
        return None
    return header, raw[end + 1 :]


def frame(header: dict[str, Any], body: bytes) -> bytes:
    return b"VTE1" + json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


@st.composite
def _byte_mutation(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]))
    where = draw(st.floats(min_value=0, max_value=1))
    byte = draw(st.integers(0, 255))
    count = draw(st.integers(1, 4))

    def apply(raw: bytes) -> bytes:
        i = int(where * len(raw))
        if kind == "flip":
            if not raw:
                return raw
            i = min(i, len(raw) - 1)
            return raw[:i] + bytes([raw[i] ^ (byte or 1)]) + raw[i + 1 :]
        if kind == "insert":
            return raw[:i] + bytes([byte]) * count + raw[i:]
        if kind == "delete":
            return raw[:i] + raw[i + count :]
        if kind == "truncate":
            return raw[:i]
        return raw[:i] + bytes([byte]) + raw[i + 1 :]

    return apply


@st.composite
def _header_mutation(draw: st.DrawFn, task_names: Sequence[str]) -> Mutation:
    kind = draw(
        st.sampled_from(
            [
                "set",
                "drop",
                "retype",
                "version",
                "version",
                "task",
                "task",
                "nested",
                "edge",
                "edge",
            ]
        )
    )
    edge_key = draw(st.sampled_from(sorted(SCHEDULING_VALUES)))
    edge_value = draw(SCHEDULING_VALUES[edge_key])
    key = draw(st.sampled_from(HEADER_KEYS) | SAFE_TEXT)
    value = draw(odd_values)
    version = draw(st.sampled_from([None, -1, 0, 1, 1, 2, 3, 3, 4, 1000, True, 1.0, "2"]))
    name = draw(st.sampled_from([*task_names, "", "nope.missing"]) | SAFE_TEXT)
    draw_old = draw(st.booleans())

    def apply(raw: bytes) -> bytes:
        parts = split(raw)
        if parts is None:
            return raw
        header, body = parts
        if kind == "set":
            header[key] = value
        elif kind == "drop":
            header.pop(key, None)
        elif kind == "retype":
            if key in header:
                header[key] = _retype(header[key])
        elif kind == "version":
            header["v"] = version
            if draw_old:
                header["at"] = 0
        elif kind == "task":
            header["task"] = name
        elif kind == "edge":
            header[edge_key] = edge_value
        else:
            header[key] = {"task": name, "v": version, "id": "x", "args": value}
        return frame(header, body)

    return apply


@st.composite
def _body_mutation(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["replace", "set", "drop"]))
    value = draw(odd_values)
    key = draw(st.sampled_from(["a", "b", "when", "items", "args", "kwargs"]) | SAFE_TEXT)

    def apply(raw: bytes) -> bytes:
        parts = split(raw)
        if parts is None:
            return raw
        header, body = parts
        if kind == "replace":
            return frame(header, json.dumps(value).encode())
        try:
            payload = json.loads(body)
        except ValueError:
            return raw
        if type(payload) is not dict:
            return raw
        if kind == "set":
            payload[key] = value
        else:
            payload.pop(key, None)
        return frame(header, json.dumps(payload).encode())

    return apply


def _retype(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, str):
        return {"s": value}
    if isinstance(value, list):
        return {"list": value}
    if isinstance(value, dict):
        return list(value.items())
    return 0


def mutated_envelopes(
    valid: st.SearchStrategy[bytes], task_names: Sequence[str] = ()
) -> st.SearchStrategy[bytes]:
    """Valid envelopes, damaged, retargeted or with odd scheduling values, or arbitrary bytes.

    Header mutations are drawn most often: they keep the framing intact and
    so reach the later stages of the read pipeline (renames, tombstones,
    upcasting, newer versions, validation, scheduling fields, callbacks).
    """
    header = _header_mutation(task_names)
    mutation = st.one_of(header, header, header, _body_mutation(), _byte_mutation())

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        raw = draw(valid)
        for apply in draw(st.lists(mutation, min_size=1, max_size=3)):
            raw = apply(raw)
        return raw

    @st.composite
    def retargeted(draw: st.DrawFn) -> bytes:
        # Well-formed, but naming another (renamed, retired, unknown) task or
        # another (older, newer, absent) version, possibly long ago.
        raw = draw(valid)
        parts = split(raw)
        assert parts is not None
        header, body = parts
        header["task"] = draw(st.sampled_from(task_names) if task_names else SAFE_TEXT)
        version = draw(st.sampled_from([None, 1, 2, 3]))
        if version is None:
            header.pop("v", None)
        else:
            header["v"] = version
        if draw(st.booleans()):
            header["at"] = 0
        if draw(st.booleans()):
            header.pop("form", None)
        return frame(header, body)

    @st.composite
    def edged(draw: st.DrawFn) -> bytes:
        # Well-formed, with scheduling fields of the right type at odd values.
        raw = draw(valid)
        parts = split(raw)
        assert parts is not None
        header, body = parts
        for key in draw(st.sets(st.sampled_from(sorted(SCHEDULING_VALUES)), min_size=1)):
            header[key] = draw(SCHEDULING_VALUES[key])
        return frame(header, body)

    arbitrary = st.binary(max_size=64) | st.binary(max_size=32).map(lambda b: b"VTE1" + b)
    return st.one_of(damaged(), damaged(), retargeted(), edged(), valid, arbitrary)


# -- upcaster chains ---------------------------------------------------------------

Step = tuple[str, str, Any]  # ("add", field, value) | ("rename", old, new)


@st.composite
def chains(draw: st.DrawFn) -> tuple[dict[str, Any], list[Step]]:
    """Start fields (at v1) and a list of steps, each adding or renaming a field."""
    counter = iter(range(1000))
    start = {
        f"f{next(counter)}": draw(st.integers(-100, 100)) for _ in range(draw(st.integers(1, 3)))
    }
    fields = list(start)
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 6))):
        if fields and draw(st.booleans()):
            old = draw(st.sampled_from(fields))
            new = f"f{next(counter)}"
            fields[fields.index(old)] = new
            steps.append(("rename", old, new))
        else:
            new = f"f{next(counter)}"
            fields.append(new)
            steps.append(("add", new, draw(st.integers(-100, 100) | st.text(max_size=5))))
    return start, steps
