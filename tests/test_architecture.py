"""The package's shape: library folders import only downward, folders form no cycle, the CLI
calls only the application layer. Imports are parsed (every ``import`` statement anywhere in a
module, lazy ones inside functions included), not executed."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "turbonerf"

# bottom to top: a unit may import itself and units listed before it, never one after it
LAYERS = [
    "__init__", "errors", "prefetch", "io", "cameras", "rays", "data", "encodings", "fields", "render", "samplers",
    "methods", "distill", "bake", "eval", "engine", "viewer", "app", "cli", "__main__",
]
LIBRARY = LAYERS[: LAYERS.index("app")]


def unit_of(module: str) -> str:
    """turbonerf.a.b -> 'a' (a folder or a top-level module); turbonerf -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, package: list[str] | None = None) -> set[str]:
    """Every turbonerf module a file imports (absolute and relative, at any depth in the file).
    ``package``: the file's package as parts (default: from its place under turbonerf/)."""
    if package is None:
        package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "turbonerf"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "turbonerf":
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names if (PACKAGE.parent / f"{mod}.{a.name}".replace(".", "/")).is_dir()}
    return found


def unit_edges() -> dict[tuple[str, str], list[str]]:
    """(from unit, to unit) -> the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = unit_of("turbonerf." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for mod in imports_of(path):
            dst = unit_of(mod)
            if dst != src:
                edges.setdefault((src, dst), []).append(str(path.relative_to(PACKAGE.parent)))
    return edges


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                cyc = visit(nxt, stack + [nxt])
                if cyc:
                    return cyc
        state[node] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n, [n])
            if cyc:
                return cyc
    return None


def test_every_unit_has_a_layer():
    units = {unit_of("turbonerf." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS"


def test_library_folders_import_only_downward():
    upward = {
        f"{a} -> {b}": files
        for (a, b), files in unit_edges().items()
        if LAYERS.index(b) > LAYERS.index(a)
    }
    assert not upward, f"upward imports: {upward}"


def test_folders_form_no_cycle():
    assert find_cycle(unit_edges()) is None


def test_cli_calls_only_the_application_layer():
    targets = {b for (a, b) in unit_edges() if a == "cli"}
    assert targets <= {"app", "errors"}, targets


def test_library_never_reaches_the_application_layer():
    bad = {(a, b) for (a, b) in unit_edges() if a in LIBRARY and b in ("app", "cli")}
    assert not bad


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\n\ndef g():\n    from turbonerf.app.runs import load_trained\n    from ..cli import main\n    from . import paths\n")
    found = imports_of(f, ["turbonerf", "render"])
    assert {"turbonerf.app.runs", "turbonerf.cli", "turbonerf.render"} <= found
    assert {unit_of(m) for m in found} == {"app", "cli", "render"}


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) is not None
    assert find_cycle({("a", "b"): [], ("b", "c"): []}) is None


@pytest.mark.parametrize("folder", ["data", "samplers", "render", "bake", "engine", "viewer", "app"])
def test_no_module_cycle_inside_a_folder(folder):
    """Within a folder, modules form no cycle either (e.g. the scene and its parsers)."""
    edges = {}
    for path in (PACKAGE / folder).glob("*.py"):
        src = path.stem
        for mod in imports_of(path):
            parts = mod.split(".")
            if len(parts) >= 3 and parts[1] == folder and parts[2] != src:
                edges[(src, parts[2])] = []
    assert find_cycle(edges) is None
