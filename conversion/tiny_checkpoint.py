"""Deterministic tiny checkpoints in the *original* release layout, built offline.

Used by the tests and by the quick-start demo: the shapes come from our own key table run backwards over a
meta-device model, so a tiny checkpoint has exactly the keys a real one has, just smaller.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hovle.configuration_hovle import HoVLEConfig
from hovle.conversion.config_map import original_config_from_hovle
from hovle.conversion.convert_hovle_to_hf import expected_original_shapes

# Same ids as the golden fixture: vocab 1024, <img> 1020, </img> 1021, <IMG_CONTEXT> 1022.
TINY_VOCAB = 1024
TINY_IMAGE_TOKEN = 1022


def tiny_config(pixel_shuffle_loc: str = "pre", **overrides) -> HoVLEConfig:
    """A HoVLE of hidden width 64: 2 embedding layers, 3 LLM layers, 56 px tiles -> 4 tokens per tile."""
    shared = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=TINY_VOCAB)
    embedding = dict(
        shared,
        num_hidden_layers=2,
        intermediate_size=128,
        image_size=56,
        patch_size=14,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        pixel_shuffle_loc=pixel_shuffle_loc,
    )
    text = dict(
        shared,
        num_hidden_layers=3,
        intermediate_size=160,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    embedding.update(overrides.pop("embedding", {}))
    text.update(overrides.pop("text", {}))
    return HoVLEConfig(
        embedding_config=embedding,
        text_config=text,
        image_token_id=TINY_IMAGE_TOKEN,
        image_start_token_id=TINY_IMAGE_TOKEN - 2,
        image_end_token_id=TINY_IMAGE_TOKEN - 1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **overrides,
    )


def random_original_state_dict(config: HoVLEConfig, seed: int = 0, std: float = 0.5) -> dict[str, torch.Tensor]:
    """Every original-layout tensor for `config`, random (norm weights included, as in the golden fixture)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=generator) * std for key, shape in expected_original_shapes(config).items()
    }


def write_original_checkpoint(
    folder: str | Path, config: HoVLEConfig | None = None, seed: int = 0, state_dict: dict | None = None
) -> Path:
    """Write `config.json` + `model.safetensors` in the original release layout."""
    config = config or tiny_config()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = state_dict if state_dict is not None else random_original_state_dict(config, seed)
    save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(original_config_from_hovle(config), indent=2) + "\n")
    return folder
