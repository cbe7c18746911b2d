"""A payload at some version through the app's read pipeline, as a worker would read it.

Shared by the testing helpers (corpus cases, ``assert_upcasts``) and
``makemigrations`` (the expected result of a generated step).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from huey.api import Task

from ..app.huey import VersionedHuey
from ..messages.readwrite import Outcome

__all__ = ["current_payload", "read_payload"]

_READ_ID: Final = "versioned-tasks-testing"


def read_payload(
    huey: VersionedHuey, name: str, version: int, payload: Mapping[str, Any]
) -> Outcome:
    """What a worker of ``huey`` makes of ``payload`` written as ``name`` at ``version``.

    Raises:
        orjson.JSONEncodeError, TypeError: the payload is not what an envelope carries.
        VersionedTaskError: no envelope within the serializer's limits can carry it.
    """
    body = orjson.dumps(dict(payload))
    header = {"kind": "task", "task": name, "v": version, "id": _READ_ID, "at": time.time()}
    raw = huey.message_writer.frame(orjson.dumps(header), body)
    return huey.message_reader.read(raw)


def current_payload(huey: VersionedHuey, name: str, task: Task) -> dict[str, Any]:
    """The arguments a task read as ``name`` runs with, as today's JSON payload.

    Defaults that the payload left out are included.
    """
    spec = huey.schema.specs.get(huey.schema.resolve(name))
    if spec is None:  # a plain Huey task: its keyword arguments as read
        return dict(task.kwargs)
    value = task.args[0] if spec.model is not None else {**spec.defaults, **task.kwargs}
    current: dict[str, Any] = orjson.loads(
        spec.serializer.to_json(value, by_alias=True, round_trip=True)
    )
    return current
