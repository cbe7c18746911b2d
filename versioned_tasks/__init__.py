"""Typed, versioned Huey tasks whose old messages are migrated, redirected or
dead-lettered, never lost.

    from versioned_tasks import VersionedSqliteHuey, upcaster, versioned_task

    huey = VersionedSqliteHuey("billing", filename="queue.db", default=True)

    @versioned_task(version=2, name="billing.send_invoice")
    def send_invoice(invoice_id: int, currency: str) -> None: ...

    @upcaster("billing.send_invoice", from_version=1)
    def add_currency(payload: dict) -> dict:
        return {**payload, "currency": "EUR"}
"""

from ._version import __version__
from .app.declare import (
    DeclaredTask,
    default_app,
    downcaster,
    rename,
    set_default_app,
    tombstone,
    upcaster,
    versioned_periodic_task,
    versioned_task,
)
from .app.fleet import WorkerInfo, live_workers, readable_versions
from .app.huey import (
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
from .app.serializer import VersionedSerializer
from .exceptions import (
    ConfigurationError,
    DeadLetterNotFound,
    DecodeError,
    DowncastFailed,
    EncodeError,
    EnvelopeTooLarge,
    InvalidArguments,
    InvalidResult,
    LockFileError,
    MessageRejected,
    ReplayFailed,
    SchemaError,
    SchemaWarning,
    SignatureError,
    VersionedTaskError,
)
from .messages.actions import SIGNAL_DEFERRED, DeferredMessage
from .messages.events import (
    SIGNAL_DEAD_LETTERED,
    SIGNAL_RENAMED,
    SIGNAL_REPLAYED,
    SIGNAL_RETIRED,
    SIGNAL_UPCAST,
    DeadLetteredMessage,
    RenamedMessage,
    ReplayedMessage,
    TombstonedMessage,
    UpcastMessage,
)
from .messages.readwrite import REASONS, RetiredMessage
from .ops.census import Census, CensusRow, Removal, take_census
from .schema.registry import RESERVED_PARAMETERS
from .storage.deadletters import DeadLetter, DeadLetterStore
from .wire.values import RemoteException

__all__ = [
    "REASONS",
    "RESERVED_PARAMETERS",
    "SIGNAL_DEAD_LETTERED",
    "SIGNAL_DEFERRED",
    "SIGNAL_RENAMED",
    "SIGNAL_REPLAYED",
    "SIGNAL_RETIRED",
    "SIGNAL_UPCAST",
    "Census",
    "CensusRow",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterStore",
    "DeadLetteredMessage",
    "DeclaredTask",
    "DecodeError",
    "DeferredMessage",
    "DowncastFailed",
    "EncodeError",
    "EnvelopeTooLarge",
    "InvalidArguments",
    "InvalidResult",
    "LockFileError",
    "MessageRejected",
    "RemoteException",
    "Removal",
    "RenamedMessage",
    "ReplayFailed",
    "ReplayedMessage",
    "RetiredMessage",
    "SchemaError",
    "SchemaWarning",
    "SignatureError",
    "TombstonedMessage",
    "UpcastMessage",
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
    "WorkerInfo",
    "__version__",
    "default_app",
    "downcaster",
    "live_workers",
    "readable_versions",
    "rename",
    "set_default_app",
    "take_census",
    "tombstone",
    "upcaster",
    "versioned_periodic_task",
    "versioned_task",
]
