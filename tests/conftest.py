"""Pytest fixtures used across the test modules; plain helpers live in `helpers.py`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from pathlib import Path

import pytest
from helpers import FIXTURE

from hovle.conversion.to_transformers import convert
from hovle.testing import tiny_config


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert (FIXTURE / "original" / "config.json").exists(), f"golden fixture not found at {FIXTURE}"
    return FIXTURE


@pytest.fixture
def source(tmp_path, fixture_dir) -> Path:
    """A writable copy of the golden fixture's tiny original-layout checkpoint (no tokenizer)."""
    folder = tmp_path / "source"
    shutil.copytree(fixture_dir / "original", folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


@pytest.fixture(scope="session")
def converted_fixture(tmp_path_factory, fixture_dir) -> Path:
    out = tmp_path_factory.mktemp("converted") / "hovle-tiny"
    return convert(fixture_dir / "original", out, dtype="float32", progress=False)


@pytest.fixture(scope="session")
def tiny_hub_folder(tmp_path_factory) -> Path:
    """A converted tiny model WITH tokenizer and processor (the fixture has none): what a Hub repo holds."""
    from hovle.testing import write_original_checkpoint, write_tiny_tokenizer

    root = tmp_path_factory.mktemp("hub")
    source = write_original_checkpoint(root / "original", tiny_config("pre"), seed=0)
    write_tiny_tokenizer(source)
    return convert(source, root / "hovle-tiny", dtype="float32", progress=False)
