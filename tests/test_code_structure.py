"""The package's shape stays maintainable: no two modules of `hovle/` import each other (at module level or inside a
function), no function is longer than 80 lines, and `HoVLEModel.forward` reads as "embed, then run the LLM"."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hovle"
MAX_FUNCTION_LINES = 80
MAX_BASE_FORWARD_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` (source text `source`) imports anywhere in its body, at module level
    or inside a function, relative or absolute (`from . import x` included), or names as a string that is exactly a
    module's dotted name (what `importlib.import_module` dispatch tables hold)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return {module for module in found if module in known and module != name}


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_the_import_checker_sees_relative_and_function_level_imports():
    """The checker itself: lazy relative imports inside a function count, for modules and packages."""
    source = (
        "import os\ndef f():\n    from .cli import main\n    from . import demo\n    from ..loading import x\n"
        "COMMANDS = {'chat': 'hovle.training.cli'}\n"
    )
    known = {"hovle.cli", "hovle.demo", "hovle.loading", "hovle.training.cli", "hovle.training.demo"}
    assert imported_modules(source, "hovle.training.train", False, known) == {
        "hovle.training.cli",
        "hovle.training.demo",
        "hovle.loading",
    }
    assert imported_modules(source, "hovle", True, known) == {"hovle.cli", "hovle.demo", "hovle.training.cli"}


def test_no_two_package_modules_import_each_other():
    modules = all_modules()
    known = set(modules)
    graph = {
        name: imported_modules(path.read_text(), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules (to re-export) is not a cycle of two concerns.
    mutual = sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set()) and not (b.startswith(a + ".") or a.startswith(b + "."))
    )
    assert not mutual, f"modules importing each other: {mutual}"


def function_lengths():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node.end_lineno - start + 1


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_function_is_longer_than_the_limit(limit):
    too_long = sorted(f"{where} ({lines} lines)" for where, lines in function_lengths() if lines > limit)
    assert not too_long, f"functions over {limit} lines: {too_long}"


def test_the_base_model_forward_is_short():
    tree = ast.parse((PACKAGE / "modeling_hovle.py").read_text())
    model = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "HoVLEModel")
    forward = next(node for node in model.body if isinstance(node, ast.FunctionDef) and node.name == "forward")
    start = min([forward.lineno] + [decorator.lineno for decorator in forward.decorator_list])
    assert forward.end_lineno - start + 1 <= MAX_BASE_FORWARD_LINES
