"""No import cycles among Studyhall's modules (server, handlers, rag, storage).

Every import counts: module-level, function-local and `if TYPE_CHECKING:` ones (a cycle
hidden under TYPE_CHECKING is still two modules that must be understood together). The
layers themselves (server → handlers → rag → storage) are import-linter's contract in
pyproject.toml, run by `make lint`; docs/architecture.md, "Imports".
"""

from __future__ import annotations

import grimp
import pytest

pytestmark = pytest.mark.unit

PACKAGES = ("server", "handlers", "rag", "storage")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Each group of modules that import each other (directly or not), as one example cycle
    through all of them when there is one simple enough to find, sorted for stable output."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # Tarjan's strongly connected components, iteratively (no recursion limit to hit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return sorted(_example_cycle(graph, group) for group in groups)


def _example_cycle(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself: a → … → a."""
    start = group[0]
    best: list[str] | None = None
    for nxt in sorted(graph.find_modules_directly_imported_by(start)):
        if nxt not in group:
            continue
        back = graph.find_shortest_chain(importer=nxt, imported=start)
        if back is not None and (best is None or len(back) + 1 < len(best)):
            best = [start, *back]
    return best or [*group, start]


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    lines = [" → ".join(cycle)]
    for importer, imported in zip(cycle, cycle[1:], strict=False):
        for detail in graph.get_import_details(importer=importer, imported=imported)[:1]:
            lines.append(f"    {importer}:{detail['line_number']}: {detail['line_contents']}")
    return "\n".join(lines)


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert import_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
