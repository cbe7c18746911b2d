"""The wire format: one envelope per stored value, optionally signed.

::

    b"VTE" b"1" <header JSON> b"\\n" <body JSON>

``VTE`` is the magic, ``1`` the envelope format number. orjson never writes a
raw newline, so the first ``\\n`` ends the header: a reader gets the task name
and version without parsing the body, and hands the body bytes straight to
pydantic's ``validate_json``. The first byte ``V`` (0x56) can be neither a
pickle (0x80) nor what Huey sniffs as compressed data (0x1f, 0x78).

A signed envelope puts a prefix in front of the same bytes::

    b"VTS" b"1" <key id> b":" <64 hex digits of HMAC-SHA256> <envelope>

The MAC covers every byte of the message but itself: ``VTS1``, the key id, the
colon and the whole envelope. A reader checks it before parsing anything.

Forward compatibility: readers ignore header keys they do not know, so a newer
release can add fields without breaking an older worker. A higher format number
means the framing itself changed; such bytes are refused, never guessed at.

The header keys and the signed form are specified in ``docs/envelope.md``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

import orjson

from ..exceptions import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    EnvelopeTooLarge,
    SignatureError,
)
from . import values as _codec

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SIZE",
    "FORMAT",
    "KIND_TASK",
    "KIND_VALUE",
    "MAC_LEN",
    "MAGIC",
    "MAX_DEPTH_CEILING",
    "MAX_KEY_ID_LEN",
    "MAX_VERSION",
    "MIN_SECRET_BYTES",
    "PREFIX",
    "SIGNED_MAGIC",
    "SIGNED_PREFIX",
    "VALUE_HEADER",
    "Keyring",
    "codec",
    "decode_value_body",
    "frame",
    "json_depth",
    "signed_content",
    "unpack",
]

MAGIC: Final = b"VTE"
FORMAT: Final = b"1"
#: What every unsigned envelope starts with: ``VTE1``.
PREFIX: Final = MAGIC + FORMAT
_PREFIX_LEN: Final = len(PREFIX)

SIGNED_MAGIC: Final = b"VTS"
#: What every signed message starts with: ``VTS1``, then the key id and ``:``.
SIGNED_PREFIX: Final = SIGNED_MAGIC + FORMAT
MAC_LEN: Final = 64  # SHA-256 in lowercase hex
_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
MAX_KEY_ID_LEN: Final = 32
#: The largest task version a header, a declaration or a lock may carry (a
#: 32-bit signed integer, what every consumer of the format can hold).
MAX_VERSION: Final = 2**31 - 1

#: Shortest secret accepted: the SHA-256 output size (RFC 2104 section 3).
MIN_SECRET_BYTES: Final = 32

#: Largest envelope read or written by default: 4 MiB.
DEFAULT_MAX_SIZE: Final = 4 * 1024 * 1024
#: Deepest nesting of JSON arrays and objects by default, in the header and in the body.
DEFAULT_MAX_DEPTH: Final = 128
#: The highest max_depth accepted: pydantic's JSON parser refuses more than 201 levels.
MAX_DEPTH_CEILING: Final = 200

KIND_TASK: Final = "task"
KIND_VALUE: Final = "value"

#: The header of every value envelope (results, revocations, locks, ...).
VALUE_HEADER: Final = orjson.dumps({"kind": KIND_VALUE})

Frame: TypeAlias = Callable[[bytes, bytes], bytes]
Unpack: TypeAlias = Callable[[bytes], tuple[dict[str, Any], bytes]]


# -- keys and MACs --------------------------------------------------------------


class _Key:
    """One secret, ready to compute HMAC-SHA256 (RFC 2104) over ``VTS1 <id> :`` + envelope.

    The padded key's inner and outer SHA-256 states are computed once here, and
    the inner one has already taken in this key's own ``VTS1<id>:`` prefix, so
    a MAC costs two state copies and two short updates. The result is the same
    as ``hmac.digest(secret, prefix + envelope, "sha256")``, at about half its
    cost.
    """

    __slots__ = ("id", "mac", "prefix")

    def __init__(self, key_id: str, secret: bytes) -> None:
        self.id = key_id
        self.prefix = SIGNED_PREFIX + key_id.encode("ascii") + b":"
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\0")
        inner = hashlib.sha256(block.translate(_IPAD))
        inner.update(self.prefix)
        inner_copy = inner.copy
        outer_copy = hashlib.sha256(block.translate(_OPAD)).copy
        hexlify = binascii.hexlify

        def mac(envelope: bytes) -> bytes:
            """The lowercase hex MAC of this key's prefix followed by ``envelope``."""
            state = inner_copy()
            state.update(envelope)
            digest = outer_copy()
            digest.update(state.digest())
            return hexlify(digest.digest())

        self.mac = mac


_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


class Keyring:
    """The secret keys a serializer verifies with, and the one it signs with.

    Args:
        secret_keys: key id -> secret (bytes, or text used as UTF-8), at least
            :data:`MIN_SECRET_BYTES` long. Key ids are 1 to 32 characters of
            ``A-Z a-z 0-9 . _ -``.
        signing_key: the id of the key that signs; may be omitted when only
            one key is listed.

    Raises:
        ConfigurationError: an empty mapping, a bad key id or secret, a
            missing or unknown signing key.
    """

    def __init__(self, secret_keys: Mapping[str, bytes | str], signing_key: str | None) -> None:
        if not isinstance(secret_keys, Mapping) or not secret_keys:
            raise ConfigurationError(
                "secret_keys must be a non-empty mapping of key id to secret, e.g. "
                "{'k1': b'...'}; leave it out (None) to write unsigned envelopes."
            )
        self.keys: dict[bytes, _Key] = {}
        for key_id, secret in secret_keys.items():
            key = _Key(_checked_key_id(key_id), _checked_secret(key_id, secret))
            self.keys[key.prefix[len(SIGNED_PREFIX) : -1]] = key
        self.signing = self.keys[_signing_id(list(secret_keys), signing_key).encode("ascii")]

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every key that verifies, in the order given."""
        return tuple(key.id for key in self.keys.values())

    def sign(self, envelope: bytes) -> bytes:
        """The signed form of ``envelope``, with the signing key."""
        key = self.signing
        return b"%s%s%s" % (key.prefix, key.mac(envelope), envelope)

    def verify(self, raw: bytes) -> bytes:
        """Check the signature of a ``VTS1`` message; return the envelope it signs.

        Raises:
            SignatureError: a malformed prefix, an unknown key id, a MAC that does not match.
        """
        colon = _key_id_end(raw)
        if colon < 0:
            raise SignatureError(
                "Signed message with a malformed prefix (no key id followed by ':'): "
                "truncated or altered; it was not run."
            )
        key = self.keys.get(raw[len(SIGNED_PREFIX) : colon])
        if key is None:
            shown = raw[len(SIGNED_PREFIX) : colon].decode("ascii", "backslashreplace")
            raise SignatureError(
                f"Message signed with key id {shown!r}, which this reader does not list "
                f"(it knows {', '.join(repr(k) for k in self.key_ids)}); it was not run. If "
                f"the key is genuine, add it to secret_keys and replay the dead letter.",
                key_id=shown,
            )
        start = colon + 1 + MAC_LEN
        envelope = raw[start:]
        if not hmac.compare_digest(key.mac(envelope), raw[colon + 1 : start]):
            raise SignatureError(
                f"Signature does not match for key id {key.id!r}: the message was altered "
                f"or truncated, or signed with another secret under that id; it was not run.",
                key_id=key.id,
            )
        return envelope


def _key_id_end(raw: bytes) -> int:
    """Where the key id of a ``VTS1`` message ends (its ``:``), or -1."""
    return raw.find(b":", len(SIGNED_PREFIX), len(SIGNED_PREFIX) + MAX_KEY_ID_LEN + 1)


def signed_content(raw: bytes) -> bytes | None:
    """The envelope a ``VTS1`` message carries, its signature NOT checked (for
    display only), or None when ``raw`` is not a well-formed signed message."""
    colon = _key_id_end(raw) if raw.startswith(SIGNED_PREFIX) else -1
    return raw[colon + 1 + MAC_LEN :] if colon > 0 else None


def _checked_key_id(key_id: Any) -> str:
    if type(key_id) is not str or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"Key id {key_id!r} is not valid: use 1 to 32 characters of A-Z, a-z, 0-9, "
            f"'.', '_' and '-' (for example 'k1' or '2025-06')."
        )
    return key_id


def _checked_secret(key_id: str, secret: Any) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes):
        raise ConfigurationError(
            f"The secret of key {key_id!r} must be bytes or text, not {type(secret).__name__}."
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"The secret of key {key_id!r} is {len(secret)} bytes; signing secrets must be at "
            f"least {MIN_SECRET_BYTES} bytes. Generate one with: "
            f'python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return secret


def _signing_id(key_ids: list[str], signing_key: str | None) -> str:
    if signing_key is None:
        if len(key_ids) == 1:
            return key_ids[0]
        raise ConfigurationError(
            f"secret_keys lists {len(key_ids)} keys ({', '.join(map(repr, key_ids))}); name "
            f"the one that signs with signing_key=, e.g. signing_key={key_ids[0]!r}."
        )
    if signing_key not in key_ids:
        raise ConfigurationError(
            f"signing_key {signing_key!r} is not one of secret_keys "
            f"({', '.join(map(repr, key_ids))}); add its secret or pick a listed key."
        )
    return signing_key


# -- limits -----------------------------------------------------------------------

# A JSON string, left to right. Possessive, and an unterminated one runs to the
# end: the engine never backtracks and never starts again inside a string, so
# the scan stays linear whatever the bytes.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
#: Maps objects' braces to brackets: only the nesting matters.
_AS_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_STEP: Final = [0] * 256
_STEP[ord("[")] = 1
_STEP[ord("]")] = -1
#: Text up to this size gets its exact depth in an error message.
_MEASURED: Final = 1 << 20


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in JSON text (``1`` -> 0, ``[{}]`` -> 2).

    Strings are skipped, so brackets inside them do not count. Malformed text
    gives a number too, never an error: the parser refuses it later. A Python
    loop over the brackets: for error messages, not for every message.
    """
    brackets = _JSON_STRING.sub(b"", data).translate(_AS_BRACKETS, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _exceeds(brackets: bytes, limit: int) -> bool:
    """Whether a string of ``[`` and ``]`` may nest deeper than ``limit``.

    Each pass deletes every empty pair, which lowers the nesting by exactly one
    level, so at most ``limit + 1`` passes decide; a run of as many ``[`` as
    levels are left to exceed decides at once. Every step is C code. Brackets
    that never pair up (malformed text) count as exceeding: the caller measures.
    """
    run = b"[" * (limit + 1)
    for done in range(limit + 1):
        if not brackets:
            return False
        if run[done:] in brackets:
            return True
        paired = brackets.replace(b"[]", b"")
        if len(paired) == len(brackets):
            return True
        brackets = paired
    return bool(brackets)


def _deeper_than(data: bytes, limit: int) -> int:
    """0 when the JSON text ``data`` nests at most ``limit`` levels; else its depth,
    or -1 when it is too large to measure exactly (over 1 MiB).

    Text of ``2 * limit + 1`` bytes or fewer cannot hold ``limit + 1`` nested
    pairs, and text with at most ``limit`` opening brackets cannot either: the
    common cases cost a comparison or a C pass over the bytes.
    """
    if len(data) <= 2 * limit + 1:
        return 0
    brackets = data.translate(_AS_BRACKETS, _NOT_BRACKETS)
    if brackets.count(b"[") <= limit:
        return 0
    # Brackets inside strings were counted too, and could pair up with real
    # ones and hide a level: decide without them.
    data = _JSON_STRING.sub(b"", data)
    if not _exceeds(data.translate(_AS_BRACKETS, _NOT_BRACKETS), limit):
        return 0
    if len(data) > _MEASURED:
        return -1
    depth = json_depth(data)
    # Malformed text whose brackets do not pair up may still be shallow: the
    # parser then names what is wrong with it.
    return depth if depth > limit else 0


def _nesting(part: str, depth: int, limit: int) -> str:
    levels = f"{depth} levels deep" if depth > 0 else "deeper"
    return f"{part} nests {levels}, more than max_depth ({limit})"


def _watch(max_size: int, max_depth: int) -> int:
    """The length above which an envelope's size or depth needs a look.

    Valid JSON nested deeper than ``max_depth`` holds ``max_depth + 1`` pairs
    of brackets; a header and a body both shorter than that fit in this many
    bytes with the five of ``VTE1`` and the newline. Below it (the common small
    message) the limits cost one comparison.
    """
    return min(max_size, 2 * max_depth + 1 + _PREFIX_LEN + 1)


def _check_written(out: bytes, header: bytes, body: bytes, max_size: int, max_depth: int) -> None:
    """Raise for an envelope about to be written that a reader would refuse."""
    if len(out) > max_size:
        task, version = _subject(header)
        raise EnvelopeTooLarge(task=task, version=version, size=len(out), limit=max_size)
    for part, data in (("header", header), ("body", body)):
        depth = _deeper_than(data, max_depth)
        if depth:
            task, version = _subject(header)
            subject = f"Task {task!r}" if task else "A stored value"
            subject += f" version {version}" if version is not None else ""
            raise EncodeError(
                f"{subject}: the envelope {_nesting(part, depth, max_depth)}; nothing was "
                f"written. Flatten the data, or raise max_depth (at most {MAX_DEPTH_CEILING}) "
                f"on every producer and worker."
            )


def _size_error(size: int, limit: int) -> DecodeError:
    return DecodeError(
        f"Message of {size:,} bytes is larger than max_size ({limit:,} bytes): not read. "
        f"Raise max_size on this reader's VersionedSerializer, then replay it."
    )


def _subject(header: bytes) -> tuple[str | None, int | None]:
    """The task name and version in a header about to be written, for error messages."""
    try:
        parsed = orjson.loads(header)
    except orjson.JSONDecodeError:
        return None, None
    if type(parsed) is not dict:
        return None, None
    task, version = parsed.get("task"), parsed.get("v")
    return (
        task if type(task) is str else None,
        version if type(version) is int else None,
    )


# -- framing ----------------------------------------------------------------------


def codec(
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    keyring: Keyring | None = None,
    accept_unsigned: bool = False,
) -> tuple[Frame, Unpack]:
    """A ``frame`` and an ``unpack`` function for one serializer's limits and keys.

    ``frame(header, body)`` builds (and, with a keyring, signs) envelope bytes
    from header JSON and body JSON, raising :class:`EnvelopeTooLarge` or
    ``EncodeError`` for what a reader would refuse. ``unpack(raw)`` checks the
    size and the signature (depth is left to the parsers), and returns the parsed header and the
    body bytes, raising :class:`DecodeError` (:class:`SignatureError` for
    signatures).
    """
    unpack = _unpacker(max_size)
    if keyring is None:
        return _framer(max_size, max_depth), unpack
    return (
        _signing_framer(max_size, max_depth, keyring),
        _verifier(unpack, max_size, keyring, accept_unsigned),
    )


def _framer(max_size: int, max_depth: int) -> Frame:
    watch = _watch(max_size, max_depth)

    def frame(header: bytes, body: bytes) -> bytes:
        """Frame header JSON bytes and body JSON bytes into envelope bytes."""
        out = b"%s%s\n%s" % (PREFIX, header, body)
        if len(out) > watch:
            _check_written(out, header, body, max_size, max_depth)
        return out

    return frame


def _signing_framer(max_size: int, max_depth: int, keyring: Keyring) -> Frame:
    prefix, mac = keyring.signing.prefix, keyring.signing.mac
    # The signature adds a fixed number of bytes in front of the envelope.
    watch = _watch(max_size - len(prefix) - MAC_LEN, max_depth)
    join = b"".join

    def frame(header: bytes, body: bytes) -> bytes:
        """Frame header JSON bytes and body JSON bytes into signed envelope bytes."""
        envelope = b"%s%s\n%s" % (PREFIX, header, body)
        out = join((prefix, mac(envelope), envelope))
        if len(envelope) > watch:
            _check_written(out, header, body, max_size, max_depth)
        return out

    return frame


def _unpacker(max_size: int) -> Unpack:
    def unpack(raw: bytes) -> tuple[dict[str, Any], bytes]:
        """Split envelope bytes into the parsed header and the body bytes.

        Raises:
            DecodeError: anything that is not a well-formed envelope within the
                limits (SignatureError for a signed one this reader cannot check).
        """
        if type(raw) is not bytes:
            raw = bytes(raw)
        if raw[:_PREFIX_LEN] != PREFIX:
            raise _foreign(raw)
        # Depth is left to the parsers, which refuse what nests deeper than they
        # read (orjson 1024 levels, pydantic 200): a scan here would cost every
        # message a pass over its bytes. Writers keep to max_depth.
        if len(raw) > max_size:
            raise _size_error(len(raw), max_size)
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

    return unpack


def _verifier(envelope: Unpack, max_size: int, keyring: Keyring, accept_unsigned: bool) -> Unpack:
    macs = {key_id: key.mac for key_id, key in keyring.keys.items()}
    compare = hmac.compare_digest
    after_id = len(SIGNED_PREFIX) + MAX_KEY_ID_LEN + 1

    def unpack(raw: bytes) -> tuple[dict[str, Any], bytes]:
        """Check the signature, then split the envelope into its header and body bytes.

        Raises:
            SignatureError: a missing, malformed or wrong signature, or an unknown key id.
            DecodeError: anything else that is not a well-formed envelope within the limits.
        """
        if type(raw) is not bytes:
            raw = bytes(raw)
        # The hot path, inline: a well-formed message signed with a listed key.
        # Everything else goes to refuse(), which names what is wrong.
        if raw[:_PREFIX_LEN] == SIGNED_PREFIX and len(raw) <= max_size:
            colon = raw.find(b":", _PREFIX_LEN, after_id)
            mac = macs.get(raw[_PREFIX_LEN:colon]) if colon > 0 else None
            if mac is not None:
                start = colon + 1 + MAC_LEN
                signed = raw[start:]
                if compare(mac(signed), raw[colon + 1 : start]):
                    try:
                        return envelope(signed)
                    except SignatureError:  # VTS1 inside VTS1: never written
                        raise DecodeError(
                            "Signed message whose content is another signed message, not "
                            "an envelope."
                        ) from None
        return refuse(raw)

    def refuse(raw: bytes) -> tuple[dict[str, Any], bytes]:
        prefix = raw[:_PREFIX_LEN]
        if prefix == SIGNED_PREFIX:
            if len(raw) > max_size:  # refused before a MAC is spent on it
                raise _size_error(len(raw), max_size)
            # verify() raises: every good signature took the path above.
            signed = keyring.verify(raw)
            raise DecodeError(f"Signed message, but {_describe_foreign(signed)}")
        if prefix != PREFIX:
            raise DecodeError(_describe_foreign(raw))
        if accept_unsigned:
            return envelope(raw)
        raise SignatureError(
            "Unsigned envelope, but this reader requires signatures (secret_keys is set); "
            "it was not run. Sign on every producer with the same secret_keys, or pass "
            "accept_unsigned=True while a live queue switches to signing."
        )

    return unpack


def _foreign(raw: bytes) -> DecodeError:
    """The error for bytes that are not an unsigned envelope, read without keys."""
    if raw[: len(SIGNED_PREFIX)] == SIGNED_PREFIX:
        colon = _key_id_end(raw)
        named = raw[len(SIGNED_PREFIX) : colon].decode("ascii", "replace") if colon > 0 else None
        return SignatureError(
            f"Signed envelope{f' (key id {named!r})' if named else ''}, but this reader has "
            f"no secret_keys; it was not run. Configure the producers' secret_keys on it "
            f"(VersionedSerializer(secret_keys=..., signing_key=...) or "
            f"VersionedSerializer.from_env()), then replay it.",
            key_id=named,
        )
    return DecodeError(_describe_foreign(raw))


frame, unpack = codec()


def _describe_foreign(raw: bytes) -> str:
    if not raw:
        return "Empty message: not an envelope."
    if raw[:1] == b"\x80":
        return "Legacy pickle data (starts with 0x80): never unpickled; not an envelope."
    if raw[:1] in (b"\x1f", b"\x78"):
        return "Compressed data (gzip/zlib header): not an envelope."
    if raw[: len(MAGIC)] in (MAGIC, SIGNED_MAGIC):
        fmt = raw[len(MAGIC) : len(MAGIC) + 1]
        return (
            f"Envelope format {fmt!r} is not understood by this release (it reads "
            f"format {FORMAT!r}); upgrade versioned_tasks on this worker."
        )
    return f"Not an envelope: unknown leading bytes {raw[:8]!r}."


def decode_value_body(body: bytes) -> Any:
    """Decode the body of a value envelope."""
    try:
        return _codec.decode(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"Envelope body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise DecodeError("Envelope body is nested too deeply to decode.") from None
