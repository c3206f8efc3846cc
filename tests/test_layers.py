"""The floors of experiments/ import only downward, with no cycle and no function-level import dodging one.

engine < losses, store < report < drivers (the entry files experiments/train.py etc. sit on top). Read from the
source with ast, so the test holds for every module, imported by a test or not.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"engine": 0, "losses": 1, "store": 1, "report": 2, "drivers": 3}
PAPER_FOLDERS = ("age_estimation", "image_classification", "average_k")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import of a project module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend((f"{child.module}.{a.name}", in_function) for a in child.names)
                found.append((child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(m, f) for m, f in found if m.split(".")[0] in ("experiments", *PAPER_FOLDERS)]


def _graph() -> dict[str, list[tuple[str, bool]]]:
    files = [p for p in (ROOT / "experiments").rglob("*.py") if "__pycache__" not in p.parts]
    modules = {_module(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, in_function in _imports(ast.parse(path.read_text())):
            while target not in modules and "." in target:   # `from pkg import name` names an attribute
                target = target.rsplit(".", 1)[0]
            if target in modules or target.split(".")[0] in PAPER_FOLDERS:
                edges.append((target, in_function))
        graph[name] = edges
    return graph


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else None


def test_every_module_of_experiments_sits_on_a_floor_or_is_an_entry_file():
    graph = _graph()
    loose = [m for m in graph if _floor(m) is None and m != "experiments"]
    for m in loose:   # entry files: a docstring, imports from drivers and a __main__ guard, nothing else
        assert all(t.startswith("experiments.drivers") for t, _ in graph[m]), m


def test_floors_import_only_downward_and_no_paper_folder():
    graph = _graph()
    upward = [(a, b) for a, edges in graph.items() for b, _ in edges
              if _floor(a) is not None and (_floor(b) is None or _floor(b) > _floor(a))]
    assert upward == []


def test_no_import_cycle_and_no_function_level_project_import():
    graph = _graph()
    assert [(a, b) for a, edges in graph.items() for b, inner in edges if inner] == []
    state: dict[str, int] = {}

    def cycle_from(u: str, stack: list[str]) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v, _ in graph.get(u, ()):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v in graph and not state.get(v):
                found = cycle_from(v, stack)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    cycles = [c for m in sorted(graph) if not state.get(m) for c in [cycle_from(m, [])] if c]
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The graph reader itself: a fake engine module importing a driver is reported."""
    fake = tmp_path / "experiments"
    for floor in ("engine", "drivers"):
        (fake / floor).mkdir(parents=True)
        (fake / floor / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "low.py").write_text("def f():\n    from experiments.drivers import high\n")
    (fake / "drivers" / "high.py").write_text("from experiments.engine import low\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _graph()
    assert ("experiments.drivers.high", True) in graph["experiments.engine.low"]
    assert _floor("experiments.engine.low") == 0 and _floor("experiments.drivers.high") == 3
