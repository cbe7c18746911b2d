"""Finding an app from a ``package.module:attribute`` path (the CLI and the pytest plugin)."""

from __future__ import annotations

import importlib
from typing import Any

from ..exceptions import ConfigurationError
from .huey import VersionedHuey

__all__ = ["import_app"]


def import_app(path: str, *, label: str) -> VersionedHuey:
    """Import ``package.module.attribute`` or ``package.module:attribute``.

    ``label`` says where the path came from (``--app 'x'``, an ini option) in
    the messages. The caller puts the directory to import from on ``sys.path``.

    Raises:
        ConfigurationError: the path is malformed, its module does not import
            (it raises, or calls ``sys.exit()``), or it names no VersionedHuey;
            one line naming the module, the attribute and ``label``.
    """
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{label} is not a 'package.module.attribute' or 'package.module:attribute' path."
        )
    try:
        target: Any = importlib.import_module(module_name)
    except SystemExit as exc:
        raise ConfigurationError(
            f"Could not import module {module_name!r} for {label}: importing it called "
            f"sys.exit({exc.code!r}); keep the app's module free of code that exits "
            f"(move it under `if __name__ == '__main__':`)."
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"Could not import module {module_name!r} for {label}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"Module {module_name!r} has no attribute {attribute!r} ({label})."
            ) from None
        except Exception as exc:
            raise ConfigurationError(
                f"Reading {attribute!r} of module {module_name!r} for {label} raised "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(target, VersionedHuey):
        what = (
            f"the class {target.__name__}"
            if isinstance(target, type)
            else f"a {type(target).__name__}"
        )
        raise ConfigurationError(
            f"{label} is {what}, not a VersionedHuey instance; point it at the app, e.g. "
            f"'myproject.tasks:huey'."
        )
    return target
