"""How the API reference reads the package's docstrings (a griffe extension).

The package documents its constants the way Sphinx does, with ``#:`` comments
on the lines above the assignment, and refers to names with Sphinx roles
(``:class:`DeadLetter```). Griffe reads neither: this extension turns the
comments into the attributes' docstrings and the roles into inline code. The
docs build (mkdocs.yml, mkdocstrings' ``extensions``) and the docstring test
(tests/test_docstrings.py) load it, so both see the same docstrings.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

#: ``:class:`~package.Name``` and friends; the text shown is the last dotted part
#: when the target starts with ``~``, else the whole target.
ROLE = re.compile(r":(?:class|func|meth|attr|data|exc|mod|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match[2]
    return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"


def plain_roles(text: str) -> str:
    """``text`` with its Sphinx roles written as inline code."""
    return ROLE.sub(_role, text)


def markdown_literals(text: str) -> str:
    """reST's ``text::`` before an indented block, as Markdown shows it: ``text:``.

    A ``::`` alone on its line goes: the indented block after it is code anyway.
    """
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.MULTILINE)
    return re.sub(r"(?<=\S)::$", ":", text, flags=re.MULTILINE)


def comment_docstring(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` comment block right above line ``lineno`` (1-based), or None."""
    found: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.append(lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(reversed(found)) or None


class ProjectDocstrings(griffe.Extension):
    """``#:`` comments become docstrings; Sphinx roles and ``::`` become Markdown."""

    def on_attribute_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        attr: griffe.Attribute,
        agent: griffe.Visitor | griffe.Inspector,
        **kwargs: Any,
    ) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        if not isinstance(agent, griffe.Visitor) or not isinstance(attr.filepath, Path):
            return
        text = comment_docstring(agent.lines_collection[attr.filepath], attr.lineno)
        if text is not None:
            attr.docstring = griffe.Docstring(
                text, lineno=attr.lineno - 1, endlineno=attr.lineno - 1, parent=attr
            )

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_literals(plain_roles(obj.docstring.value))
