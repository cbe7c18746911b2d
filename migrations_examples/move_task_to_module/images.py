"""The media tasks' new module (after the move).

``resize_image`` keeps its logical name, so nothing else changes for it.
``purge_cdn`` is now ``<this module>.purge_cdn`` on the wire: ``after.py``
renames its old name to this one.
"""

from __future__ import annotations

from .after import huey


@huey.versioned_task(version=1, name="media.resize_image")
def resize_image(image_id: int, width: int) -> str:
    """Render an image at a new width."""
    return f"image {image_id} resized to {width}px"


@huey.task()
def purge_cdn(path: str) -> str:
    """Drop a path from the CDN's cache."""
    return f"purged {path}"
