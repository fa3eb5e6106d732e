"""The classifier modules import each other at module level only, and without a cycle (#15.4)."""

import ast
from pathlib import Path

import lm

MODULES = [
    "classifier",
    "classifier_data",
    "default_classifiers",
    "fasttext_format",
    "harmful",
    "lowquality",
    "obfuscation",
    "quality",
]
ROOT = Path(lm.__file__).parent / "data"


def _imports(name: str) -> tuple[set[str], list[str]]:
    """(lm.data modules imported at module level, lm.* modules imported inside functions)."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lm.data.")}
    nested = [
        n.module
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lm.")
    ]
    return {m.removeprefix("lm.data.") for m in top}, nested


def test_no_function_level_imports_and_no_cycle():
    graph = {}
    for name in MODULES:
        top, nested = _imports(name)
        assert not nested, f"lm/data/{name}.py imports {nested} inside a function"
        graph[name] = top & set(MODULES)
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join(path + (node,))}"
        if node not in done:
            for dep in graph[node]:
                visit(dep, path + (node,))
            done.add(node)

    for name in MODULES:
        visit(name, ())
    assert "quality" not in graph["classifier_data"] and "quality" not in graph["default_classifiers"]
