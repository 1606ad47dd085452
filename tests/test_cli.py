"""The `hovle` command line: the offline untrained default, streaming, and convert."""

import os
import subprocess
import sys

import pytest

from hovle.cli import main


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hovle.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_chat_default_model_is_labelled_and_streams(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (64, 48), "blue").save(image)
    result = run_cli("chat", "--image", str(image), "--max-new-tokens", "5", "What is this?")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "UNTRAINED" in result.stderr
    assert "hovle convert --input OpenGVLab/HoVLE" in result.stderr  # how to get the real model
    assert "OpenGVLab/HoVLE-hf" not in result.stderr  # no such Hub repository
    assert result.stdout.strip(), "the streamed reply goes to stdout"


@pytest.mark.slow
def test_chat_reports_bad_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = run_cli("chat", "--image", str(bad), "What is this?")
    assert result.returncode == 2
    assert "bad.png is not an image" in result.stderr


def test_convert_subcommand(fixture_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", "--input", str(fixture_dir / "original"), "--output", str(out), "--dtype", "float32"]) == 0
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert main(["chat", "--image", str(tmp_path / "missing.png"), "q"]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.png: no such file")


@pytest.mark.slow
def test_chat_int8_runs():
    result = run_cli("chat", "--int8", "--max-new-tokens", "3", "Hello?")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


@pytest.mark.slow
def test_chat_bf16_compiled_decoding_runs():
    result = run_cli("chat", "--dtype", "bfloat16", "--compile", "--max-new-tokens", "3", "Hello?")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("command", [[], ["chat"], ["demo"], ["convert"], ["export"], ["train"]])
def test_help_answers_without_importing_torch(command):
    code = (
        "import sys\nfrom hovle.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('no torch')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: hovle {' '.join(command)}".rstrip()) and "no torch" in result.stdout
