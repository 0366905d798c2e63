"""rlscope's modules import each other without cycles -- counting imports inside functions -- and in the directions
the design gives (probes import no trainer, callback, W&B or store code; trainers import no callbacks).

Edges come from every ``import`` / ``from ... import`` statement anywhere in a module (module level, functions,
methods), read with ``ast``; ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
Registries load their plugin modules with ``importlib`` (discovery, not an import statement), which is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "rlscope").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_rlscope_modules():
    graph = import_graph()
    assert len(graph) > 30 and "rlscope.callbacks.engine" in graph
    assert cycles(graph) == []


def test_dependencies_point_one_way():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("rlscope.probes"):
            bad = {d for d in deps if d.startswith(("rlscope.callbacks", "rlscope.trainers", "rlscope.store",
                                                    "rlscope.train"))}
            assert not bad, f"{mod} (a probe) imports {bad}"
        if mod.startswith("rlscope.trainers"):
            assert not {d for d in deps if d.startswith("rlscope.callbacks")}, f"{mod} imports the callbacks"
        if mod.startswith("rlscope.analysis"):
            assert not {d for d in deps if d.startswith(("rlscope.callbacks", "rlscope.trainers"))}, mod
