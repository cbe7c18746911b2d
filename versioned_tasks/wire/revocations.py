"""Huey's revocation records, read strictly.

``huey.revoke()`` and ``revoke_all()`` store the pair ``(revoke_until, revoke_once)``
under ``r:<task id>`` or ``rt:<task class>``, and Huey reads it back with
``revoke_until, revoke_once = value`` and ``revoke_until <= now``. Any other value
stored under such a key (by ``huey.put()``, a copied result, a bad write) makes
that unpacking or comparison raise inside the worker, after the message left the
queue. Here a record is either read exactly as Huey means it, or refused with a
:class:`DecodeError` saying what is wrong with it, so that the caller can keep
the task.
"""

from __future__ import annotations

import datetime
import reprlib
from collections.abc import Callable
from typing import Any

from huey.constants import EmptyData

from ..exceptions import DecodeError

__all__ = ["check_record", "restore_hint"]

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60


def check_record(
    data: Any,
    deserialize: Callable[[Any], Any],
    timestamp: datetime.datetime | None,
    now: Callable[[], datetime.datetime],
    *,
    peek: bool,
) -> tuple[bool, bool]:
    """Huey's ``_check_revoked`` for one stored record: ``(revoked, restore)``.

    Raises:
        DecodeError: the record is not an envelope, not a ``(revoke_until,
            revoke_once)`` pair, or its ``revoke_until`` cannot be compared
            with the clock; the text says which (:class:`SignatureError` for a
            signature that does not check).
    """
    if data is EmptyData:
        return False, False
    until, once = _pair(deserialize(data))
    if once:
        # Revoked for one run: restored afterwards unless only peeking.
        return True, not peek
    if until is None:
        return True, False
    if timestamp is None:
        timestamp = now()
    try:
        lifted = until <= timestamp
    except TypeError:
        raise DecodeError(
            f"its revoke_until {until!r} cannot be compared with the worker's clock "
            f"({timestamp!r}; Huey keeps naive datetimes)"
        ) from None
    return (False, not peek) if lifted else (True, False)


def _pair(value: Any) -> tuple[datetime.datetime | None, bool]:
    if type(value) not in (tuple, list) or len(value) != 2:
        raise DecodeError(
            f"it holds {type(value).__name__} {_REPR.repr(value)}, not the pair "
            f"(revoke_until, revoke_once) that huey.revoke() writes"
        )
    until, once = value
    if until is not None and not isinstance(until, datetime.datetime):
        raise DecodeError(
            f"its revoke_until is {type(until).__name__} {_REPR.repr(until)}, "
            f"not a datetime or None"
        )
    if type(once) is not bool:
        raise DecodeError(
            f"its revoke_once is {type(once).__name__} {_REPR.repr(once)}, not True or False"
        )
    return until, once


def restore_hint(key: str) -> str:
    """The call that deletes the record stored under ``key``."""
    if key.startswith("rt:"):
        return "huey.restore_all(<the task>) (a record for every message of the task)"
    if key.startswith("r:"):
        return f"huey.restore_by_id({key[2:]!r})"
    return f"huey.delete({key!r})"
