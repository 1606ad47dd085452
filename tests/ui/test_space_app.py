"""`app.py` as a Hugging Face Space runs it: a Python with only this package and gradio (`HOVLE_SPACE_PYTHON`, made by
`scripts/install_demo.sh`), on the CPU, with no HOVLE_MODEL: the embedded demo model; the page must come up and carry
the label saying what that model is."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ui_helpers import free_port, stop, wait_for_http

pytestmark = pytest.mark.slow
APP = Path(__file__).resolve().parents[2] / "app.py"
SPACE_PYTHON = os.environ.get("HOVLE_SPACE_PYTHON")


@pytest.mark.skipif(not SPACE_PYTHON, reason="HOVLE_SPACE_PYTHON (a venv with the package and gradio only) not set")
def test_app_py_serves_the_page_with_only_the_package_and_gradio(tmp_path):
    python = str(Path(SPACE_PYTHON).absolute())
    missing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('selenium', 'lmms_eval', 'vllm') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]", "the Space environment must hold only the package and gradio"
    space = tmp_path / "space"
    space.mkdir()
    shutil.copy(APP, space / "app.py")  # a Space repository: app.py alone, the package installed
    port = free_port()
    env = {
        **os.environ,
        "HOVLE_MODEL": "",  # empty counts as unset: the embedded demo model
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "CUDA_VISIBLE_DEVICES": "",
    }
    log = space / "app.log"
    with log.open("w") as output:
        process = subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        config = json.loads(wait_for_http(f"http://127.0.0.1:{port}/config", process, log))
        labels = [
            component["props"].get("value")
            for component in config["components"]
            if component.get("props", {}).get("elem_id") == "hovle-demo-model"
        ]
        assert len(labels) == 1, json.dumps(config)[:3000]
        assert "embedded demo model" in labels[0] and "trained on synthetic shapes" in labels[0], labels
        assert "not HoVLE's weights" in labels[0] and "UNTRAINED" not in json.dumps(config), labels
    finally:
        stop(process)
