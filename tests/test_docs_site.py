"""The docs site holds together: the index links every page, the console page
shows every screenshot, and the build is configured to fail on what it misses.

The build itself (``mkdocs build --strict``, ``make docs``) fails on a page left
out of the navigation, a broken link or anchor, and a missing captured output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from versioned_tasks.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\((?P<target>[^)#\s]+\.md)(?:#[^)]*)?\)")


def pages() -> set[str]:
    """Every Markdown page of the site, relative to docs/."""
    return {
        page.relative_to(DOCS).as_posix()
        for page in DOCS.rglob("*.md")
        if "generated" not in page.relative_to(DOCS).parts
    }


def test_the_index_links_every_page() -> None:
    """docs/index.md links every other page, the generated reference included."""
    linked = {match["target"] for match in LINK.finditer((DOCS / "index.md").read_text("utf-8"))}
    missing = sorted(pages() - linked - {"index.md"})
    assert not missing, f"docs/index.md does not link: {', '.join(missing)}"


def test_the_navigation_lists_every_page() -> None:
    """mkdocs.yml's nav names every page (the strict build fails otherwise too)."""
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    missing = sorted(page for page in pages() if f": {page}\n" not in config)
    assert not missing, f"mkdocs.yml's nav does not list: {', '.join(missing)}"


def test_the_console_page_shows_every_screenshot() -> None:
    """Each screenshot the browser tests take appears on docs/console.md."""
    text = (DOCS / "console.md").read_text("utf-8")
    shots = sorted(path.name for path in (DOCS / "images" / "console").glob("*.png"))
    assert shots
    missing = [name for name in shots if f"(images/console/{name})" not in text]
    assert not missing, f"docs/console.md does not show: {', '.join(missing)}"


def test_the_strict_build_fails_on_an_omitted_page_or_a_broken_anchor() -> None:
    """mkdocs.yml is strict, and validation warns (so fails) on what would rot."""
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    assert re.search(r"^strict: true$", config, re.MULTILINE)
    for setting in ("omitted_files", "unrecognized_links", "anchors"):
        assert re.search(rf"^  {setting}: warn$", config, re.MULTILINE), setting
    assert "check_paths: true" in config  # a missing captured output fails the build


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, f"{path} {name}")


def test_the_command_line_page_covers_every_command_and_option() -> None:
    """docs/cli.md names each command, in its synopsis too, and each of its options."""
    text = (DOCS / "cli.md").read_text("utf-8")
    synopsis = text[: text.index("\n## ")]
    missing = []
    for path, command in _commands(cli_main, "versioned-tasks"):
        if isinstance(command, click.Group):
            continue
        if f"{path} " not in synopsis:
            missing.append(f"{path} (synopsis)")
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        missing.extend(
            f"{path} {option.opts[0]}"
            for option in options
            if not any(name in text for name in option.opts)
        )
    assert not missing, (
        "docs/cli.md does not mention these (the generated docs/reference/cli.md "
        "lists them already; explain them on the guide page): " + ", ".join(missing)
    )
