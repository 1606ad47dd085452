"""Every entry point takes an original release as it is (`hovle.release_loading` + `hovle.release_processing`):
the commands' one load path (`hovle chat`, `hovle demo`, app.py, lmms-eval through `load_for_inference`; `hovle train`
through `load_model_and_processor`), `pipeline` and `chat()` answer as on the converted folder, and what a command
writes from a release is a converted folder."""

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from hovle.cli import main
from hovle.conversion.to_transformers import convert
from hovle.loading import LoadError, load_model_and_processor
from hovle.testing import tiny_config, write_original_checkpoint, write_tiny_tokenizer

GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def release_and_converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    release = write_original_checkpoint(root / "release", tiny_config("pre"), seed=5)
    write_tiny_tokenizer(release)
    return release, convert(release, root / "converted", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.effect_noise((120, 80), 40).convert("RGB").save(path)
    return path


def test_command_load_path_holds_a_release_as_a_converted_model(release_and_converted, tmp_path):
    release, converted = release_and_converted
    model, processor = load_model_and_processor(release, dtype=torch.float32)
    reference, reference_processor = load_model_and_processor(converted, dtype=torch.float32)
    assert type(model.config).__name__ == "HoVLEConfig" and model.config.model_type == "hovle"
    assert type(processor).__name__ == "HoVLEProcessor"
    ours, theirs = model.state_dict(), reference.state_dict()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []
    text = "<|im_start|>user\nDescribe <image> please<|im_end|>"
    assert processor.tokenizer(text).input_ids == reference_processor.tokenizer(text).input_ids
    # What a command saves from it (`hovle train`) is a converted folder: our key layout, model type `hovle`.
    model.save_pretrained(tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["model_type"] == "hovle" and saved_config["architectures"] == ["HoVLEForConditionalGeneration"]
    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as saved:
        with safe_open(converted / "model.safetensors", "pt") as expected:
            assert set(saved.keys()) == set(expected.keys())


def test_trust_remote_code_on_a_release_is_refused_with_the_reason(release_and_converted):
    with pytest.raises(LoadError, match="original HoVLE release: its own code runs only on transformers 4.37-4.44"):
        load_model_and_processor(release_and_converted[0], trust_remote_code=True)


def chat_reply(model_folder, image, capsys) -> str:
    assert main(["chat", "--model", str(model_folder), "--image", str(image), "--max-new-tokens", "6", "Hi?"]) == 0
    return capsys.readouterr().out


def test_hovle_chat_answers_on_the_release_as_on_the_converted_folder(release_and_converted, image, capsys):
    release, converted = release_and_converted
    assert chat_reply(release, image, capsys) == chat_reply(converted, image, capsys)


def test_pipeline_and_chat_answer_on_the_release_as_on_the_converted_folder(release_and_converted, image):
    release, converted = release_and_converted
    replies = {}
    for name, folder in (("release", release), ("converted", converted)):
        kwargs = {} if name == "release" else {"trust_remote_code": True}
        pipe = pipeline("image-text-to-text", model=str(folder), dtype=torch.float32, **kwargs)
        messages = [{"role": "user", "content": [{"type": "image", "url": str(image)}, {"type": "text", "text": "Hi"}]}]
        piped = pipe(text=messages, generate_kwargs=GREEDY, return_full_text=False)[0]["generated_text"]
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, **kwargs)
        processor = AutoProcessor.from_pretrained(folder, **kwargs)
        pixel_values = processor.image_processor(Image.open(image), return_tensors="pt")["pixel_values"]
        chatted = model.chat(processor.tokenizer, pixel_values, "Hi", dict(GREEDY))
        replies[name] = (piped, chatted)
    assert replies["release"] == replies["converted"]
