"""The package's floor plan holds: imports run one way, down the layers, and never in a circle.

Every ``import`` in every module counts, at module level or inside a function, and also under
``TYPE_CHECKING``: a lazy import that dodges a cycle is still a cycle.
"""

import ast
from pathlib import Path

import allscan

PACKAGE = Path(allscan.__file__).parent

LAYERS = (
    ("allscan", "allscan._tf", "allscan._libtiff", "allscan.fileio", "allscan.paths"),
    ("allscan.images",),
    ("allscan.models",),
    ("allscan.domain", "allscan.results"),
    ("allscan.scoring",),
    ("allscan.run", "allscan.training"),
    ("allscan.api",),
    ("allscan.cli",),
    ("allscan.__main__",),
)
"""Bottom to top. A module may import from a lower layer or from its own unit; units that share a
layer are independent of each other."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The allscan modules that ``path`` imports (``from allscan.x import y`` counts ``allscan.x.y`` when
    that is a module, else ``allscan.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "allscan"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "allscan":
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or {node.module}
    return {name for name in found if name in modules}


def _unit(module: str) -> tuple[int, str]:
    """The layer a module lies in and the unit (the longest prefix named in LAYERS) it belongs to."""
    best = None
    for rank, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (rank, unit)
    assert best is not None, f"{module} lies in no layer: add it to LAYERS"
    return best


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_module_lies_in_a_layer():
    for module in _modules():
        _unit(module)


def test_no_import_runs_up_or_across_a_layer():
    wrong = []
    for module, imported in _graph().items():
        rank, unit = _unit(module)
        for target in imported:
            target_rank, target_unit = _unit(target)
            if target_unit != unit and target_rank >= rank:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_engines_see_only_the_job_and_the_committer():
    graph = _graph()
    allowed = {"allscan.run.job", "allscan.run.committer", *LAYERS[0]}
    for module, imported in graph.items():
        if module.startswith("allscan.run.engines"):
            outside = {t for t in imported if not t.startswith("allscan.run.engines")} - allowed
            assert not outside, f"{module} imports {sorted(outside)}"


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself can fail: a module of a low layer importing a high one is caught."""
    modules = {"allscan.models.ensemble": tmp_path / "e.py", "allscan.scoring.vote": tmp_path / "v.py"}
    (tmp_path / "e.py").write_text("def f():\n    from allscan.scoring import vote\n")
    imported = _imports(tmp_path / "e.py", modules)
    assert imported == {"allscan.scoring.vote"}
    assert _unit("allscan.scoring.vote")[0] > _unit("allscan.models.ensemble")[0]
