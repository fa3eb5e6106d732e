"""The storage layer imports downward only (issue #15, item 4): no import cycle among its
modules, no ``lm`` import hidden inside a function to dodge one, no private name imported
from another module. The lead can widen ``MODULES`` to the whole tree once every cycle is gone."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODULES = [
    "lm.faults",
    "lm.data.nospace",
    "lm.data.storage",
    "lm.data.stagekey",
    "lm.data.stage_io",
    "lm.data.manifest",
    "lm.data.fingerprint",
    "lm.data.sinks",
    "lm.data.locks",
    "lm.data.describe",
    "lm.data.shards",
    "lm.data.gzstream",
    "lm.data.remote",
    "lm.train.data",
    "lm.tokenizer.stages",
]


def _file(root: Path, module: str) -> Path:
    base = root / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(root: Path, module: str) -> tuple[set[str], list[str]]:
    """(lm modules imported at module level, problems: function-level lm imports, private names)."""
    tree = ast.parse(_file(root, module).read_text())
    found, problems = set(), []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "lm":
                names = [a.name for a in child.names]
                targets = [
                    f"{child.module}.{n}" if _file(root, f"{child.module}.{n}").exists() else child.module
                    for n in names
                ]
                if in_function:
                    problems.append(f"{module}:{child.lineno} imports {child.module} inside a function")
                problems.extend(
                    f"{module}:{child.lineno} imports private {child.module}.{n}" for n in names if n.startswith("_")
                )
                if not in_function:
                    found.update(targets)
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "lm":
                        (
                            problems.append(f"{module}:{child.lineno} imports {a.name} inside a function")
                            if in_function
                            else found.add(a.name)
                        )
            visit(child, nested)

    visit(tree, False)
    return found, problems


def check(root: Path, modules: list[str]) -> list[str]:
    """Problems in ``modules`` (cycles among them, hidden or private imports); empty when none."""
    graph, problems = {}, []
    for m in modules:
        deps, bad = _imports(root, m)
        graph[m] = {d for d in deps if d in modules and d != m}
        problems += bad
    done: set[str] = set()

    def dfs(m: str, stack: list[str]):
        for d in sorted(graph[m]):
            if d in stack:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in done:
                dfs(d, stack + [d])
        done.add(m)

    for m in modules:
        if m not in done:
            dfs(m, [m])
    return problems


def test_the_storage_layer_imports_downward_only():
    assert check(REPO, MODULES) == []


def test_the_check_finds_a_cycle_and_a_hidden_import(tmp_path):
    pkg = tmp_path / "lm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lm.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from lm.a import _private\n")
    (pkg / "c.py").write_text("from lm.d import x\n")
    (pkg / "d.py").write_text("import lm.c\n")
    problems = check(tmp_path, ["lm.a", "lm.b", "lm.c", "lm.d"])
    assert any("inside a function" in p for p in problems) and any("private" in p for p in problems)
    assert any(p.startswith("import cycle") and "lm.c" in p and "lm.d" in p for p in problems)
