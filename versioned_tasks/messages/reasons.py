"""The reasons a message is dead-lettered for: one typed list."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

__all__ = ["REASONS", "Reason"]

#: Why a message could not run; stored with its dead-letter entry.
Reason: TypeAlias = Literal[
    "undecodable",
    "bad_signature",
    "unknown_task",
    "upcast_failed",
    "invalid_payload",
    "newer_version",
    "retired",
]

#: Every reason a message can be dead-lettered for.
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
