"""``VersionedSerializer``: Huey's serializer seam, JSON envelopes instead of pickle."""

from __future__ import annotations

from typing import Any

from huey.registry import Message
from huey.serializer import Serializer

from . import _envelope, _pipeline
from .exceptions import DecodeError

__all__ = ["VersionedSerializer"]


class VersionedSerializer(Serializer):  # type: ignore[misc]
    """Writes every value Huey stores as a JSON envelope and never unpickles.

    ``VersionedHuey`` uses it by default. On a plain Huey it replaces pickle for
    task messages (arguments travel positionally, tagged where JSON cannot say
    the type), results, revocations, locks and chord partials::

        huey = SqliteHuey("app", serializer=VersionedSerializer())

    Compression options do not apply: Huey ignores ``compression=`` when a
    serializer is given.
    """

    def __init__(self) -> None:
        super().__init__()

    def __repr__(self) -> str:
        return "VersionedSerializer()"

    # -- framing, shared with VersionedHuey's task pipeline -------------------

    def pack(self, header: dict[str, Any], body: bytes) -> bytes:
        """Frame a header and a JSON body into envelope bytes."""
        return _envelope.pack(header, body)

    #: Frame header JSON bytes and body JSON bytes into envelope bytes.
    frame = staticmethod(_envelope.frame)

    #: Split envelope bytes into the parsed header and the body bytes; raises
    #: DecodeError for anything that is not a well-formed envelope.
    unpack = staticmethod(_envelope.unpack)

    # -- Huey's serializer interface ------------------------------------------

    def serialize(self, data: Any) -> bytes:
        """Encode a Huey ``Message`` or any stored value.

        Raises:
            EncodeError: naming the path to a value JSON cannot carry.
        """
        if isinstance(data, Message):
            return self.pack(*_pipeline.message_to_envelope(data))
        return _envelope.encode_value(data)

    def deserialize(self, data: bytes) -> Any:
        """Decode envelope bytes back into a ``Message`` or a value.

        Raises:
            DecodeError: for anything that is not an envelope (pickle included).
        """
        header, body = self.unpack(data)
        kind = header.get("kind")
        if kind == _envelope.KIND_VALUE:
            return _envelope.decode_value_body(body)
        if kind == _envelope.KIND_TASK:
            return _pipeline.message_from_envelope(header, body)
        raise DecodeError(f"Envelope of unknown kind {kind!r}.")
