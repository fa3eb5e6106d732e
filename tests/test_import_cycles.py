"""No import cycles in lm/, tasks/, flows/ (DESIGN: a new import cycle fails a test).

Static: every ``import``/``from … import`` in every module, including those inside
functions (a function-level import that closes a cycle still counts), gives an edge of the
module graph; a strongly connected component of more than one module is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lm", "tasks", "flows")


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(repo: Path = REPO, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> modules of ours it imports (anywhere in its body)."""
    paths = {module_name(p, repo): p for pkg in packages for p in (repo / pkg).rglob("*.py")}

    def ours(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import submodule` depends on the submodule, `from mod import name` on mod
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            deps |= {m for n in names if (m := ours(n)) and m != mod}
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def test_the_checker_finds_a_cycle_closed_inside_a_function(tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "__init__.py").write_text("")
    (tmp_path / "lm" / "a.py").write_text("from lm.b import x\n")
    (tmp_path / "lm" / "b.py").write_text("def f():\n    from lm import a\n    return a\n")
    (tmp_path / "lm" / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, ("lm",))
    assert graph["lm.c"] == {"lm.a"}
    assert cycles(graph) == [frozenset({"lm.a", "lm.b"})]


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, (
        f"import cycles (move the shared piece down a layer; a function-level import does not hide it): {found}"
    )
