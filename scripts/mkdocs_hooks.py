"""MkDocs hooks of the docs build (``hooks:`` in mkdocs.yml).

Before a build, scripts/capture_output.py runs the commands whose output the
pages show and writes it to docs/generated/. ``mkdocs serve`` captures once, on
its first build: the output holds fresh ids, and rewriting it on every rebuild
would trigger the next one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_command = "build"
_captured = False


def on_startup(*, command: str, dirty: bool, **kwargs: Any) -> None:
    global _command
    _command = command


def on_pre_build(config: Any, **kwargs: Any) -> None:
    global _captured
    if _command == "serve" and _captured:
        return
    spec = importlib.util.spec_from_file_location("capture_output", _HERE / "capture_output.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.capture()
    _captured = True
