"""The library's shape, held by tests (ARCHITECTURE.md draws it): layers that import only downward, no
import cycle, no import of the library hidden inside a function, modules readable in one sitting, and
one training step that every chapter wraps instead of copying."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "efftrain_lib"
MAX_LINES = 600

#: Layers, lowest first. A module may import modules of its own layer or of a lower one, never higher.
LAYERS = {
    "foundation": {"devices", "losses", "models", "data", "comparing", "timing", "lora_math", "number_formats",
                   "quant_math", "optimizer_math", "launcher", "sharding_math"},
    "loop": {"training"},
    "techniques": {"lora", "adapters", "checkpointing", "precision", "accumulation", "reference_models",
                   "quantization", "qlora", "nf4_reference", "optim8bit", "data_parallel", "sharding", "distributed"},
    "measuring": {"saved_tensors", "meter", "memory", "memory_replay", "memory_validation", "collectives"},
    "exploring": {"widgets", "liveplot", "memory_advisor", "lora_explorer", "checkpointing_explorer",
                  "precision_explorer", "accumulation_explorer", "memory_explorer", "qlora_explorer",
                  "distributed_runs", "sharding_runs", "distributed_train", "distributed_explorer", "planner",
                  "plan_runs", "capstone", "capstone_explorer", "fit"},
    "teaching": {"chapters", "grade", "grade_runner", "grade_child", "grading", "drill"},
}
RANK = {name: rank for rank, layer in enumerate(LAYERS.values()) for name in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top_level(name: str) -> str:
    return name.split(".")[0]


def library_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported efftrain_lib module, imported at module level?) for every import of the library,
    leaving out `if TYPE_CHECKING:` blocks (annotations only, never run)."""
    tree = ast.parse(path.read_text())
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    module_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("efftrain_lib"):
                target = node.module.removeprefix("efftrain_lib").lstrip(".")
            else:
                continue
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            targets = [n for n in names if n in MODULES] or ([target] if target in MODULES else [])
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("efftrain_lib.") for a in node.names if a.name.startswith("efftrain_lib.")]
        else:
            continue
        found += [(t, id(node) in module_level) for t in targets if t and t != own]
    return found


def test_every_module_has_a_layer():
    unplaced = sorted({top_level(name) for name in MODULES if name} - set(RANK))
    assert not unplaced, f"place these modules in a layer of LAYERS (and ARCHITECTURE.md): {unplaced}"


@pytest.mark.parametrize("name", [n for n in MODULES if n])
def test_imports_go_down_the_layers_and_none_hides_in_a_function(name):
    for target, at_module_level in library_imports(MODULES[name]):
        assert at_module_level, f"{name} imports efftrain_lib.{target} inside a function: import it at the top"
        if top_level(target) == top_level(name):
            continue
        assert RANK[top_level(target)] <= RANK[top_level(name)], (
            f"{name} ({_layer(name)}) imports {target} ({_layer(target)}): a layer may only import from "
            f"itself or the layers below it")


def _layer(name: str) -> str:
    return next(layer for layer, members in LAYERS.items() if top_level(name) in members)


def test_no_import_cycle():
    graph = {name: {t for t, _ in library_imports(path)} for name, path in MODULES.items() if name}
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(trail + [node, nxt])}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("name", [n for n in MODULES if n])
def test_modules_are_readable_in_one_sitting(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"efftrain_lib/{MODULES[name].relative_to(PACKAGE)} has {lines} lines (> {MAX_LINES})"


def _step_calls(path: Path) -> list[tuple[str, int]]:
    """Calls of `<optimizer or scaler>.step(...)` outside docstrings, with the function they sit in."""
    tree = ast.parse(path.read_text())
    calls = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                    and isinstance(node.func.value, ast.Name)
                    and any(word in node.func.value.id for word in ("optim", "opt", "scaler"))):
                calls.append((func.name, node.lineno))
    return calls


def test_one_training_step_in_the_library():
    """Only training.py steps an optimizer; the chapters' entry points (train_step, accumulation_step,
    GradientAccumulator, measure_step, the validation harness) wrap it. The loss scaler's own step()
    calls optimizer.step(): that is GradScaler's interface, not a training step."""
    steppers = {}
    for name, path in MODULES.items():
        if top_level(name) in LAYERS["teaching"]:
            continue  # graders build references by hand on purpose
        calls = [(f, line) for f, line in _step_calls(path) if not (name == "precision" and f == "step")]
        if calls:
            steppers[name] = calls
    assert set(steppers) == {"training"}, f"optimizer steps outside training.py: {steppers}"
