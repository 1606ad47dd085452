"""The vLLM plugin's tests. They run in the vLLM environment (`make test-vllm`: `scripts/install_vllm.sh` builds it,
vLLM's CPU build with its own transformers pin); elsewhere they are skipped."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vllm_helpers import LAYOUTS, build_served_folders

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def served_folders(tmp_path_factory) -> dict[str, Path]:
    return build_served_folders(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session", params=LAYOUTS)
def served_folder(request, served_folders) -> Path:
    """What vLLM serves, once per layout: the converted folder, and the release it was converted from, as it is."""
    return served_folders[request.param]


@pytest.fixture(scope="session")
def converted_folder(served_folders) -> Path:
    """The reference: the converted folder, loaded with transformers."""
    return served_folders["converted"]


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """Random-noise PNGs whose sizes give 1, 3, 4 and 7 tiles (448 px tiles, 6 at most, plus a thumbnail)."""
    folder = tmp_path_factory.mktemp("images")
    sizes = {"square": (448, 448), "wide": (896, 448), "strip": (1344, 448), "odd": (500, 380)}
    files = {}
    for seed, (name, (width, height)) in enumerate(sizes.items()):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        files[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(files[name])
    return files


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory) -> dict[str, str]:
    """Environment for vLLM child processes: its caches in a temporary folder, offline."""
    cache = tmp_path_factory.mktemp("vllm-cache")
    return {**os.environ, "VLLM_CACHE_ROOT": str(cache), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
