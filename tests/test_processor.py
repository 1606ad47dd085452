"""Processor: InternVL tiling (against an independent implementation), the internlm2-chat template byte for byte,
placeholder expansion, and bad images."""

import numpy as np
import pytest
import torch
from PIL import Image

from hovle.conversion.tokenizer import convert_tokenizer
from hovle.processing_hovle import DEFAULT_SYSTEM_MESSAGE, build_processor
from hovle.testing import reference_pixel_values, tiny_config, write_tiny_tokenizer

SIZES = [
    (448, 448),
    (1, 1),
    (10000, 10),
    (10, 10000),
    (300, 800),
    (1600, 400),
    (500, 400),
    (897, 448),
    (1000, 1000),
    (2000, 1500),
]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    tokenizer = convert_tokenizer(folder)
    return build_processor(tokenizer, tiny_config(embedding={"image_size": 448, "patch_size": 14}))


@pytest.mark.parametrize("max_patches", [1, 6, 12])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_tiling_matches_reference(processor, size, max_patches):
    width, height = size
    image = Image.fromarray(np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3), np.uint8))
    grid, expected = reference_pixel_values(image, max_num=max_patches)
    got = processor(images=image, text="<image>", max_patches=max_patches, return_tensors="np")
    tiles = grid[0] * grid[1] + (1 if grid != (1, 1) else 0)
    assert got["pixel_values"].shape == expected.shape == (tiles, 3, 448, 448)
    np.testing.assert_allclose(got["pixel_values"], expected, atol=1e-6, rtol=0)
    assert (got["input_ids"][0] == processor.image_token_id).sum() == tiles * processor.tokens_per_tile


def original_prompt(system, turns):
    """The original `internlm2-chat` conversation (MPT style): system, then user/assistant turns, open assistant."""
    text = f"<|im_start|>system\n{system}<|im_end|>" if system else ""
    for question, answer in turns:
        text += f"<|im_start|>user\n{question}<|im_end|>"
        if answer is not None:
            text += f"<|im_start|>assistant\n{answer}<|im_end|>"
    return text + "<|im_start|>assistant\n"


def user(text, images=0):
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


CASES = {
    "single_image": ([user("What is this?", 1)], DEFAULT_SYSTEM_MESSAGE, [("<image>\nWhat is this?", None)]),
    "text_only": ([user("Hello!")], DEFAULT_SYSTEM_MESSAGE, [("Hello!", None)]),
    "multi_turn": (
        [user("Describe it.", 1), {"role": "assistant", "content": "A cat."}, user("What colour?")],
        DEFAULT_SYSTEM_MESSAGE,
        [("<image>\nDescribe it.", "A cat."), ("What colour?", None)],
    ),
    "two_images": (
        [user("Compare them.", 2)],
        DEFAULT_SYSTEM_MESSAGE,
        [("Image-1: <image>\nImage-2: <image>\nCompare them.", None)],
    ),
    "custom_system": (
        [{"role": "system", "content": "Be brief."}, user("Hi")],
        "Be brief.",
        [("Hi", None)],
    ),
    "no_system": ([{"role": "system", "content": ""}, user("Hi")], "", [("Hi", None)]),
}


@pytest.mark.parametrize("case", CASES)
def test_chat_template_renders_the_original_prompt(processor, case):
    messages, system, turns = CASES[case]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The original tokenizes its prompt with BOS; the template writes the BOS out (as InternLM2-chat's does).
    assert rendered == processor.tokenizer.bos_token + original_prompt(system, turns)
    assert processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == rendered


@pytest.mark.parametrize("case", ["text_only", "multi_turn"])
def test_rendered_chat_tokenizes_with_one_bos(processor, case):
    """Every way of tokenizing a conversation gives the original's ids: one BOS, then the prompt's pieces."""
    tokenizer = processor.tokenizer
    messages, system, turns = CASES[case]
    original_ids = tokenizer(original_prompt(system, turns))["input_ids"]  # the original: tokenizer(query), BOS added
    assert original_ids[0] == tokenizer.bos_token_id and original_ids[1] != tokenizer.bos_token_id
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [Image.new("RGB", (56, 56))] * rendered.count("<image>") or None
    through_processor = processor(text=rendered, images=images)["input_ids"][0]
    expected = tokenizer(processor.expand_texts(original_prompt(system, turns), images)[0][0])["input_ids"]
    assert through_processor == expected
    if images is None:
        assert through_processor == original_ids
        chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert chat_ids == original_ids


def test_assistant_tokens_mask(processor):
    tokenizer = processor.tokenizer
    messages = [
        user("Q1"),
        {"role": "assistant", "content": "first reply"},
        user("Q2"),
        {"role": "assistant", "content": "second"},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    marked = [i for i, m in zip(ids, mask, strict=True) if m]
    expected = []
    for reply in ("first reply", "second"):
        expected += tokenizer(reply, add_special_tokens=False)["input_ids"] + [
            tokenizer.convert_tokens_to_ids("<|im_end|>")
        ]
    assert marked == expected


def test_placeholders(processor):
    image = Image.new("RGB", (448, 448), "red")
    out = processor(images=[image, image], text="Image-1: <image>\nImage-2: <image>\nCompare", return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    start, end = processor.tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    assert ids.count(start) == ids.count(end) == 2
    assert ids.count(processor.image_token_id) == 2 * processor.tokens_per_tile
    # No placeholder: the original chat() convention prepends them.
    implicit = processor(images=[image, image], text="Compare", return_tensors="pt")
    assert torch.equal(implicit["input_ids"], out["input_ids"])
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        processor(images=[image], text="<image> and <image>")
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        processor(images=[image, image], text="<image> only one")


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def test_bad_files_raise_clear_errors(processor, tmp_path, monkeypatch):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    jpeg = save(photo, tmp_path / "photo.jpg", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(jpeg, "rb").read()[:2000])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text_png = tmp_path / "notes.png"
    text_png.write_text("this is not an image")
    cases = {
        truncated: "truncated",
        empty: "not an image",
        text_png: "not an image",
        tmp_path / "missing.png": "not found",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            processor(images=str(path), text="<image>")
        assert str(path) in str(error.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 300x400 = 120000 pixels > 2x the limit: a "bomb"
    with pytest.raises(ValueError, match="decompression-bomb"):
        processor(images=jpeg, text="<image>")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "L", "1"])
def test_image_modes_become_rgb(processor, mode, tmp_path):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 120, 3), np.uint8))
    # A real 16-bit picture spans 0..65535 (257 x its 8-bit values).
    sixteen = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    image = sixteen if mode == "I;16" else base.convert(mode)
    path = save(image, tmp_path / f"image.{'tif' if mode in ('CMYK', 'I;16') else 'png'}")
    for item in (image, path):
        out = processor(images=item, text="<image>", return_tensors="np")
        assert out["pixel_values"].shape == (1, 3, 448, 448)
        assert np.isfinite(out["pixel_values"]).all()
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert out["pixel_values"].std() > 0.1


def test_exif_orientation_is_applied(processor, tmp_path):
    upright = Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 400, 3), np.uint8))  # 400 wide
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: 200 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 270 (i.e. 90 clockwise) to display
    path = save(stored, tmp_path / "rotated.png", exif=exif)
    shown = Image.open(path)
    from PIL import ImageOps

    expected_image = ImageOps.exif_transpose(shown)
    assert expected_image.size == (400, 200)
    got = processor(images=path, text="<image>", return_tensors="np")["pixel_values"]
    _, expected = reference_pixel_values(expected_image.convert("RGB"))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_image_token_names_the_token_image_features_fill(processor):
    # transformers' convention (InternVLProcessor): `image_token` and `image_token_id` are one token; prompts keep
    # writing the release's `<image>` (`image_placeholder`).
    tokenizer = processor.tokenizer
    assert processor.image_token == "<IMG_CONTEXT>"
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (processor.start_image_token, processor.end_image_token) == ("<img>", "</img>")
    assert processor.start_image_token_id == tokenizer.convert_tokens_to_ids("<img>")
    assert processor.end_image_token_id == tokenizer.convert_tokens_to_ids("</img>")
    assert processor.image_placeholder == "<image>"


@pytest.mark.parametrize("num_tiles", [1, 3, 7])
def test_image_block_text_and_ids_agree(processor, num_tiles):
    block = processor.image_block(num_tiles)
    ids = processor.tokenizer(block, add_special_tokens=False)["input_ids"]
    assert ids == processor.image_block_ids(num_tiles)
    assert ids.count(processor.image_token_id) == num_tiles * processor.tokens_per_tile


@pytest.mark.parametrize("options", [{}, {"max_tiles": 2}, {"images_kwargs": {"max_patches": 12}}, {"max_tiles": 1}])
def test_num_multimodal_tokens_match_the_processed_prompt(processor, options):
    sizes = [(448, 448), (300, 800), (10, 10000), (1500, 2000)]  # (width, height)
    counted = processor._get_num_multimodal_tokens([(h, w) for w, h in sizes], **options)
    for (width, height), tokens, tiles in zip(sizes, counted.num_image_tokens, counted.num_image_patches, strict=True):
        got = processor(images=Image.new("RGB", (width, height)), text="<image>", add_special_tokens=False, **options)
        assert len(got["pixel_values"]) == tiles
        assert len(got["input_ids"][0]) == tokens  # the whole block, <img> and </img> included
    assert processor._get_num_multimodal_tokens() == type(counted)()


def test_kwargs_by_modality_equal_flat_kwargs(processor):
    image = Image.new("RGB", (900, 300))
    flat = processor(images=image, text="<image> hi", max_tiles=3, padding_side="right", return_tensors="np")
    nested = processor(
        images=image,
        text="<image> hi",
        images_kwargs={"max_tiles": 3},
        text_kwargs={"padding_side": "right", "return_tensors": "np"},
    )
    assert set(flat) == set(nested)
    for key in flat:
        np.testing.assert_array_equal(flat[key], nested[key])
