"""Before the move: the app module declares its media tasks itself.

``resize_image`` is a versioned task with a logical ``name=``; ``purge_cdn``
is a plain Huey task, which Huey names after its module:
``<this module>.purge_cdn``.
"""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("media")


@huey.versioned_task(version=1, name="media.resize_image")
def resize_image(image_id: int, width: int) -> str:
    """Render an image at a new width."""
    return f"image {image_id} resized to {width}px"


@huey.task()
def purge_cdn(path: str) -> str:
    """Drop a path from the CDN's cache."""
    return f"purged {path}"
