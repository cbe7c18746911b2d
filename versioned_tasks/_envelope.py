"""The wire format: one envelope per stored value.

::

    b"VTE" b"1" <header JSON> b"\\n" <body JSON>

``VTE`` is the magic, ``1`` the envelope format number. orjson never writes a
raw newline, so the first ``\\n`` ends the header: a reader gets the task name
and version without parsing the body, and hands the body bytes straight to
pydantic's ``validate_json``. The first byte ``V`` (0x56) can be neither a
pickle (0x80) nor what Huey sniffs as compressed data (0x1f, 0x78).

Forward compatibility: readers ignore header keys they do not know, so a newer
release can add fields without breaking an older worker. A higher format number
means the framing itself changed; such bytes are refused, never guessed at.

The header keys are listed in ``docs/envelope.md``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from . import _codec
from .exceptions import DecodeError

__all__ = [
    "FORMAT",
    "KIND_TASK",
    "KIND_VALUE",
    "MAGIC",
    "decode_value_body",
    "encode_value",
    "frame",
    "pack",
    "unpack",
]

MAGIC: Final = b"VTE"
FORMAT: Final = b"1"
_PREFIX: Final = MAGIC + FORMAT
_PREFIX_LEN: Final = len(_PREFIX)

KIND_TASK: Final = "task"
KIND_VALUE: Final = "value"

_VALUE_HEADER: Final = orjson.dumps({"kind": KIND_VALUE})


def pack(header: dict[str, Any], body: bytes) -> bytes:
    """Frame a header and an already-encoded JSON body into an envelope."""
    return frame(orjson.dumps(header), body)


def frame(header: bytes, body: bytes) -> bytes:
    """Frame header JSON bytes and body JSON bytes into an envelope."""
    return b"%s%s\n%s" % (_PREFIX, header, body)


def unpack(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Split an envelope into its parsed header and its raw body bytes.

    Raises:
        DecodeError: for anything that is not a well-formed envelope.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    if raw[:_PREFIX_LEN] != _PREFIX:
        raise DecodeError(_describe_foreign(raw))
    # The prefix holds no newline, so the first one ends the header.
    end = raw.find(b"\n")
    if end < 0:
        raise DecodeError("Truncated envelope: no end of header.")
    try:
        header = orjson.loads(raw[_PREFIX_LEN:end])
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"Envelope header is not valid JSON: {exc}.") from None
    if type(header) is not dict:
        raise DecodeError("Envelope header is not a JSON object.")
    return header, raw[end + 1 :]


def _describe_foreign(raw: bytes) -> str:
    if not raw:
        return "Empty message: not an envelope."
    if raw[:1] == b"\x80":
        return "Legacy pickle data (starts with 0x80): never unpickled; not an envelope."
    if raw[:1] in (b"\x1f", b"\x78"):
        return "Compressed data (gzip/zlib header): not an envelope."
    if raw[: len(MAGIC)] == MAGIC:
        fmt = raw[len(MAGIC) : len(MAGIC) + 1]
        return (
            f"Envelope format {fmt!r} is not understood by this release (it reads "
            f"format {FORMAT!r}); upgrade versioned_tasks on this worker."
        )
    return f"Not an envelope: unknown leading bytes {raw[:8]!r}."


def encode_value(value: Any, path: str = "value") -> bytes:
    """Encode a plain value (a result, a revocation record, ...) as an envelope."""
    body = orjson.dumps(_codec.encode(value, path))
    return b"".join((_PREFIX, _VALUE_HEADER, b"\n", body))


def decode_value_body(body: bytes) -> Any:
    """Decode the body of a value envelope."""
    try:
        return _codec.decode(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"Envelope body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise DecodeError("Envelope body is nested too deeply to decode.") from None
