"""The demo's model side (`hovle.demo.ChatEngine`, no gradio needed) and the `hovle demo` command line: streamed
replies equal the pipeline's greedy reply, multi-turn prompts carry the history, bad inputs become `DemoError`s."""

import os
import subprocess
import sys

import pytest
from PIL import Image
from ui_helpers import pipeline_greedy_reply

from hovle.demo import DemoError, GenerationSettings, Turn, load_engine


@pytest.fixture(scope="module")
def engine(tiny_hub_folder):
    return load_engine(str(tiny_hub_folder), device="cpu")


def test_streamed_reply_grows_and_equals_pipeline_greedy(engine, tiny_hub_folder, photo):
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0)
    pieces = list(engine.stream([Turn("What is in the picture?", [str(photo)])], settings))
    assert len(pieces) > 1, "the reply should arrive in several pieces"
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:], strict=False)), pieces
    expected = pipeline_greedy_reply(tiny_hub_folder, [Image.open(photo)], "What is in the picture?", 12)
    assert expected.strip() and pieces[-1] == expected


def test_release_engine_streams_the_converted_folders_reply(tiny_hub_folder, photo):
    """`hovle demo --model <release>` (and app.py's HOVLE_MODEL): the release the fixture was converted from, loaded
    as it is, streams the converted folder's greedy reply."""
    release = load_engine(str(tiny_hub_folder.parent / "original"), device="cpu")
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0)
    pieces = list(release.stream([Turn("What is in the picture?", [str(photo)])], settings))
    expected = pipeline_greedy_reply(tiny_hub_folder, [Image.open(photo)], "What is in the picture?", 12)
    assert expected.strip() and pieces[-1] == expected


def test_second_turn_sees_the_first(engine, photo):
    settings = GenerationSettings(max_new_tokens=6)
    first = Turn("Describe it.", [str(photo)], reply="a round thing")
    second = Turn("And its colour?", [str(photo)])
    prompt = engine.processor.apply_chat_template(
        engine.messages([first, second]), add_generation_prompt=True, tokenize=False
    )
    assert prompt.count("<image>") == 2 and "a round thing<|im_end|>" in prompt
    assert prompt.index("Describe it.") < prompt.index("a round thing") < prompt.index("And its colour?")
    inputs = engine.prepare([first, second], settings)
    direct = engine.processor(images=[str(photo)] * 2, text=prompt, max_tiles=6, return_tensors="pt")
    assert inputs["input_ids"].tolist() == direct["input_ids"].tolist()
    assert inputs["pixel_values"].shape == direct["pixel_values"].shape


def test_temperature_zero_is_greedy_and_above_samples():
    assert GenerationSettings(8, 0.0).generate_kwargs() == {"max_new_tokens": 8, "do_sample": False}
    assert GenerationSettings(8, 0.7).generate_kwargs() == {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7}


def test_bad_inputs_become_demo_errors(engine, photo, broken_image):
    settings = GenerationSettings(max_new_tokens=4)
    with pytest.raises(DemoError, match="broken.png is not an image"):
        list(engine.stream([Turn("What?", [str(broken_image)])], settings))
    with pytest.raises(DemoError, match=f"Too many images: {engine.max_images + 1} in this conversation"):
        list(engine.stream([Turn("What?", [str(photo)] * (engine.max_images + 1))], settings))
    near_limit = GenerationSettings(max_new_tokens=engine.context_limit - 10)
    with pytest.raises(DemoError, match="Too long"):
        list(engine.stream([Turn("describe the picture " * 20)], near_limit))


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_demo_help_imports_neither_torch_nor_gradio():
    code = (
        "import sys\nfrom hovle.cli import main\ntry:\n    main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'gradio' not in sys.modules, 'heavy import'\nprint('light')"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: hovle demo") and "--share" in result.stdout and "light" in result.stdout


def test_demo_without_gradio_is_one_error_line():
    code = "import sys\nsys.modules['gradio'] = None\nfrom hovle.cli import main\nsys.exit(main(['demo']))"
    result = run_python(code)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: gradio is not installed: pip install 'hovle[demo]'"
