"""The package's layers: no import cycles, and the layer contracts of pyproject.toml."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """The groups of modules that reach one another through imports (each a cycle)."""
    modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    groups: set[tuple[str, ...]] = set()
    for module in modules:
        # What it imports (directly or not) that also imports it back.
        uses = graph.find_upstream_modules(module)
        used_by = graph.find_downstream_modules(module)
        group = (uses & used_by & modules) | {module}
        if len(group) > 1:
            groups.add(tuple(sorted(group)))
    return [list(group) for group in sorted(groups)]


def test_the_package_has_no_import_cycles() -> None:
    """No module of versioned_tasks imports, directly or not, one that imports it
    back (imports under TYPE_CHECKING are annotations and are left out)."""
    graph = grimp.build_graph("versioned_tasks", exclude_type_checking_imports=True)
    assert _cycles(graph, "versioned_tasks") == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: two modules importing each other are reported."""
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph, "pkg") == [["pkg.a", "pkg.b"]]
