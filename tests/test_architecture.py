"""The package map of docs/ARCHITECTURE.md holds: stages import only stages below them, no cycle between
packages, and nothing but the shared basics sits at the package root."""

from __future__ import annotations

import ast
from pathlib import Path

import camcaffe

PACKAGE = Path(camcaffe.__file__).parent
# Lowest first: a package may import the root basics and the packages listed before it.
STAGES = ["caffe", "runtime", "convert", "explain", "localize", "output", "engines", "pycaffe", "proto", "cli"]
ROOT_MODULES = {"__init__", "errors", "limits", "atomic", "fetch"}


def _unit(module: str) -> str:
    """'camcaffe.engines.pipeline' -> 'engines'; root modules -> 'root'."""
    parts = module.split(".")
    if len(parts) < 2:
        return "root"
    return parts[1] if parts[1] in STAGES else "root"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("camcaffe"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("camcaffe"):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        source = _module_name(path)
        for target in _imports(path):
            a, b = _unit(source), _unit(target)
            if a != b and not (target == "camcaffe" and a != "root"):
                edges.setdefault((a, b), []).append(f"{source} -> {target}")
    return edges


def test_root_holds_only_the_shared_basics():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules <= ROOT_MODULES, f"modules at the package root besides the basics: {modules - ROOT_MODULES}"
    assert set(STAGES) <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def test_stages_import_only_stages_below_them():
    rank = {name: index for index, name in enumerate(STAGES)}
    rank["root"] = -1
    upward = [
        example
        for (a, b), examples in _edges().items()
        if b != "root" and a != "root" and rank[b] > rank[a]
        for example in examples[:2]
    ]
    assert not upward, "imports against the pipeline's direction:\n" + "\n".join(upward)


def test_root_basics_import_no_stage():
    # camcaffe/__init__.py names the public API lazily (by string), so it imports no stage either.
    offending = [ex for (a, b), examples in _edges().items() if a == "root" and b != "root" for ex in examples]
    assert not offending, "\n".join(offending)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if not state.get(nxt):
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in list(graph):
        if not state.get(node):
            visit(node, [])
