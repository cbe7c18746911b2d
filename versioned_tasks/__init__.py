"""Typed, versioned Huey tasks whose old messages are migrated, redirected or
dead-lettered, never lost.

    from versioned_tasks import VersionedSqliteHuey

    huey = VersionedSqliteHuey("billing", filename="queue.db")

    @huey.versioned_task(version=2, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str) -> None: ...

    @huey.upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict) -> dict:
        return {**payload, "currency": "EUR"}
"""

from ._codec import RemoteException
from ._deadletters import DeadLetter, DeadLetterStore
from ._huey import (
    VersionedFileHuey,
    VersionedHuey,
    VersionedMemoryHuey,
    VersionedPostgresHuey,
    VersionedPriorityRedisExpireHuey,
    VersionedPriorityRedisHuey,
    VersionedRedisExpireHuey,
    VersionedRedisHuey,
    VersionedSqliteHuey,
    VersionedTaskWrapper,
)
from ._pipeline import REASONS, RetiredMessage
from ._schema import RESERVED_PARAMETERS
from ._serializer import VersionedSerializer
from ._version import __version__
from .exceptions import (
    ConfigurationError,
    DeadLetterNotFound,
    DecodeError,
    EncodeError,
    EnvelopeTooLarge,
    InvalidArguments,
    InvalidResult,
    LockFileError,
    MessageRejected,
    ReplayFailed,
    SchemaError,
    SignatureError,
    VersionedTaskError,
)

__all__ = [
    "REASONS",
    "RESERVED_PARAMETERS",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterStore",
    "DecodeError",
    "EncodeError",
    "EnvelopeTooLarge",
    "InvalidArguments",
    "InvalidResult",
    "LockFileError",
    "MessageRejected",
    "RemoteException",
    "ReplayFailed",
    "RetiredMessage",
    "SchemaError",
    "SignatureError",
    "VersionedFileHuey",
    "VersionedHuey",
    "VersionedMemoryHuey",
    "VersionedPostgresHuey",
    "VersionedPriorityRedisExpireHuey",
    "VersionedPriorityRedisHuey",
    "VersionedRedisExpireHuey",
    "VersionedRedisHuey",
    "VersionedSerializer",
    "VersionedSqliteHuey",
    "VersionedTaskError",
    "VersionedTaskWrapper",
    "__version__",
]
