"""After the move: the app, and the rename that saves the plain task's old messages.

A plain ``@huey.task()`` travels under Huey's name for it, its module and
function: moving it renamed it. The versioned task travels under its
``name=``, which did not move.
"""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("media")

huey.rename(f"{__package__}.before.purge_cdn", f"{__package__}.images.purge_cdn")

# Import the modules that declare tasks, as a Huey app's main module does.
from . import images  # noqa: E402, F401
