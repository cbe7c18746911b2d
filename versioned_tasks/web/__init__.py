"""The operations console: dead letters, census and fleet in the browser.

``create_app(huey, token=...)`` returns an ASGI application (Starlette); the
``versioned-tasks web`` command serves it. Needs the ``web`` extra:
``pip install 'versioned-tasks[web]'``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
