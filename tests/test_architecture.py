"""The layering of docs/architecture.md, checked on the source: who may import whom, no
import cycles (lazy imports inside functions count too), no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "causalshift"

# Layer of each top-level module or package of causalshift (docs/architecture.md).
LAYERS = {
    "__init__": 1, "hf_auto": 1,
    "errors": 1, "io": 1, "locks": 1, "cache": 1, "config": 1, "runtime": 1, "testing": 1,
    "gpt": 2, "corpus": 2,
    "results": 3, "figures": 3,
    "lens": 4, "train": 4, "evaluate": 4,
    "report": 5, "cli": 5, "__main__": 5, "api": 5,
}  # fmt: skip
# `testing` builds models of every kind for tests: it may reach up to the wings.
UPWARD_ALLOWED = {("testing", "gpt"), ("testing", "corpus"), ("testing", "lens")}
# The package root holds __version__ and installs hf_auto's import hook, which registers the
# exported model class: hf_auto reaches into evaluate's HF classes lazily, from transformers'
# import hook, so that `import causalshift` stays torch-free.
UPWARD_ALLOWED |= {("hf_auto", "evaluate")}
# The package root serves the Python API's names (load_model, measure, view) lazily, from
# its module __getattr__: `import causalshift` imports nothing of api until one is used.
UPWARD_ALLOWED |= {("__init__", "api")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """causalshift modules imported anywhere in the file (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer() -> None:
    assert {_top(m) for m in _modules()} <= set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for src, targets in _graph().items():
        for dst in targets:
            a, b = _top(src), _top(dst)
            if LAYERS[b] > LAYERS[a] and (a, b) not in UPWARD_ALLOWED:
                bad.append(f"{src} -> {dst}")
    assert not bad, bad


def test_wings_never_import_report() -> None:
    bad = [
        f"{src} -> {dst}"
        for src, targets in _graph().items()
        for dst in targets
        if _top(src) in ("lens", "train", "evaluate", "gpt", "figures", "results")
        and _top(dst) == "report"
    ]
    assert not bad, bad


def test_no_import_cycles() -> None:
    """Between modules (package __init__ re-exports excluded: they import their children)."""
    graph = _graph()
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    edges = {m: {t for t in ts if t not in packages} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: p.name)
def test_functions_are_at_most_80_lines(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
