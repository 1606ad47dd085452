"""The tiny HoVLE builders, offline and deterministic: a config (`tiny_config`), a random checkpoint in the
*original* release layout (shapes from the layout's key table run backwards over a meta-device model, so it has
exactly a real one's keys, just smaller) and a tiny sentencepiece tokenizer with the release's special pieces.
`hovle.testing` builds its fixtures from them, and the embedded demo model's recipe
(`scripts/train_embedded_release.py`) starts from the same pieces; the commands' default model is that trained
release (`hovle.embedded_release()`), not anything built here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .configuration_hovle import HoVLEConfig
from .conversion.config_map import image_marker_ids, original_config_from_hovle
from .conversion.layout import expected_original_shapes

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
        **image_marker_ids(TINY_IMAGE_TOKEN),
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


# The InternLM2 chat tokens live inside the sentencepiece model as user-defined pieces; HoVLE's image tokens come
# after it (here only the three the model needs, so that they land on the tiny model's ids 1020-1022).
CHAT_PIECES = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
TINY_ADDED_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]


def tiny_corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    """Mixed-script random text: enough distinct pieces for a 1020-piece BPE vocabulary."""
    import random

    rng = random.Random(seed)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
        + "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年"
        + "éüßçñ"
    )
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(3000)]
    words += ["image", "describe", "picture", "what", "is", "the", "hello", "world", "你好", "图片"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(lines)]


def write_tiny_tokenizer(
    folder: str | Path,
    add_dummy_prefix: bool = False,
    vocab_size: int = 1020,
    corpus: list[str] | None = None,
    chat_pieces: list[str] | None = None,
) -> Path:
    """A sentencepiece BPE `tokenizer.model` with InternLM2's special pieces (ids: <unk> 0, <s> 1, </s> 2, chat
    pieces 3-8, named `chat_pieces`, default `CHAT_PIECES`) and a `tokenizer_config.json` listing the added image
    tokens after it, as the release has them. `corpus`: the text the pieces are learned from (`tiny_corpus()`)."""
    import sentencepiece

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or tiny_corpus()),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=chat_pieces or CHAT_PIECES,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=add_dummy_prefix,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    added = {
        str(vocab_size + i): {"content": token, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
        for i, token in enumerate(TINY_ADDED_TOKENS)
    }
    config = {"tokenizer_class": "InternLM2Tokenizer", "added_tokens_decoder": added, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
