"""The package's layering, checked from its source: no upward import, no import cycle.

Layers, lowest first (`docs/architecture.md` draws them). A module may import its own
layer's and lower layers' modules; among methods, only the shared model library `inr`
may be imported by another method, so no method reaches into another's internals.
Imports inside functions count the same as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longbrain_jax"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "files", "config", "memory", "grid", "metrics", "groups", "progress", "report", "cnn", "atlas"}),  # base
    frozenset({"cohort"}),  # the data model
    frozenset({"io"}),  # reading and writing datasets
    frozenset({"simulate"}),  # the ground-truth cohorts (and the template's anatomy)
    frozenset({"engine"}),  # chunked, planned, sharded, checkpointed training over subjects
    frozenset({"inr", "fit", "registration", "latent", "noder", "segmenter", "weightspace", "baselines", "classifier", "align", "diffusion"}),  # methods
    frozenset({"forecast", "classification"}),  # experiments that compare methods
    frozenset({"demo", "cli"}),  # entry points
)
METHODS = LAYERS[5]
SHARED_METHODS = frozenset({"inr"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `longbrain_jax...` module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("longbrain_jax"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module` imports a module
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("longbrain_jax")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()} - {"__init__"}
    missing = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not missing, f"give these a layer in tests/test_layering.py and docs/architecture.md: {missing}"


def test_no_upward_import_and_no_method_reaches_into_another():
    wrong = []
    for module, imported in _graph().items():
        unit = _unit(module)
        if unit == "__init__":
            continue
        for other in imported:
            target = _unit(other)
            if target in (unit, "__init__"):
                continue
            if _layer(target) > _layer(unit):
                wrong.append(f"{module} imports {other} (layer {_layer(target)} above {_layer(unit)})")
            elif unit in METHODS and target in METHODS and target not in SHARED_METHODS:
                wrong.append(f"{module} imports {other} (another method's internals)")
    assert not wrong, "\n".join(sorted(wrong))


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of `graph` with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    """No cycle among modules (a package's `__init__` re-exporting its modules aside), and none across
    units even counting that importing `a.b.c` first runs the packages `a` and `a.b`."""
    graph = _graph()
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    modules = {m: {d for d in deps if d not in packages} for m, deps in graph.items() if m not in packages}
    cycles = [sorted(c) for c in _components(modules)]
    assert not cycles, f"import cycles: {cycles}"
    implicit = {m: set(deps) for m, deps in graph.items()}
    for m, deps in graph.items():
        for d in deps:
            parts = d.split(".")
            implicit[m] |= {".".join(parts[:k]) for k in range(2, len(parts)) if ".".join(parts[:k]) in graph}
    across = [sorted(c) for c in _components(implicit) if len({_unit(m) for m in c} - {"__init__"}) > 1]
    assert not across, f"import cycles across units: {across}"
