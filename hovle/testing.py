"""Test fixtures and builders, offline and deterministic: tiny checkpoints in the *original* release layout, tiny
sentencepiece tokenizers, the release's full-size original `config.json`, and an independent reference
implementation of InternVL's image tiling (the oracle the processor is checked against).

Used by the tests, the benchmarks and the quick-start demo. A tiny checkpoint's shapes come from the layout's key
table run backwards over a meta-device model, so it has exactly the keys a real one has, just smaller.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .configuration_hovle import HoVLEConfig
from .conversion.config_map import image_marker_ids
from .default_model import (  # noqa: F401 - the fixtures' builders, shared with the demo model's recipe
    CHAT_PIECES,
    TINY_ADDED_TOKENS,
    TINY_IMAGE_TOKEN,
    TINY_VOCAB,
    random_original_state_dict,
    tiny_config,
    tiny_corpus,
    write_original_checkpoint,
    write_tiny_tokenizer,
)

# InternLM2's real vocabulary: 92,544 sentencepiece pieces + HoVLE's 9 added tokens (<img> 92544, </img> 92545,
# <IMG_CONTEXT> 92546, ...), for tests that run the release's real tokenizer.
INTERNLM2_VOCAB = 92553
INTERNLM2_IMAGE_TOKEN = 92546


def tiny_config_real_vocab(pixel_shuffle_loc: str = "pre", **overrides) -> HoVLEConfig:
    """`tiny_config` with InternLM2's real vocabulary and token ids, and the release's 448 px tiles (256 tokens)."""
    vocab = {"vocab_size": INTERNLM2_VOCAB}
    config = tiny_config(
        pixel_shuffle_loc,
        embedding={"image_size": 448, "patch_size": 14, **vocab, **overrides.pop("embedding", {})},
        text={**vocab, **overrides.pop("text", {})},
        **overrides,
    )
    config.image_token_id = INTERNLM2_IMAGE_TOKEN
    for name, value in image_marker_ids(INTERNLM2_IMAGE_TOKEN).items():
        setattr(config, name, value)
    return config


def tiny_internvl_teacher(hidden: int = 64) -> torch.nn.Module:
    """A tiny native transformers `InternVLModel`, random: a stage-1 distillation teacher for `tiny_config` models
    (56 px tiles -> 4 image tokens of width `hidden`; 64 is the tiny LLM's width)."""
    from transformers import InternVLConfig, InternVLModel

    # One layer per stack: the teacher only has to give features of the right count and width.
    vision = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14)
    text = dict(model_type="qwen2", hidden_size=hidden, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
    config = InternVLConfig(
        vision_config={**vision, "num_hidden_layers": 1},
        text_config={**text, "num_hidden_layers": 1, "intermediate_size": 128},
        downsample_ratio=0.5,
    )
    torch.manual_seed(0)
    return InternVLModel(config).eval()


# The release's original `config.json` (`OpenGVLab/HoVLE`), for full-size checks that need no download (key
# coverage on the meta device, size benchmarks).
def release_original_config(pixel_shuffle_loc: str = "pre") -> dict[str, Any]:
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internlm2-chat",
        "downsample_ratio": 0.5,
        "force_image_size": 448,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "max_dynamic_patch": 6,
        "ps_version": "v2",
        "embedding_config": {
            "model_type": "holistic_embedding",
            "num_hidden_layers": 8,
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "intermediate_size": 8192,
            "image_size": 448,
            "patch_size": 14,
            "llm_vocab_size": 92553,
            "llm_hidden_size": 2048,
            "img_context_token_id": 92546,
            "use_ls": False,
            "use_pixel_shuffle_proj": True,
            "pixel_shuffle_loc": pixel_shuffle_loc,
            "downsample_ratio": 0.5,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096,
        },
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "vocab_size": 92553,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
            "rms_norm_eps": 1e-5,
            "bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
    }


# -- Reference InternVL tiling ------------------------------------------------------------------------------------
# An independent, plain PIL + numpy implementation of InternVL's dynamic tiling, written from the algorithm's
# description and the original release's `load_image` code. It deliberately shares no code with the processor
# (`hovle.processing_hovle`, `hovle.conversion.tokenizer.build_processor`): the tests compare the processor with it,
# and `benchmarks/preprocess_cost.py` uses it as the baseline.

REFERENCE_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
REFERENCE_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def closest_grid(width: int, height: int, min_num: int, max_num: int, tile: int) -> tuple[int, int]:
    """(columns, rows) whose ratio is closest to width/height; on a tie the later grid wins only if the image
    area exceeds half of that grid's pixel area."""
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    grids = sorted(grids, key=lambda g: g[0] * g[1])
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_image(image: Image.Image, min_num: int = 1, max_num: int = 6, tile: int = 448, thumbnail: bool = True):
    """((columns, rows), tiles): the image resized to the grid and cut into `tile`-pixel squares, plus a
    thumbnail of the whole image when there is more than one tile."""
    image = image.convert("RGB")
    cols, rows = closest_grid(image.width, image.height, min_num, max_num, tile)
    resized = image.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)
    ]
    if thumbnail and len(tiles) != 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return (cols, rows), tiles


def normalize(tile: Image.Image) -> np.ndarray:
    """One tile as a (3, H, W) float32 array, scaled to [0, 1] and normalised with the ImageNet mean and std."""
    array = np.asarray(tile, dtype=np.float32) / 255.0
    return ((array - REFERENCE_IMAGENET_MEAN) / REFERENCE_IMAGENET_STD).transpose(2, 0, 1)


def reference_pixel_values(image: Image.Image, max_num: int = 6, tile: int = 448) -> tuple[tuple[int, int], np.ndarray]:
    """((columns, rows), pixel values (tiles, 3, tile, tile)) for one image, as the original release computes them."""
    grid, tiles = tile_image(image, 1, max_num, tile)
    return grid, np.stack([normalize(t) for t in tiles])
