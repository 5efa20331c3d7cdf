"""No import cycle among the `jetl.*` modules, counting imports inside functions too (a lazy import that exists
only to dodge a cycle is still a cycle in the design), and no import that runs up a layer.

The layers, bottom up: the core (contracts, connectors, bus, state, event log), `runtime/` (what a service runs),
`ops/` (the operator's read models) and `stack/` (the embedded servers), then `cli/`, `ui/` and `testing/` on top."""

from __future__ import annotations

import ast
from pathlib import Path

import jetl

ROOT = Path(jetl.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["jetl", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The jetl modules `path` imports anywhere in its body (TYPE_CHECKING blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            # `from jetl import bus` names the module jetl.bus; `from jetl.bus import Bus` names jetl.bus
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "jetl":
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, name, modules) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_and_relative_ones_count(tmp_path: Path) -> None:
    module = tmp_path / "bus.py"
    module.write_text("from . import subjects\n\ndef later():\n    from jetl.state import bucket\n")
    found = _imports(module, "jetl.bus", {"jetl.bus", "jetl.state", "jetl.subjects"})
    assert found == {"jetl.state", "jetl.subjects"}


def test_no_import_cycle_among_jetl_modules() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among jetl modules: " + "; ".join(" <-> ".join(c) for c in cycles)


_TOP = ("jetl.ops", "jetl.stack", "jetl.cli", "jetl.ui", "jetl.testing")
_LAYERS: dict[str, tuple[str, ...]] = {
    # a module under the key's package may not import any of the value's packages
    "jetl.runtime": ("jetl.ops", "jetl.stack", "jetl.cli", "jetl.ui", "jetl.testing"),
    "jetl.ops": ("jetl.stack", "jetl.cli", "jetl.ui", "jetl.testing"),
    "jetl.stack": ("jetl.cli", "jetl.ui", "jetl.testing"),
    "jetl.ui": ("jetl.cli", "jetl.testing"),
}


def _layer_breaks(graph: dict[str, set[str]]) -> list[str]:
    def under(module: str, packages: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in packages)

    breaks = []
    for module, imported in sorted(graph.items()):
        if module in ("jetl", "jetl.__main__"):
            continue
        owner = next((p for p in _LAYERS if under(module, (p,))), None)
        if owner is not None:
            banned = _LAYERS[owner]
        elif under(module, _TOP):
            continue
        else:  # the core: nothing above it
            banned = ("jetl.runtime", *_TOP)
        breaks += [f"{module} -> {target}" for target in sorted(imported) if under(target, banned)]
    return breaks


def test_the_layer_check_sees_an_import_up_a_layer() -> None:
    graph = {
        "jetl.bus": {"jetl.ops.client"},
        "jetl.ops.health": {"jetl.cli._app"},
        "jetl.cli.runs": {"jetl.ops.client"},
    }
    assert _layer_breaks(graph) == ["jetl.bus -> jetl.ops.client", "jetl.ops.health -> jetl.cli._app"]


def test_no_import_runs_up_a_layer() -> None:
    breaks = _layer_breaks(_graph())
    assert not breaks, "imports that run up a layer: " + "; ".join(breaks)
