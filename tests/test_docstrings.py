"""Every public name has a docstring, and the generated API reference renders it.

The reference (docs/reference/*.md) is built by mkdocstrings from the package's
signatures and docstrings, read by griffe with the project's extension
(scripts/griffe_docs.py, which also turns ``#:`` comments into the docstrings of
constants). These tests read the package the same way, so a name that would
show up bare, or not at all, fails here before anyone reads the site.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import click
import griffe
import pytest

from versioned_tasks.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"

#: The modules whose ``__all__`` is public API, each rendered in the reference.
PUBLIC_MODULES = (
    "versioned_tasks",
    "versioned_tasks.testing",
    "versioned_tasks.pytest_plugin",
    "versioned_tasks.contrib.prometheus",
    "versioned_tasks.contrib.otel",
    "versioned_tasks.contrib.djhuey",
    "versioned_tasks.web",
)
DIRECTIVE = re.compile(r"^::: (?P<path>[\w.]+)[ \t]*$", re.MULTILINE)


def _extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location("griffe_docs", ROOT / "scripts/griffe_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    """The package as the docs build reads it (statically, with the extension)."""
    extension = _extension().ProjectDocstrings()
    loaded = griffe.load(
        "versioned_tasks",
        search_paths=[str(ROOT)],
        extensions=griffe.Extensions(extension),
        resolve_aliases=True,
        resolve_external=False,
    )
    assert isinstance(loaded, griffe.Module)
    return loaded


def public_paths() -> list[str]:
    """``module.name`` for every name of every public module's ``__all__``."""
    paths = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        paths.extend(f"{module_name}.{name}" for name in module.__all__)
    return paths


def _target(package: griffe.Module, path: str) -> griffe.Object:
    found = package[path.removeprefix("versioned_tasks.")]
    target = found.final_target if isinstance(found, griffe.Alias) else found
    assert isinstance(target, griffe.Object)
    return target


def _has_docstring(obj: griffe.Object) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def test_the_public_modules_are_found() -> None:
    """The list is not empty, and the top-level API is in it."""
    paths = public_paths()
    assert "versioned_tasks.VersionedHuey" in paths
    assert "versioned_tasks.pytest_plugin.versioned_huey" in paths
    assert "versioned_tasks.web.create_app" in paths


def test_every_public_name_has_a_docstring(package: griffe.Module) -> None:
    """Each name of a public ``__all__`` has a docstring (a ``#:`` comment for a constant)."""
    missing = [path for path in public_paths() if not _has_docstring(_target(package, path))]
    assert not missing, (
        "These public names have no docstring, so the API reference would show them "
        "bare; write one (a `#:` comment above a constant): " + ", ".join(missing)
    )


def test_every_public_method_has_a_docstring(package: griffe.Module) -> None:
    """The methods and properties a public class defines itself have docstrings."""
    missing = []
    for path in public_paths():
        target = _target(package, path)
        if not isinstance(target, griffe.Class):
            continue
        for name, member in target.members.items():
            if name.startswith("_") or isinstance(member, griffe.Alias):
                continue
            if member.is_function and not _has_docstring(member):
                missing.append(f"{path}.{name}")
    assert not missing, "These public methods have no docstring: " + ", ".join(missing)


def reference_directives() -> dict[str, str]:
    """``{object path: page}`` for every ``::: path`` of the reference pages."""
    found: dict[str, str] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            found[match["path"]] = page.relative_to(ROOT).as_posix()
    return found


def test_every_public_name_is_in_the_reference() -> None:
    """Each public name has its own ``::: path`` directive on a reference page."""
    rendered = reference_directives()
    missing = [path for path in public_paths() if path not in rendered]
    assert not missing, (
        "These public names are missing from the API reference; add a `::: <path>` "
        "line for each to the right page of docs/reference/: " + ", ".join(missing)
    )


def test_every_reference_directive_names_an_existing_object(package: griffe.Module) -> None:
    """No directive points at a name that was removed or renamed."""
    unknown = []
    for path, page in reference_directives().items():
        if path == "mkdocs-click":
            continue
        try:
            _target(package, path)
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            unknown.append(f"{page}: {path}")
    assert not unknown, "Reference directives name unknown objects: " + ", ".join(unknown)


def _commands(
    command: click.Command, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found.extend(_commands(sub, (*path, name)))
    return found


def test_the_cli_reference_is_generated_from_the_command() -> None:
    """docs/reference/cli.md renders the click group that `versioned-tasks` runs."""
    text = (REFERENCE / "cli.md").read_text(encoding="utf-8")
    assert ":module: versioned_tasks.cli.main" in text
    assert ":command: main" in text


def test_every_command_and_option_has_help() -> None:
    """The generated CLI reference shows a help text for each command and option."""
    missing = []
    for path, command in _commands(cli_main, ("versioned-tasks",)):
        if not (command.help or command.short_help):
            missing.append(" ".join(path))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert not missing, "Commands and options without a help text: " + ", ".join(missing)
