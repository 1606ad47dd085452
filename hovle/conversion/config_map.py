"""The original `config.json` (`internvl_chat` with `embedding_config` / `llm_config`) <-> `HoVLEConfig`."""

from __future__ import annotations

import logging
from typing import Any

from transformers import LlamaConfig

from ..configuration_hovle import HoVLEConfig, HoVLEEmbeddingConfig
from .checkpoint_io import CheckpointError

logger = logging.getLogger(__name__)

ORIGINAL_ARCHITECTURE = "InternVLChatModel"
ORIGINAL_LLM_ARCHITECTURE = "InternLM2ForCausalLM"

# The embedding module's rope theta / eps / max positions are not published for the release; when a config.json
# omits them the original code used its config class defaults, so we do too (loudly).
_EMBEDDING_CLASS_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}


def _require(section: dict[str, Any], name: str, where: str):
    if name not in section:
        raise CheckpointError(f"config.json: {where} has no '{name}'")
    return section[name]


def _positive_int(section: dict[str, Any], name: str, where: str, default=None) -> int:
    """A required (or defaulted) count or size: a whole number of at least 1."""
    value = section.get(name, default) if default is not None else _require(section, name, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{where}." if where != "the top level" else ""
        raise CheckpointError(f"config.json: {prefix}{name} must be a whole number of at least 1, got {value!r}")
    return value


def _check_numbers(original: dict[str, Any], emb: dict[str, Any], llm: dict[str, Any]) -> None:
    """The numbers of the original config.json, checked before anything is built from them (a zero or a
    non-dividing head count would otherwise surface as a division error deep inside transformers)."""
    for section, where, vocab in ((emb, "embedding_config", "llm_vocab_size"), (llm, "llm_config", "vocab_size")):
        sizes = {name: _positive_int(section, name, where) for name in (vocab, "hidden_size", "intermediate_size")}
        layers = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        sizes.update({name: _positive_int(section, name, where) for name in layers})
        width, heads, kv_heads = sizes["hidden_size"], sizes["num_attention_heads"], sizes["num_key_value_heads"]
        if width % heads:
            raise CheckpointError(
                f"config.json: {where}.num_attention_heads {heads} does not divide {where}.hidden_size {width}"
            )
        if heads % kv_heads:
            raise CheckpointError(
                f"config.json: {where}.num_key_value_heads {kv_heads} does not divide "
                f"{where}.num_attention_heads {heads}"
            )
    _positive_int(llm, "max_position_embeddings", "llm_config")
    for name in ("hidden_size", "llm_vocab_size"):
        other = "vocab_size" if name == "llm_vocab_size" else name
        if emb[name] != llm[other]:
            raise CheckpointError(
                f"config.json: embedding_config.{name} {emb[name]} differs from llm_config.{other} {llm[other]} "
                "(the embedding module feeds the LLM: they must be equal)"
            )
    image_token_id = _require(emb, "img_context_token_id", "embedding_config")
    vocab = emb["llm_vocab_size"]
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int) or not 2 <= image_token_id < vocab:
        raise CheckpointError(
            f"config.json: embedding_config.img_context_token_id {image_token_id!r} is outside the vocabulary of "
            f"{vocab} tokens (it must be 2 .. {vocab - 1}: <img> and </img> take the two ids before it)"
        )
    patch = _positive_int(emb, "patch_size", "embedding_config")
    if "image_size" in emb:
        image_size, image_field = _positive_int(emb, "image_size", "embedding_config"), "embedding_config.image_size"
    else:
        image_size, image_field = _positive_int(original, "force_image_size", "the top level", 448), "force_image_size"
    if image_size % patch:
        raise CheckpointError(
            f"config.json: {image_field} {image_size} is not a multiple of embedding_config.patch_size {patch}"
        )
    low = _positive_int(original, "min_dynamic_patch", "the top level", 1)
    high = _positive_int(original, "max_dynamic_patch", "the top level", 6)
    if low > high:
        raise CheckpointError(f"config.json: min_dynamic_patch {low} is greater than max_dynamic_patch {high}")


def _embedding_field(section: dict[str, Any], name: str):
    if name in section:
        return section[name]
    logger.warning(
        "config.json: embedding_config has no '%s'; using the original config class default %s",
        name,
        _EMBEDDING_CLASS_DEFAULTS[name],
    )
    return _EMBEDDING_CLASS_DEFAULTS[name]


def _rope_parameters(theta: float, scaling: dict[str, Any] | None) -> dict[str, Any]:
    if not scaling:
        return {"rope_type": "default", "rope_theta": float(theta)}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind not in ("dynamic", "linear"):
        raise CheckpointError(f"config.json: llm_config.rope_scaling type {kind!r} is not supported")
    # InternLM2's dynamic NTK scaling is the same formula as transformers' "dynamic" rope.
    return {"rope_type": kind, "factor": float(scaling["factor"]), "rope_theta": float(theta)}


def hovle_config_from_original(original: dict[str, Any]) -> HoVLEConfig:
    try:
        return _hovle_config_from_original(original)
    except CheckpointError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as error:  # what transformers' config classes still refuse
        raise CheckpointError(f"config.json: {str(error).strip().splitlines()[-1].strip()}") from error


def _hovle_config_from_original(original: dict[str, Any]) -> HoVLEConfig:
    architectures = original.get("architectures")
    if architectures != [ORIGINAL_ARCHITECTURE]:
        raise CheckpointError(
            f"config.json: unknown architectures {architectures!r}; expected [{ORIGINAL_ARCHITECTURE!r}] "
            "(an original-format HoVLE checkpoint)"
        )
    emb = _require(original, "embedding_config", "the top level")
    llm = _require(original, "llm_config", "the top level")
    for name, section in (("embedding_config", emb), ("llm_config", llm)):
        if not isinstance(section, dict):
            raise CheckpointError(f"config.json: {name} must be an object, not {type(section).__name__}")
    if llm.get("architectures") != [ORIGINAL_LLM_ARCHITECTURE]:
        raise CheckpointError(
            f"config.json: unknown llm_config.architectures {llm.get('architectures')!r}; "
            f"expected [{ORIGINAL_LLM_ARCHITECTURE!r}]"
        )
    if emb.get("use_ls", False):
        raise CheckpointError("config.json: embedding_config.use_ls=true (layer scale) is not part of any release")
    if not emb.get("use_pixel_shuffle_proj", True):
        raise CheckpointError("config.json: embedding_config.use_pixel_shuffle_proj=false is not supported")
    if original.get("ps_version", "v2") != "v2":
        raise CheckpointError(f"config.json: ps_version {original['ps_version']!r} is not supported (only 'v2')")
    _check_numbers(original, emb, llm)

    image_token_id = _require(emb, "img_context_token_id", "embedding_config")
    embedding_config = HoVLEEmbeddingConfig(
        vocab_size=_require(emb, "llm_vocab_size", "embedding_config"),
        hidden_size=_require(emb, "hidden_size", "embedding_config"),
        intermediate_size=_require(emb, "intermediate_size", "embedding_config"),
        num_hidden_layers=_require(emb, "num_hidden_layers", "embedding_config"),
        num_attention_heads=_require(emb, "num_attention_heads", "embedding_config"),
        num_key_value_heads=_require(emb, "num_key_value_heads", "embedding_config"),
        hidden_act=emb.get("hidden_act", "silu"),
        rms_norm_eps=_embedding_field(emb, "rms_norm_eps"),
        max_position_embeddings=_embedding_field(emb, "max_position_embeddings"),
        rope_parameters=_rope_parameters(_embedding_field(emb, "rope_theta"), emb.get("rope_scaling")),
        image_size=emb.get("image_size", original.get("force_image_size", 448)),
        patch_size=_require(emb, "patch_size", "embedding_config"),
        downsample_ratio=emb.get("downsample_ratio", original.get("downsample_ratio", 0.5)),
        pixel_shuffle_loc=emb.get("pixel_shuffle_loc", "pre"),
        normalize_output=bool(original.get("normalize_encoder_output", False)),
        bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2),
    )
    text_config = LlamaConfig(
        vocab_size=_require(llm, "vocab_size", "llm_config"),
        hidden_size=_require(llm, "hidden_size", "llm_config"),
        intermediate_size=_require(llm, "intermediate_size", "llm_config"),
        num_hidden_layers=_require(llm, "num_hidden_layers", "llm_config"),
        num_attention_heads=_require(llm, "num_attention_heads", "llm_config"),
        num_key_value_heads=_require(llm, "num_key_value_heads", "llm_config"),
        hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=_require(llm, "max_position_embeddings", "llm_config"),
        rms_norm_eps=_require(llm, "rms_norm_eps", "llm_config"),
        rope_parameters=_rope_parameters(_require(llm, "rope_theta", "llm_config"), llm.get("rope_scaling")),
        attention_bias=bool(llm.get("bias", False)),
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 2),
    )
    if text_config.tie_word_embeddings:
        raise CheckpointError("config.json: llm_config.tie_word_embeddings=true; HoVLE's output head is untied")
    return HoVLEConfig(
        embedding_config=embedding_config,
        text_config=text_config,
        image_token_id=image_token_id,
        # <img> and </img> sit right before <IMG_CONTEXT> in every HoVLE vocabulary (92544/92545/92546).
        image_start_token_id=image_token_id - 2,
        image_end_token_id=image_token_id - 1,
        template=original.get("template", "internlm2-chat"),
        dynamic_image_size=original.get("dynamic_image_size", True),
        use_thumbnail=original.get("use_thumbnail", True),
        min_dynamic_patch=original.get("min_dynamic_patch", 1),
        max_dynamic_patch=original.get("max_dynamic_patch", 6),
        bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
    )


def _original_rope(rope: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    if rope.get("rope_type", "default") == "default":
        return rope["rope_theta"], None
    return rope["rope_theta"], {"type": rope["rope_type"], "factor": rope["factor"]}


def original_config_from_hovle(config: HoVLEConfig, dtype: str = "float32") -> dict[str, Any]:
    """The original release's `config.json` for a `HoVLEConfig` (what the InternVL code base loads)."""
    emb, text = config.embedding_config, config.text_config
    emb_theta, emb_scaling = _original_rope(emb.rope_parameters)
    llm_theta, llm_scaling = _original_rope(text.rope_parameters)
    embedding_config = {
        "model_type": "holistic_embedding",
        "num_hidden_layers": emb.num_hidden_layers,
        "hidden_size": emb.hidden_size,
        "num_attention_heads": emb.num_attention_heads,
        "num_key_value_heads": emb.num_key_value_heads,
        "intermediate_size": emb.intermediate_size,
        "hidden_act": emb.hidden_act,
        "image_size": emb.image_size,
        "patch_size": emb.patch_size,
        "rope_theta": emb_theta,
        "max_position_embeddings": emb.max_position_embeddings,
        "rms_norm_eps": emb.rms_norm_eps,
        "use_ls": False,
        "llm_vocab_size": emb.vocab_size,
        "llm_hidden_size": text.hidden_size,
        "downsample_ratio": emb.downsample_ratio,
        "img_context_token_id": config.image_token_id,
        "use_pixel_shuffle_proj": True,
        "pixel_shuffle_loc": emb.pixel_shuffle_loc,
    }
    if emb_scaling:
        embedding_config["rope_scaling"] = emb_scaling
    llm_config = {
        "architectures": [ORIGINAL_LLM_ARCHITECTURE],
        "model_type": "internlm2",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": llm_theta,
        "rope_scaling": llm_scaling,
        "rms_norm_eps": text.rms_norm_eps,
        "bias": text.attention_bias,
        "tie_word_embeddings": False,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
    }
    return {
        "architectures": [ORIGINAL_ARCHITECTURE],
        "model_type": "internvl_chat",
        "embedding_config": embedding_config,
        "llm_config": llm_config,
        "template": config.template,
        "downsample_ratio": emb.downsample_ratio,
        "force_image_size": emb.image_size,
        "dynamic_image_size": config.dynamic_image_size,
        "use_thumbnail": config.use_thumbnail,
        "min_dynamic_patch": config.min_dynamic_patch,
        "max_dynamic_patch": config.max_dynamic_patch,
        "ps_version": "v2",
        "normalize_encoder_output": emb.normalize_output,
        "torch_dtype": dtype,
    }
