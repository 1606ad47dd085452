"""The release's original `config.json` (`OpenGVLab/HoVLE`) as `../shared/reference/HOVLE.md` describes it, for
full-size checks that need no download (key coverage on the meta device, size benchmarks)."""

from __future__ import annotations

from typing import Any


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
