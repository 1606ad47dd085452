"""Packaging: the package imports and runs without flash-attn or a GPU; a converted folder carries exactly the remote
code it needs and loads where the package is not installed; importing the model touches neither the processor nor
transformers' global registries."""

import ast
import importlib.util
import json
import os
from pathlib import Path

import pytest
from helpers import child_report, run_child

import hovle

# Where the test process imports `hovle` from, handed to children that must import the same package.
PACKAGE_PARENT = str(Path(hovle.__file__).resolve().parents[1])
REMOTE_CODE = {"configuration_hovle.py", "modeling_hovle.py", "processing_hovle.py", "chat_hovle.py"}


@pytest.mark.slow
def test_runs_on_cpu_without_flash_attn():
    env = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": PACKAGE_PARENT}
    result = run_child("no_flash_attn_child.py", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_modules_do_not_import_flash_attn_anywhere():
    root = Path(__file__).resolve().parents[1]
    for path in (root / "hovle").rglob("*.py"):
        assert "import flash_attn" not in path.read_text(), path


def import_time_imports(path: Path) -> list[str]:
    """The modules a file imports when it is imported: every import outside function bodies (`.x` for relative)."""
    names, pending = [], list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            names += [f"{base}.{alias.name}" if node.module else base + alias.name for alias in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return names


def auto_map_modules(auto_map: dict) -> set[str]:
    """The module files an `auto_map` names (`module.Class`, a `repo--module.Class` form, or a [slow, fast] pair)."""
    modules = set()
    for value in auto_map.values():
        for reference in value if isinstance(value, list) else [value]:
            if reference:
                modules.add(reference.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return modules


@pytest.mark.slow
def test_converted_folder_ships_its_remote_code_and_loads_without_the_package(tiny_hub_folder, tmp_path):
    # Exactly the files auto_map and the chat layer need, and every auto_map entry names one of them.
    assert {path.name for path in tiny_hub_folder.glob("*.py")} == REMOTE_CODE
    auto_maps = {
        path.name: json.loads(path.read_text())["auto_map"]
        for path in tiny_hub_folder.glob("*.json")
        if "auto_map" in json.loads(path.read_text())
    }
    assert {"config.json", "processor_config.json"} <= set(auto_maps), sorted(auto_maps)
    for name, auto_map in auto_maps.items():
        assert auto_map and auto_map_modules(auto_map) <= REMOTE_CODE, (name, auto_map)

    # Loads, generates and chats with `import hovle` impossible and nothing of the checkout on the path.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    report = child_report(run_child("remote_code_child.py", tiny_hub_folder, env=env, cwd=tmp_path))
    assert report["hovle_blocked"] and report["hovle_modules"] == ["hovle"], report
    assert report["model"] == report["automodel"] == "HoVLEForConditionalGeneration"
    assert report["processor"] == "HoVLEProcessor"
    assert report["model_module"].startswith("transformers_modules.")
    assert report["processor_module"].startswith("transformers_modules.")
    assert set(report["remote_files"]) == REMOTE_CODE  # every shipped file is used
    assert len(report["generated"]) == 4
    assert isinstance(report["chat"], str)

    # The model module imports neither the processor nor the command line at import time...
    for file in ("modeling_hovle.py", "chat_hovle.py"):
        path = Path(importlib.util.find_spec(f"hovle.{file[:-3]}").origin)
        own = [name for name in import_time_imports(path) if name.startswith(".") or name.split(".")[0] == "hovle"]
        assert not [name for name in own if name.rsplit(".", 1)[-1] in {"processing_hovle", "cli"}], (file, own)
    # ...and importing it in a fresh process loads no processor and registers nothing with transformers.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": PACKAGE_PARENT}
    report = child_report(run_child("import_modeling_child.py", env=env, cwd=tmp_path))
    assert "hovle.processing_hovle" not in report["hovle_modules"] and "hovle.cli" not in report["hovle_modules"]
    assert "hovle.modeling_hovle" in report["hovle_modules"]
    assert report["after"] == report["before"]
