"""The package's dependency direction (docs/development.md): core modules never import ray, mlflow, fastapi or
starlette, not even inside a function; the import graph has no cycles; no module imports one from a higher layer."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import raw_rm

PACKAGE_DIR = Path(raw_rm.__file__).parent
FORBIDDEN = ("ray", "mlflow", "fastapi", "starlette")

# Layers, lowest first: a module may import modules of its own layer and of lower ones. The longest matching
# prefix decides a module's layer. Edges (the last three layers) wrap core in Ray, MLflow and HTTP.
LAYERS: list[tuple[str, ...]] = [
    ("raw_rm", "raw_rm.config", "raw_rm.runtime", "raw_rm.cpu_threads"),
    ("raw_rm.data",),
    ("raw_rm.models", "raw_rm.losses", "raw_rm.metrics", "raw_rm.uncertainty"),
    ("raw_rm.inference", "raw_rm.quantization", "raw_rm.plan"),
    ("raw_rm.eval", "raw_rm.reference", "raw_rm.serve", "raw_rm.label"),
    ("raw_rm.train", "raw_rm.tune.space", "raw_rm.tune.results"),
    # edges: Ray, MLflow, HTTP
    ("raw_rm.tracking", "raw_rm.tune", "raw_rm.train.ray_train", "raw_rm.train.ensemble", "raw_rm.label.app"),
    ("raw_rm.serve.app", "raw_rm.serve.launch"),
    ("raw_rm.cli",),
]
EDGE_LAYER = 6


def _layer(module: str) -> int:
    best, layer = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, index
    assert layer is not None, f"{module}: no layer in LAYERS; add it to the map (and to docs/architecture.md)"
    return layer


def _modules() -> dict[str, Path]:
    found = {"raw_rm": PACKAGE_DIR / "__init__.py"}
    for info in pkgutil.walk_packages(raw_rm.__path__, prefix="raw_rm."):
        path = PACKAGE_DIR.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) for every import statement in the file, wherever it stands."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            out += [(n if n in known else base, node.lineno) for n in names]
    return out


def _internal_edges() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _ in _imports(module, path, known):
            target = name
            while target and target not in known:
                target = target.rpartition(".")[0]
            # a package's own __init__ importing its submodules is how packages re-export
            if target and target != module and not target.startswith(module + "."):
                edges[module].add(target)
    return edges


def test_core_modules_never_import_an_edge_framework() -> None:
    modules = _modules()
    known = set(modules)
    found = []
    for module, path in modules.items():
        if _layer(module) >= EDGE_LAYER:
            continue
        for name, line in _imports(module, path, known):
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {module} imports {name}")
    assert found == []


def test_import_graph_has_no_cycles() -> None:
    edges = _internal_edges()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(
        f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
        for a, targets in _internal_edges().items()
        for b in targets
        if _layer(b) > _layer(a)
    )
    assert upward == []


# One fresh interpreter imports the core modules one after another and records which forbidden packages each
# import newly brought in (catches a transitive import through a third-party package too).
_PROBE = """
import importlib, json, sys
forbidden, modules = json.loads(sys.argv[1])
blame = {}
for name in modules:
    before = {m for m in forbidden if m in sys.modules}
    importlib.import_module(name)
    added = [m for m in forbidden if m in sys.modules and m not in before]
    if added:
        blame[name] = added
print(json.dumps(blame))
"""


def test_core_modules_import_no_edge_framework_at_run_time() -> None:
    modules = sorted(m for m in _modules() if _layer(m) < EDGE_LAYER)
    assert "raw_rm.losses" in modules and "raw_rm.models.concat" in modules, modules
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([FORBIDDEN, modules])], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
