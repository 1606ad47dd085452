"""The `hovle` command line: the embedded demo model when no `--model` is given (a note says what it is, and it answers
the sample image), streaming, and convert."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hovle.cli import main
from hovle.shapes_task import SAMPLE_KIND, SAMPLE_QUESTION, is_correct, sample_image

SAMPLE_PNG = Path(__file__).resolve().parents[1] / "scripts" / "sample.png"


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
    notes = [line for line in result.stderr.splitlines() if "No --model given" in line]
    assert len(notes) == 1, result.stderr  # one line
    (note,) = notes
    assert "embedded demo model" in note and "trained on synthetic shapes" in note and "hovle.shapes_task" in note
    assert "not HoVLE's weights" in note and "--model OpenGVLab/HoVLE" in note  # what it is, how to get the real one
    assert "UNTRAINED" not in result.stderr and "OpenGVLab/HoVLE-hf" not in result.stderr  # no such Hub repository
    assert result.stdout.strip(), "the streamed reply goes to stdout"
    assert "No --model given" not in result.stdout, "the note goes to stderr, the reply alone to stdout"


@pytest.mark.slow
def test_chat_without_model_answers_the_sample_image():
    """`make demo`'s command: the embedded demo model names what `scripts/sample.png` shows, as the generator drew it."""
    from PIL import Image

    sample = sample_image()
    shipped = Image.open(SAMPLE_PNG).convert("RGB")
    assert shipped.tobytes() == sample.image.tobytes(), "python -m hovle.shapes_task --write-sample scripts/sample.png"
    result = run_cli("chat", "--image", str(SAMPLE_PNG), SAMPLE_QUESTION)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = sample.answer(SAMPLE_KIND)
    assert is_correct(result.stdout, answer), (result.stdout, answer)


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


# -- hovle chat: what is wrong is said first, in one line --------------------------------------------------------------
def refuse_to_load(*args, **kwargs):
    raise AssertionError("the model was loaded (or built) before the images were checked")


@pytest.mark.parametrize("with_model", [True, False])
def test_chat_checks_images_before_loading_the_model(tmp_path, monkeypatch, capsys, converted_fixture, with_model):
    import hovle.loading

    # Without --model too: the embedded release loads through the same function.
    monkeypatch.setattr(hovle.loading, "load_model_and_processor", refuse_to_load)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    model = ["--model", str(converted_fixture)] if with_model else []
    assert main(["chat", *model, "--image", str(bad), "What is this?"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "bad.png is not an image" in err, err


@pytest.mark.parametrize("with_model", [True, False])
def test_chat_loads_the_embedded_release_only_without_model(tmp_path, monkeypatch, capsys, with_model):
    """The commands' one load path gets `--model` when given (the embedded release is never loaded then, and no note
    is printed), and the embedded release's folder otherwise."""
    import hovle.loading

    loaded = []

    def record(path, *args, **kwargs):
        loaded.append(Path(path))
        raise hovle.loading.LoadError("stopped before loading")

    monkeypatch.setattr(hovle.loading, "load_model_and_processor", record)
    model = tmp_path / "some-model"
    assert main(["chat", *(["--model", str(model)] if with_model else []), "Hello?"]) == 2
    err = capsys.readouterr().err
    assert loaded == [model if with_model else hovle.embedded_release()], loaded
    assert ("No --model given" in err) is not with_model, err


def test_chat_on_a_folder_without_tokenizer_names_the_cause_and_the_fix(converted_fixture, capsys):
    assert main(["chat", "--model", str(converted_fixture), "Hello?"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[hovle]")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {converted_fixture} has no tokenizer/processor"), lines
    assert "hovle convert --tokenizer DIR" in lines[0] and "preprocessor_config.json" not in lines[0]


def test_chat_on_a_folder_whose_weights_do_not_match_its_config(tiny_hub_folder, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(tiny_hub_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["chat", "--model", str(folder), "Hello?"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    layer = config["text_config"]["num_hidden_layers"] - 1
    assert last.startswith(f"error: {folder}: the weights do not match its config.json"), last
    assert f"missing from the weights: model.language_model.layers.{layer} (" in last, last


@pytest.mark.parametrize(
    "command, subject",
    [("convert", "Convert the original HoVLE release"), ("export", "back in the original release layout")],
)
def test_convert_and_export_help_describe_the_command(command, subject, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]  # argparse: usage, a blank line, the description, a blank line, options
    assert not description.startswith("options:") and subject in " ".join(description.split()), out


@pytest.mark.parametrize("user_error", [True, False])
def test_only_user_errors_print_as_one_line(tmp_path, monkeypatch, capsys, user_error):
    """A `HoVLEUserError` (any of the package's user-error types) is one `error:` line with status 2; a bare
    `ValueError` is a bug and keeps its traceback (it propagates out of `main`)."""
    import hovle.conversion.to_original as to_original
    from hovle.conversion.checkpoint_io import CheckpointError

    def failing_run(args):
        raise CheckpointError("the input is wrong") if user_error else ValueError("an internal bug")

    monkeypatch.setattr(to_original, "run", failing_run)
    argv = ["export", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    if user_error:
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == "error: the input is wrong"
    else:
        with pytest.raises(ValueError, match="an internal bug"):
            main(argv)
