"""Fixtures of the demo and evaluation tests (images); their helpers are in `ui_helpers.py`. The optional parts
(gradio, Selenium with Chromium, lmms-eval) skip their tests where they are not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((120, 80)).save(path)
    return path


@pytest.fixture
def broken_image(tmp_path) -> Path:
    path = tmp_path / "broken.png"
    path.write_text("this is not an image")
    return path
