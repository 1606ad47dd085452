"""The plugin's multimodal processor, without an engine: tile limits from the server's `--mm-processor-kwargs` and
from a request, and the tiles and ids it makes (from a converted folder, or from a release's own files) equal the
transformers processor's of the converted folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def processor_for(folder, **engine_options):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY

    config = EngineArgs(model=str(folder), dtype="float32", **engine_options).create_engine_config()
    return MULTIMODAL_REGISTRY.create_processor(config.model_config)


@pytest.fixture(scope="module")
def strip_image() -> Image.Image:
    """1344 x 448: 3 tiles + a thumbnail by default, 2 + 1 at max_tiles=2, 1 at max_tiles=1."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 1344, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "server_kwargs,request_kwargs,max_tiles,tiles",
    [
        (None, {}, None, 4),
        (None, {"max_tiles": 1}, 1, 1),
        ({"max_tiles": 2}, {}, 2, 3),  # the server-wide setting
        ({"images_kwargs": {"max_tiles": 2}}, {}, 2, 3),
        ({"max_tiles": 2}, {"max_tiles": 1}, 1, 1),  # a request's own wins
    ],
)
def test_tile_limits_from_server_and_request(
    served_folder, converted_folder, strip_image, server_kwargs, request_kwargs, max_tiles, tiles
):
    from hovle.processing_hovle import HoVLEProcessor

    processor = processor_for(served_folder, mm_processor_kwargs=server_kwargs)
    out = processor._call_hf_processor({"images": [strip_image]}, request_kwargs)
    assert out["image_num_patches"].tolist() == [tiles]
    reference = HoVLEProcessor.from_pretrained(converted_folder).tile_image(strip_image, max_tiles=max_tiles)
    np.testing.assert_array_equal(out["pixel_values_flat"].numpy(), reference)


@pytest.mark.parametrize(
    "server_kwargs,request_kwargs",
    [
        (None, {"max_tiles": 1000000}),  # one request
        (None, {"images_kwargs": {"max_tiles": 1000000}}),
        ({"max_tiles": 1000000}, {}),  # the server's setting
    ],
)
def test_tile_budget_above_limit_is_refused(served_folder, strip_image, server_kwargs, request_kwargs):
    from hovle.processing_hovle import MAX_TILES_LIMIT

    message = rf"max_tiles \(max_patches\) is 1000000, above the limit of {MAX_TILES_LIMIT}"
    with pytest.raises(ValueError, match=message):
        processor = processor_for(served_folder, mm_processor_kwargs=server_kwargs)
        processor._call_hf_processor({"images": [strip_image]}, request_kwargs)


@pytest.mark.parametrize("max_tiles", [None, 1])
def test_prompt_ids_equal_the_transformers_processor(served_folder, converted_folder, strip_image, max_tiles):
    """vLLM's placeholder expansion (on the tokenized prompt) gives the transformers processor's ids, with the text
    around `<image>` (which merges with its neighbours) and the release's decoding clean-up (" ." -> ".") kept."""
    from hovle.processing_hovle import HoVLEProcessor

    processor = processor_for(served_folder)
    prompt = "Image-1: <image>\nImage-2: <image>\nWhich is brighter ? Answer . Now ."
    options = {} if max_tiles is None else {"max_tiles": max_tiles}
    images = [strip_image, strip_image.resize((448, 448))]
    out = processor(prompt, processor.info.parse_mm_data({"image": images}), hf_processor_mm_kwargs=options)
    expected = HoVLEProcessor.from_pretrained(converted_folder)(text=prompt, images=images, **options)["input_ids"]
    assert out["prompt_token_ids"] == expected[0]
    blocks = [(r.offset, r.length) for r in out["mm_placeholders"]["image"]]
    tiles = [1 if max_tiles == 1 else 4, 1]
    assert [length for _, length in blocks] == [256 * count + 2 for count in tiles]
