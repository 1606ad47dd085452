"""Bad inputs a user reaches through the processor, the model, generate() and the `hovle` command line: each gets one
clear message naming the problem (and the CLI never prints a traceback for it)."""

import json
import logging

import numpy as np
import pytest
import torch
from helpers import build_model, image_prompt
from PIL import Image

from hovle.cli import main
from hovle.loading import LoadError, load_model_and_processor
from hovle.processing_hovle import HoVLEProcessor


@pytest.fixture(scope="module")
def processor(tiny_hub_folder) -> HoVLEProcessor:
    return HoVLEProcessor.from_pretrained(tiny_hub_folder)


@pytest.fixture(scope="module")
def model():
    return build_model("pre", "sdpa")


# -- processor ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tiles", [0, -2, 2.5, True, "3"])
def test_non_positive_or_non_integer_max_tiles(processor, max_tiles):
    with pytest.raises(ValueError, match=r"max_tiles \(max_patches\) must be a whole number of at least 1"):
        processor(images=Image.new("RGB", (64, 64)), text="<image>", max_tiles=max_tiles)


@pytest.mark.parametrize("token", ["<IMG_CONTEXT>", "<img>", "</img>"])
def test_image_tokens_typed_in_the_text_are_refused(processor, token):
    with pytest.raises(ValueError, match=f"The text contains '{token}', which only the processor writes"):
        processor(text=f"What is {token} here?")


def test_an_empty_batch_is_refused(processor):
    with pytest.raises(ValueError, match="empty batch"):
        processor(text=[])


def test_float_and_channel_first_arrays_are_images(processor):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    reference = processor(images=pixels, text="<image>", return_tensors="np")["pixel_values"]
    as_float = processor(images=pixels.astype(np.float32) / 255.0, text="<image>", return_tensors="np")
    channel_first = processor(images=pixels.transpose(2, 0, 1).copy(), text="<image>", return_tensors="np")
    np.testing.assert_allclose(as_float["pixel_values"], reference, atol=1e-6)
    np.testing.assert_array_equal(channel_first["pixel_values"], reference)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 6, 2), np.uint8), "An image array must be"),
        (np.zeros((2, 3, 4, 5), np.uint8), "An image array must be"),
        (np.zeros((0, 5, 3), np.uint8), "An image array must be"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((4, 4, 3), np.complex64), "Unsupported image array dtype complex64"),
    ],
)
def test_bad_image_arrays(processor, array, message):
    with pytest.raises(ValueError, match=message):
        processor(images=array, text="<image>")


def test_unsupported_image_object(processor):
    with pytest.raises(ValueError, match="Unsupported image input of type dict"):
        processor(images={"not": "an image"}, text="<image>")


def test_a_prompt_longer_than_the_context_warns(processor, caplog):
    long_text = "word " * (processor.tokenizer.model_max_length + 10)
    with caplog.at_level(logging.WARNING):
        processor(text=long_text)
    assert "longer than the specified maximum sequence length" in caplog.text


# -- model and generate() -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", [1024, 50_000, -1])
def test_ids_outside_the_vocabulary(model, bad_id):
    with pytest.raises(
        ValueError, match=r"input_ids holds 1 id\(s\) outside the vocabulary 0..1023, e.g. " + str(bad_id)
    ):
        model(input_ids=torch.tensor([[1, 5, bad_id]]))


@pytest.mark.parametrize("shape", [(0, 4), (1, 0)])
def test_empty_prompts(model, shape):
    with pytest.raises(ValueError, match=r"The prompt must be a non-empty \(batch, sequence\) batch"):
        model(input_ids=torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("shape", [(3, 56, 56), (1, 4, 56, 56)])
def test_pixel_values_of_the_wrong_rank_or_channels(model, shape):
    ids = torch.tensor([image_prompt([5], [1], [6])])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(tiles, 3, height, width\)"):
        model(input_ids=ids, pixel_values=torch.zeros(shape))


@pytest.mark.parametrize("size", [(100, 100), (56, 28)])
def test_tiles_of_another_size(model, size):
    ids = torch.tensor([image_prompt([5], [1], [6])])
    with pytest.raises(
        ValueError, match=rf"pixel_values tiles are {size[0]}x{size[1]} pixels but this model's tiles are 56x56"
    ):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, *size))


def test_more_tiles_than_image_tokens(model):
    ids = torch.tensor([image_prompt([5], [1], [6])])
    with pytest.raises(
        ValueError, match=r"The prompt has 4 image tokens .* but the 2 image tiles give 8 image features"
    ):
        model(input_ids=ids, pixel_values=torch.zeros(2, 3, 56, 56))


def test_image_tokens_without_images(model):
    ids = torch.tensor([image_prompt([5], [1], [6])])
    with pytest.raises(ValueError, match=r"The prompt has 4 image tokens .* but no pixel_values were given"):
        model.generate(input_ids=ids, max_new_tokens=1)


def test_a_prompt_longer_than_the_context_warns_in_the_model(caplog):
    model = build_model("pre", "sdpa")
    model.config.text_config.max_position_embeddings = 8
    with caplog.at_level(logging.WARNING):
        model(input_ids=torch.tensor([[1] + [5] * 10]))
    assert "more than the model's context of 8" in caplog.text


# -- loading and the command line ---------------------------------------------------------------------------------
def test_loading_a_missing_folder(tmp_path):
    with pytest.raises(LoadError, match="no such folder"):
        load_model_and_processor(tmp_path / "nowhere")


def test_loading_an_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match=r"Cannot load someone/not-a-model \(offline: HF_HUB_OFFLINE is set\)"):
        load_model_and_processor("someone/not-a-model")


def test_loading_a_release_without_tokenizer_names_the_missing_files(fixture_dir):
    with pytest.raises(
        LoadError, match=r"a HoVLE release without its tokenizer \(tokenizer.model and tokenizer_config"
    ):
        load_model_and_processor(fixture_dir / "original")


def test_loading_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LoadError, match=r"holds a 'llama' model, not a HoVLE model"):
        load_model_and_processor(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--max-new-tokens", "0", "q"], "argument --max-new-tokens: must be at least 1, got 0"),
        (["chat", "--max-tiles", "-1", "q"], "argument --max-tiles: must be at least 1, got -1"),
        (["chat", "--max-new-tokens", "ten", "q"], "argument --max-new-tokens: 'ten' is not a whole number"),
        (["train", "--model", "m", "--data", "d", "--stage", "4", "--output", "o"], "argument --stage: invalid choice"),
        (["convert", "--input", "x"], "the following arguments are required: --output"),
    ],
)
def test_cli_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--model", "/no/such/model", "q"], "error: /no/such/model: no such folder"),
        (["chat", "--model", "someone/not-a-model", "q"], "error: Cannot load someone/not-a-model (offline"),
        (["chat", "--device", "cuda", "q"], "CUDA is not available here"),
        (["chat", "--device", "tpu-ish", "q"], "--device 'tpu-ish' is not a device"),
        (["chat", "--image", "/no/such.png", "q"], "error: --image /no/such.png: no such file"),
        (["convert", "--input", "/no/such/ckpt", "--output", "/tmp/x"], "error:"),
    ],
)
def test_cli_user_errors_are_one_line(capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


# -- the model's own checks, called directly -----------------------------------------------------------------------
@pytest.mark.parametrize("loc", ["pre", "post"])
def test_image_token_count_mismatch_names_both_counts(loc):
    model = build_model(loc)
    ids = torch.tensor([image_prompt([5], [2], [6])])  # 8 placeholders
    with pytest.raises(ValueError, match=r"8 image tokens.*3 image tiles give 12 image features"):
        model(input_ids=ids, pixel_values=torch.randn(3, 3, 56, 56))


def test_image_tokens_without_pixels():
    model = build_model()
    with pytest.raises(ValueError, match=r"4 image tokens.*no pixel_values"):
        model(input_ids=torch.tensor([image_prompt([5], [1], [6])]))


def test_wrong_pixel_shape():
    model = build_model()
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(tiles, 3, height, width\)"):
        model(input_ids=torch.tensor([image_prompt([5], [1], [6])]), pixel_values=torch.randn(1, 56, 56))
