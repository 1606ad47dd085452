"""Builders for the vLLM plugin's tests (plain code; the fixtures are in `conftest.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
RELEASE_TOKENIZER = TESTS_DIR / "fixtures" / "internlm2"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# vLLM's CPU attention needs head_dim 64: width 128 with 2 heads (GQA: 1 key/value head).
HEAD_DIM_64 = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}


# The release's LLM rope: InternLM2's dynamic NTK scaling (vLLM tabulates it; below the context it is the plain rope).
RELEASE_ROPE = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}


# The folders every parity test serves: an original release as it is, and the folder `hovle convert` makes of it.
LAYOUTS = ("converted", "release")


def build_served_folders(root: Path, pixel_shuffle_loc: str = "pre", **text_overrides) -> dict[str, Path]:
    """A tiny random HoVLE with InternLM2's real tokenizer, the release's rope and 448 px tiles (256 tokens each), in
    both layouts: "release" (the release's files: original weight names, config.json and tokenizer files) and
    "converted" (`hovle convert` of it)."""
    text_overrides.setdefault("rope_parameters", RELEASE_ROPE)
    from hovle.conversion.to_transformers import convert
    from hovle.testing import tiny_config_real_vocab, write_original_checkpoint

    config = tiny_config_real_vocab(pixel_shuffle_loc, embedding=HEAD_DIM_64, text={**HEAD_DIM_64, **text_overrides})
    source = write_original_checkpoint(root / "original", config, seed=0)
    for name in TOKENIZER_FILES:
        shutil.copy(RELEASE_TOKENIZER / name, source / name)
    return {"release": source, "converted": convert(source, root / "hovle-tiny", dtype="float32", progress=False)}
