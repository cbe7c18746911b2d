"""``VersionedSerializer``: Huey's serializer seam, JSON envelopes instead of pickle."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import orjson
from huey.registry import Message
from huey.serializer import Serializer

from ..exceptions import ConfigurationError, DecodeError, EncodeError
from ..messages import readwrite as _pipeline
from ..wire import envelope as _envelope
from ..wire import values as _codec

__all__ = ["ENV_SECRET_KEYS", "ENV_SIGNING_KEY", "VersionedSerializer"]

#: The environment variable :meth:`VersionedSerializer.from_env` reads the keys from.
ENV_SECRET_KEYS: Final = "VERSIONED_TASKS_SECRET_KEYS"
#: The environment variable naming the key that signs (needed with several keys).
ENV_SIGNING_KEY: Final = "VERSIONED_TASKS_SIGNING_KEY"


class VersionedSerializer(Serializer):  # type: ignore[misc]
    """Writes every value Huey stores as a JSON envelope and never unpickles.

    ``VersionedHuey`` uses it by default. On a plain Huey it replaces pickle for
    task messages (arguments travel positionally, tagged where JSON cannot say
    the type), results, revocations, locks and chord partials::

        huey = SqliteHuey("app", serializer=VersionedSerializer())

    With ``secret_keys``, every envelope it writes is signed with HMAC-SHA256
    under ``signing_key``, and every envelope it reads must carry a valid
    signature from one of the listed keys (see ``docs/signing.md``).

    Args:
        compression: Huey's option, accepted so that Huey can build this class
            itself (``Huey(compression=False)``); envelopes are never
            compressed, so a true value raises ``ConfigurationError``.
        compression_level: Huey's option; ignored.
        use_zlib: Huey's option; ignored (it only matters with compression).
        secret_keys: key id -> secret (bytes, or text used as UTF-8), each at
            least 32 bytes. None (the default) writes unsigned envelopes and
            refuses signed ones.
        signing_key: the id of the key that signs; may be omitted when
            ``secret_keys`` lists one key.
        accept_unsigned: with ``secret_keys``, also read unsigned envelopes;
            for the switch of a live queue to signing only.
        max_size: the largest envelope written or read, in bytes.
        max_depth: the deepest nesting of JSON arrays and objects written or
            read, in the header and in the body (1 to 200).

    Raises:
        ConfigurationError: compression, a key too short or badly named, a
            missing or unknown signing key, a limit out of range.
    """

    def __init__(
        self,
        # Positional, as Huey passes them: Huey.__init__ calls
        # Serializer(compression, use_zlib=use_zlib) when given no serializer.
        compression: bool = False,
        compression_level: int = 6,
        use_zlib: bool = False,
        *,
        secret_keys: Mapping[str, bytes | str] | None = None,
        signing_key: str | None = None,
        accept_unsigned: bool = False,
        max_size: int = _envelope.DEFAULT_MAX_SIZE,
        max_depth: int = _envelope.DEFAULT_MAX_DEPTH,
    ) -> None:
        if compression:
            raise ConfigurationError(
                "VersionedSerializer does not compress: envelopes are JSON that a reader "
                "must recognise from their first bytes. Pass compression=False (or leave it out)."
            )
        super().__init__()
        self.max_size = _checked_limit("max_size", max_size, 1024, None)
        self.max_depth = _checked_limit("max_depth", max_depth, 1, _envelope.MAX_DEPTH_CEILING)
        if secret_keys is None:
            if signing_key is not None or accept_unsigned:
                raise ConfigurationError(
                    "signing_key= and accept_unsigned= need secret_keys=; pass the keys too, "
                    "or use VersionedSerializer.from_env()."
                )
            self._keyring: _envelope.Keyring | None = None
        else:
            self._keyring = _envelope.Keyring(secret_keys, signing_key)
        self.accept_unsigned = bool(accept_unsigned)
        # What __reduce__ rebuilds the serializer from: frame and unpack are closures.
        self._options: dict[str, Any] = {
            "secret_keys": dict(secret_keys) if secret_keys is not None else None,
            "signing_key": self.signing_key,
            "accept_unsigned": self.accept_unsigned,
            "max_size": self.max_size,
            "max_depth": self.max_depth,
        }
        self.frame, self.unpack = _envelope.codec(
            max_size=self.max_size,
            max_depth=self.max_depth,
            keyring=self._keyring,
            accept_unsigned=self.accept_unsigned,
        )
        self.frame_deep = _envelope.codec(
            max_size=self.max_size,
            max_depth=_envelope.MAX_DEPTH_CEILING,
            keyring=self._keyring,
            accept_unsigned=self.accept_unsigned,
        )[0]

    #: Frame header JSON bytes and body JSON bytes into envelope bytes (signed
    #: when keys are configured); raises EnvelopeTooLarge or EncodeError for
    #: what a reader would refuse.
    frame: _envelope.Frame

    #: ``frame`` with max_depth at its ceiling: what a worker writes to keep a
    #: message it cannot write within its own max_depth (as a dead letter).
    frame_deep: _envelope.Frame

    #: Split envelope bytes into the parsed header and the body bytes; raises
    #: DecodeError for anything that is not a well-formed envelope within the
    #: limits, and SignatureError for a missing, wrong or unknown signature.
    unpack: _envelope.Unpack

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        accept_unsigned: bool = False,
        max_size: int = _envelope.DEFAULT_MAX_SIZE,
        max_depth: int = _envelope.DEFAULT_MAX_DEPTH,
    ) -> VersionedSerializer:
        """A signing serializer whose keys come from the environment.

        ``VERSIONED_TASKS_SECRET_KEYS`` lists the keys as ``id:secret`` pairs
        separated by commas (``k2:…,k1:…``); ``VERSIONED_TASKS_SIGNING_KEY``
        names the one that signs, and may be left unset when there is one key.

        Args:
            environ: where to read the variables (default ``os.environ``).
            accept_unsigned: as for the constructor.
            max_size: as for the constructor.
            max_depth: as for the constructor.

        Raises:
            ConfigurationError: the variable is unset or malformed, or a key is
                refused (the message never shows a secret).
        """
        env = os.environ if environ is None else environ
        text = env.get(ENV_SECRET_KEYS, "").strip()
        if not text:
            raise ConfigurationError(
                f"{ENV_SECRET_KEYS} is not set; set it to 'key-id:secret' pairs separated by "
                f"commas (e.g. k1:<43 characters from secrets.token_urlsafe(32)>), or build "
                f"VersionedSerializer() without keys."
            )
        return cls(
            secret_keys=_parse_keys(text),
            signing_key=env.get(ENV_SIGNING_KEY, "").strip() or None,
            accept_unsigned=accept_unsigned,
            max_size=max_size,
            max_depth=max_depth,
        )

    @property
    def signing_key(self) -> str | None:
        """The id of the key that signs, or None when envelopes are unsigned."""
        return self._keyring.signing.id if self._keyring is not None else None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys a signature is checked against (empty when unsigned)."""
        return self._keyring.key_ids if self._keyring is not None else ()

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._options)

    def __repr__(self) -> str:
        options = []
        if self._keyring is not None:
            options.append(f"key_ids={self.key_ids!r}, signing_key={self.signing_key!r}")
            if self.accept_unsigned:
                options.append("accept_unsigned=True")
        if self.max_size != _envelope.DEFAULT_MAX_SIZE:
            options.append(f"max_size={self.max_size}")
        if self.max_depth != _envelope.DEFAULT_MAX_DEPTH:
            options.append(f"max_depth={self.max_depth}")
        return f"VersionedSerializer({', '.join(options)})"

    # -- framing, shared with VersionedHuey's task pipeline -------------------

    def pack(self, header: dict[str, Any], body: bytes) -> bytes:
        """Frame a header and a JSON body into envelope bytes."""
        return self.frame(orjson.dumps(header), body)

    # -- Huey's serializer interface ------------------------------------------

    def serialize(self, data: Any) -> bytes:
        """Encode a Huey ``Message`` or any stored value.

        Raises:
            EncodeError: naming the path to a value JSON cannot carry.
            EnvelopeTooLarge: the envelope would be larger than ``max_size``.
        """
        if isinstance(data, Message):
            return self.pack(*_pipeline.message_to_envelope(data))
        encoded = _codec.encode(data, "value")
        try:
            body = orjson.dumps(encoded)
        except orjson.JSONEncodeError as exc:  # nesting past orjson's own limit
            raise EncodeError(
                f"A stored value cannot be written as JSON ({exc}); flatten it.", path="value"
            ) from None
        return self.frame(_envelope.VALUE_HEADER, body)

    def deserialize(self, data: bytes) -> Any:
        """Decode envelope bytes back into a ``Message`` or a value.

        Raises:
            DecodeError: for anything that is not an envelope (pickle included).
            SignatureError: a signature missing, wrong or of an unknown key.
        """
        header, body = self.unpack(data)
        kind = header.get("kind")
        if kind == _envelope.KIND_VALUE:
            return _envelope.decode_value_body(body)
        if kind == _envelope.KIND_TASK:
            return _pipeline.message_from_envelope(header, body)
        raise DecodeError(f"Envelope of unknown kind {kind!r}.")


def _rebuild(cls: type[VersionedSerializer], options: dict[str, Any]) -> VersionedSerializer:
    """Unpickle a serializer: build it again from its options."""
    return cls(**options)


def _checked_limit(name: str, value: Any, low: int, high: int | None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"{name} must be an integer {bounds}, not {value!r}.")
    return value


def _parse_keys(text: str) -> dict[str, str]:
    """``id:secret,id:secret`` -> {id: secret}; errors name the entry, never the secret."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        key_id, sep, secret = entry.strip().partition(":")
        if not sep or not key_id or not secret:
            raise ConfigurationError(
                f"{ENV_SECRET_KEYS}: entry {number} is not 'key-id:secret'; separate the "
                f"pairs with commas (secrets cannot contain a comma)."
            )
        if key_id in keys:
            raise ConfigurationError(f"{ENV_SECRET_KEYS}: key id {key_id!r} is listed twice.")
        keys[key_id] = secret
    return keys
