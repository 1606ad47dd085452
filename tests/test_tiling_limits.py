"""Tile budgets: the grid search equals InternVL's for every size and budget, runs in linear time, and a budget
above `MAX_TILES_LIMIT` is refused by the processor, the CLI and the vLLM plugin's option check; 16-bit images."""

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from hovle.conversion.tokenizer import convert_tokenizer
from hovle.processing_hovle import MAX_TILES_LIMIT, _grids_in_set_order, build_processor, closest_grid
from hovle.testing import closest_grid as reference_closest_grid
from hovle.testing import tiny_config, write_tiny_tokenizer


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    return build_processor(convert_tokenizer(folder), tiny_config(embedding={"image_size": 448, "patch_size": 14}))


def test_limit_is_the_context_in_tiles():
    # The release: 32768 LLM positions, 256 tokens per tile, the thumbnail on top of the tiles.
    assert 256 * (MAX_TILES_LIMIT + 1) <= 32768 < 256 * (MAX_TILES_LIMIT + 2)


@pytest.mark.parametrize(("min_tiles", "max_tiles"), [(1, 1), (1, 6), (2, 9), (4, 4), (3, 20), (5, 30), (1, 40)])
def test_set_order_is_internvls(min_tiles, max_tiles):
    internvl = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    assert _grids_in_set_order(min_tiles, max_tiles) == list(internvl)


def test_grid_equals_reference_everywhere():
    # Every size up to 24 x 24 (ties of all kinds, including equally close grids of one area with min_tiles > 1,
    # where InternVL's set order decides), three tile sizes (the replacement rule on and off), many budgets.
    for min_tiles, max_tiles in [(1, 1), (1, 2), (1, 6), (1, 12), (1, 24), (2, 8), (4, 4), (4, 9), (6, 7), (8, 9)]:
        for width in range(1, 25):
            for height in range(1, 25):
                for tile in (1, 4, 448):
                    expected = reference_closest_grid(width, height, min_tiles, max_tiles, tile)
                    got = closest_grid(width, height, min_tiles, max_tiles, tile)
                    assert got == expected, (width, height, min_tiles, max_tiles, tile)


def test_grid_equals_reference_on_random_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(1, 5000, 2))
        max_tiles = int(rng.integers(1, 60))
        tile = int(rng.choice([14, 448]))
        expected = reference_closest_grid(width, height, 1, max_tiles, tile)
        assert closest_grid(width, height, 1, max_tiles, tile) == expected, (width, height, max_tiles, tile)


def test_grid_search_is_not_quadratic():
    # 30000 tiles took 31 s with the quadratic scan; linear it is a fraction of that (generous bound for busy CPUs).
    start = time.perf_counter()
    closest_grid(1, 1, 1, 30000, 448)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("max_tiles", [MAX_TILES_LIMIT + 1, 30000, 10**6])
def test_processor_refuses_budget_above_limit(processor, max_tiles):
    message = rf"max_tiles \(max_patches\) is {max_tiles}, above the limit of {MAX_TILES_LIMIT}"
    with pytest.raises(ValueError, match=message):
        processor(images=Image.new("RGB", (1, 1)), text="<image>", max_tiles=max_tiles)
    with pytest.raises(ValueError, match=message):
        processor(images=Image.new("RGB", (1, 1)), text="<image>", max_patches=max_tiles)


def test_processor_accepts_the_limit(processor):
    image = Image.new("RGB", (448 * MAX_TILES_LIMIT, 448))
    assert processor.num_tiles(image.width, image.height, MAX_TILES_LIMIT) == MAX_TILES_LIMIT + 1
    cols, rows = processor.grid(image.width, image.height, MAX_TILES_LIMIT)
    assert (cols, rows) == reference_closest_grid(image.width, image.height, 1, MAX_TILES_LIMIT, 448)


@pytest.mark.parametrize("size", [(1, 1), (897, 448), (2000, 300), (300, 2000), (1000, 1000)])
def test_num_tiles_is_what_tile_image_makes(processor, size):
    image = Image.new("RGB", size, (10, 20, 30))
    for max_tiles in (1, 6, 12):
        assert len(processor.tile_image(image, max_tiles=max_tiles)) == processor.num_tiles(*size, max_tiles)


@pytest.mark.parametrize("command", ["chat", "train"])
def test_cli_refuses_budget_above_limit(command):
    result = subprocess.run(
        [sys.executable, "-m", "hovle.cli", command, "--max-tiles", "1000000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"hovle {command}: error: argument --max-tiles: max_tiles (max_patches) is 1000000, above the limit of "
        f"{MAX_TILES_LIMIT} (the image tokens of more tiles would not fit the LLM's 32768-token context)"
    )
    assert "Traceback" not in result.stderr


def grey_8_bit():
    return np.random.default_rng(3).integers(0, 256, (60, 80), np.uint8)


def test_uint16_array_is_scaled_like_8_bits(processor):
    grey = grey_8_bit()
    expected = processor(images=Image.fromarray(grey), text="<image>", return_tensors="np")["pixel_values"]
    wide = grey.astype(np.uint16) * 257  # the same picture in 16 bits
    for image in (wide, np.stack([wide] * 3, axis=-1), Image.fromarray(wide)):
        got = processor(images=image, text="<image>", return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(got, expected)


def test_wide_integer_array_outside_8_bits_is_refused(processor):
    array = grey_8_bit().astype(np.int32) * 1000
    with pytest.raises(ValueError, match=r"The int32 image array holds values from 0 to \d+, outside 0\.\.255"):
        processor(images=array, text="<image>")


def test_wide_integer_array_within_8_bits_is_kept(processor):
    grey = grey_8_bit()
    expected = processor(images=grey, text="<image>", return_tensors="np")["pixel_values"]
    got = processor(images=grey.astype(np.int64), text="<image>", return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(got, expected)


# -- the model's generate path --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixel_values_are_refused(bad):
    import torch
    from helpers import build_model, image_prompt

    model = build_model()
    ids = torch.tensor([image_prompt([5, 6], [1], [7])])
    pixels = torch.zeros(1, 3, 56, 56)
    pixels[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="^pixel_values holds NaN or infinite values"):
        model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_max_new_tokens_is_capped_at_the_context(cache_implementation, caplog):
    import torch
    from helpers import build_model
    from transformers.utils import logging as hf_logging

    model = build_model()
    context = model.config.text_config.max_position_embeddings
    ids = torch.tensor([[1, 5, 6, 7]])
    generation_config = model.generation_config
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            prepared = model._prepare_generated_length(
                generation_config=type(generation_config)(max_new_tokens=10**9),
                has_default_max_length=False,
                has_default_min_length=True,
                model_input_name="input_ids",
                inputs_tensor=ids,
                input_ids_length=ids.shape[1],
            )
    finally:
        hf_logging.disable_propagation()
    assert prepared.max_length == context
    assert prepared.max_new_tokens == context - ids.shape[1]
    assert (
        f"Generating at most {context - 4} new tokens instead of {10**9}: the prompt (4 tokens) and the reply must fit "
        f"the model's context of {context} tokens"
    ) in caplog.text
    # And generate() itself takes the cap: the static cache is sized to the context, not to 10**9 tokens.
    if cache_implementation == "static":
        model.generation_config.eos_token_id = None
        out = model.generate(
            input_ids=ids,
            max_new_tokens=10**9,
            max_time=0.5,
            do_sample=False,
            cache_implementation="static",
            return_dict_in_generate=True,
        )
        cache = getattr(out, "cache", None) or out.past_key_values  # the field's name differs by version
        assert cache.layers[0].max_cache_len <= context


def test_demo_refuses_budget_above_limit(tmp_path):
    # The page's slider stops at 12, but its API takes any number: the processor's refusal becomes the page's error.
    from helpers import build_model

    from hovle.demo import ChatEngine, DemoError, GenerationSettings, Turn

    folder = write_tiny_tokenizer(tmp_path / "tok")
    processor = build_processor(convert_tokenizer(folder), tiny_config())
    engine = ChatEngine(build_model(), processor, source="tiny")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    settings = GenerationSettings(max_new_tokens=2, max_tiles=MAX_TILES_LIMIT + 1)
    with pytest.raises(DemoError, match=rf"max_tiles \(max_patches\) is {MAX_TILES_LIMIT + 1}, above the limit"):
        engine.prepare([Turn("What is it?", [str(photo)])], settings)


@pytest.mark.parametrize("size", [(100, 100), (1000, 250), (30, 900)])
def test_a_minimum_above_the_budget_gives_internvls_single_tile(size):
    # InternVL has no candidate grid then and keeps (1, 1); the reference search says so independently.
    assert closest_grid(*size, 4, 2, 448) == reference_closest_grid(*size, 4, 2, 448)
