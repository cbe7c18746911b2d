"""Finding an app from a ``package.module:attribute`` path (the CLI and the pytest plugin)."""

from __future__ import annotations

import importlib
import importlib.util
import types
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
            f"{_django_hint(exc)}"
        ) from None
    reached = module_name
    for part in attribute.split("."):
        reached = f"{reached}.{part}"
        try:
            target = getattr(target, part)
        except AttributeError:
            if isinstance(target, types.ModuleType) and _is_module(reached):
                raise ConfigurationError(_names_a_module(reached, label)) from None
            raise ConfigurationError(
                f"Module {module_name!r} has no attribute {attribute!r} ({label})."
            ) from None
        except Exception as exc:
            raise ConfigurationError(
                f"Reading {attribute!r} of module {module_name!r} for {label} raised "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if isinstance(target, types.ModuleType):
        raise ConfigurationError(_names_a_module(target.__name__, label))
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


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _names_a_module(name: str, label: str) -> str:
    """The message for a path that names a module where an app was expected."""
    found = _apps_in(name) or ["ATTRIBUTE"]
    ask = " or ".join(f"'{name}:{attr}'" for attr in found[:3])
    return (
        f"{label} names the module {name!r}, not an app in it; add the attribute that "
        f"holds the VersionedHuey, as 'module:attribute' or 'module.attribute': {ask}."
    )


def _apps_in(name: str) -> list[str]:
    """The names of the VersionedHuey instances module ``name`` holds, if it imports."""
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit):  # only a hint: the main error is already known
        return []
    return sorted(attr for attr, value in vars(module).items() if isinstance(value, VersionedHuey))


def _django_hint(exc: BaseException) -> str:
    # Named, not imported: the core never imports Django.
    if type(exc).__name__ in {"ImproperlyConfigured", "AppRegistryNotReady"}:
        return (
            " (this module needs a set-up Django project: set DJANGO_SETTINGS_MODULE; the "
            "versioned-tasks command also takes --django-settings)"
        )
    return ""
