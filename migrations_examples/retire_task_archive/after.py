"""After the retirement: the XLS export is gone; its queued requests are archived.

Each message of ``reports.export_xls`` still in the queue, or scheduled for
later, is appended to a JSON-lines file, so that support can send those
reports another way. Nothing is run and nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from versioned_tasks import RetiredMessage, VersionedMemoryHuey

#: Where retired export requests are kept, one JSON object a line.
ARCHIVE = Path(os.environ.get("RETIRED_EXPORTS", "retired-exports.jsonl"))

huey = VersionedMemoryHuey("reports")


@huey.tombstone("reports.export_xls")
def archive_xls_export(retired: RetiredMessage) -> None:
    """Append the retired request, as it was on the wire, to the archive."""
    record = {
        "id": retired.id,
        "task": retired.task,
        "version": retired.version,
        "payload": retired.payload,
    }
    with ARCHIVE.open("a", encoding="utf-8") as archive:
        archive.write(json.dumps(record, sort_keys=True) + "\n")
