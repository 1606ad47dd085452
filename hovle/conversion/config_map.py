"""The original `config.json` (`internvl_chat` with `embedding_config` / `llm_config`) <-> `HoVLEConfig`."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from transformers import GenerationConfig, LlamaConfig

from ..configuration_hovle import HoVLEConfig, HoVLEEmbeddingConfig
from ..processing_hovle import check_max_tiles
from .checkpoint_io import CheckpointError

logger = logging.getLogger(__name__)

ORIGINAL_ARCHITECTURE = "InternVLChatModel"
ORIGINAL_LLM_ARCHITECTURE = "InternLM2ForCausalLM"


def _require(section: dict[str, Any], name: str, where: str):
    if name not in section:
        raise CheckpointError(f"config.json: {where} has no '{name}'")
    return section[name]


# The embedding module's rope theta / eps / max positions are not published for the release; when a config.json
# omits them the original code used its config class defaults, so we do too (loudly).
_EMBEDDING_CLASS_DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}
_REQUIRED, _ABSENT = object(), object()  # a field's default: none (refused when missing) / none (left out)
# Activations with learned parameters have no tensors in the checkpoint layout.
_PARAMETRIC_ACTIVATIONS = ("prelu", "xielu")


@dataclass(frozen=True)
class _Field:
    """One setting of the original config.json that the converter reads: where it sits, what kind of value it must
    hold, its default, and (for a "choice") the values the converted model supports and why only those."""

    section: str | None  # "embedding_config", "llm_config", "llm_config.rope_scaling"; None: the top level
    name: str
    kind: str  # a key of _KINDS
    default: Any = _REQUIRED
    choices: tuple = ()
    why: str = ""
    nullable: bool = False  # `null` means "not set" (rope_scaling, force_image_size)

    @property
    def label(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(choices) -> str:
    shown = [json.dumps(choice) for choice in choices]
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


def _activations() -> list[str]:
    from transformers.activations import ACT2FN

    return sorted(name for name in ACT2FN if name not in _PARAMETRIC_ACTIVATIONS)


# kind -> (the test a value must pass, given the field and the vocabulary size; what the message says it must be)
_KINDS = {
    "bool": (lambda v, f, vocab: isinstance(v, bool), lambda f, vocab: "must be true or false"),
    "count": (lambda v, f, vocab: _whole(v) and v >= 1, lambda f, vocab: "must be a whole number of at least 1"),
    "positive": (lambda v, f, vocab: _number(v) and v > 0, lambda f, vocab: "must be a positive number"),
    "factor": (lambda v, f, vocab: _number(v) and v >= 1, lambda f, vocab: "must be a number of at least 1"),
    "ratio": (
        lambda v, f, vocab: _number(v) and 0 < v <= 1 and abs(round(1 / v) * v - 1) < 1e-6,
        lambda f, vocab: "must be 1/n for a whole number n (0.5 merges 2x2 patches into one token)",
    ),
    "token": (
        lambda v, f, vocab: _whole(v) and 0 <= v < vocab,
        lambda f, vocab: f"must be a token id of the vocabulary of {vocab} tokens (a whole number 0 .. {vocab - 1})",
    ),
    "choice": (
        lambda v, f, vocab: any(v == c and type(v) is type(c) for c in f.choices),
        lambda f, vocab: f"must be {_one_of(f.choices)}{f' ({f.why})' if f.why else ''}",
    ),
    "activation": (
        lambda v, f, vocab: isinstance(v, str) and v in _activations(),
        lambda f, vocab: f"must be an activation transformers implements without parameters: {_one_of(_activations())}",
    ),
    "object": (
        lambda v, f, vocab: isinstance(v, dict),
        lambda f, vocab: 'must be null or an object such as {"type": "dynamic", "factor": 2.0}',
    ),
}

_EMB, _LLM = "embedding_config", "llm_config"
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
# Every setting the converter reads, in the order it checks them (vocabulary sizes before token ids).
_FIELDS = (
    _Field(_EMB, "llm_vocab_size", "count"),
    *(_Field(_EMB, name, "count") for name in _SIZES),
    _Field(_EMB, "patch_size", "count"),
    _Field(_EMB, "image_size", "count", _ABSENT),
    _Field(_EMB, "hidden_act", "activation", "silu"),
    _Field(_EMB, "rms_norm_eps", "positive", _EMBEDDING_CLASS_DEFAULTS["rms_norm_eps"]),
    _Field(_EMB, "max_position_embeddings", "count", _EMBEDDING_CLASS_DEFAULTS["max_position_embeddings"]),
    _Field(_EMB, "rope_theta", "positive", _EMBEDDING_CLASS_DEFAULTS["rope_theta"]),
    _Field(_EMB, "rope_scaling", "object", None, nullable=True),
    _Field(_EMB, "downsample_ratio", "ratio", _ABSENT),
    _Field(_EMB, "pixel_shuffle_loc", "choice", "pre", ("pre", "post")),
    _Field(_EMB, "use_ls", "choice", False, (False,), "layer scale is not part of any release"),
    _Field(_EMB, "use_pixel_shuffle_proj", "choice", True, (True,), "the releases' projector"),
    _Field(_LLM, "vocab_size", "count"),
    *(_Field(_LLM, name, "count") for name in _SIZES),
    _Field(_LLM, "max_position_embeddings", "count"),
    _Field(_LLM, "hidden_act", "activation", "silu"),
    _Field(_LLM, "rms_norm_eps", "positive"),
    _Field(_LLM, "rope_theta", "positive"),
    _Field(_LLM, "rope_scaling", "object", None, nullable=True),
    _Field(_LLM, "bias", "choice", False, (False,), "attention biases are not part of HoVLE's layout"),
    _Field(_LLM, "tie_word_embeddings", "choice", False, (False,), "HoVLE's output head is untied"),
    _Field(_LLM, "bos_token_id", "token", 1),
    _Field(_LLM, "eos_token_id", "token", 2),
    _Field(_LLM, "pad_token_id", "token", 2),
    _Field(None, "template", "choice", "internlm2-chat", ("internlm2-chat",), "the chat template of the processor"),
    _Field(None, "ps_version", "choice", "v2", ("v2",)),
    _Field(None, "downsample_ratio", "ratio", _ABSENT),
    _Field(None, "force_image_size", "count", _ABSENT, nullable=True),
    _Field(None, "dynamic_image_size", "bool", True),
    _Field(
        None,
        "use_thumbnail",
        "choice",
        True,
        (True,),
        "the processor adds a thumbnail tile to every multi-tile image, as the releases do",
    ),
    _Field(None, "min_dynamic_patch", "count", 1),
    _Field(None, "max_dynamic_patch", "count", 6),
    _Field(None, "normalize_encoder_output", "bool", False),
)
_ROPE_SCALING_FIELDS = ("type", "choice", _REQUIRED, ("dynamic", "linear")), ("factor", "factor", _REQUIRED, ())


def _section(original: dict[str, Any], path: str | None) -> dict[str, Any]:
    section = original
    for name in path.split(".") if path else ():
        section = section[name]
    return section


def _check_field(field: _Field, section: dict[str, Any], vocab: int | None, file: str = "config.json"):
    """The value of `field` in `section` (or its default), or a `CheckpointError` naming the field."""
    value = section.get(field.name, field.default)
    if field.nullable and value is None:
        value = field.default
    if value is _REQUIRED:
        raise CheckpointError(f"{file}: {field.section or 'the top level'} has no '{field.name}'")
    if value is _ABSENT or (value is None and field.default is None):
        return value
    if field.name not in section and field.section == _EMB and field.name in _EMBEDDING_CLASS_DEFAULTS:
        logger.warning(
            "config.json: embedding_config has no '%s'; using the original config class default %s", field.name, value
        )
    valid, requirement = _KINDS[field.kind]
    if not valid(value, field, vocab):
        raise CheckpointError(f"{file}: {field.label} {requirement(field, vocab)}, got {json.dumps(value)}")
    return value


def check_setting(settings: dict[str, Any], name: str, kind: str, default: Any, file: str) -> Any:
    """One top-level setting of another JSON file the converter reads (`tokenizer_config.json`), checked as the
    config.json fields are: its value, or its default when absent."""
    return _check_field(_Field(None, name, kind, default), settings, None, file)


def _read_fields(original: dict[str, Any]) -> dict[str, Any]:
    """Every setting the converter reads, type-checked by `_FIELDS` (the one table of what each must be), by label
    ("llm_config.rms_norm_eps", "template"); fields left out without a default are absent."""
    values: dict[str, Any] = {}
    for field in _FIELDS:
        vocab = values.get(f"{_LLM}.vocab_size")
        value = _check_field(field, _section(original, field.section), vocab)
        if value is not _ABSENT:
            values[field.label] = value
        if field.name == "rope_scaling" and value:
            if "rope_type" in value and "type" not in value:  # transformers' spelling of the same key
                value = {**value, "type": value["rope_type"]}
            for name, kind, default, choices in _ROPE_SCALING_FIELDS:
                _check_field(_Field(field.label, name, kind, default, choices), value, vocab)
            values[field.label] = value
    return values


def _check_numbers(original: dict[str, Any], values: dict[str, Any]) -> None:
    """How the config's numbers must agree with each other, checked before anything is built from them (a
    non-dividing head count would otherwise surface as a division error deep inside transformers)."""
    for where in (_EMB, _LLM):
        width, heads = values[f"{where}.hidden_size"], values[f"{where}.num_attention_heads"]
        kv_heads = values[f"{where}.num_key_value_heads"]
        if width % heads:
            raise CheckpointError(
                f"config.json: {where}.num_attention_heads {heads} does not divide {where}.hidden_size {width}"
            )
        if heads % kv_heads:
            raise CheckpointError(
                f"config.json: {where}.num_key_value_heads {kv_heads} does not divide "
                f"{where}.num_attention_heads {heads}"
            )
    for name, other in (("hidden_size", "hidden_size"), ("llm_vocab_size", "vocab_size")):
        if values[f"{_EMB}.{name}"] != values[f"{_LLM}.{other}"]:
            raise CheckpointError(
                f"config.json: embedding_config.{name} {values[f'{_EMB}.{name}']} differs from llm_config.{other} "
                f"{values[f'{_LLM}.{other}']} (the embedding module feeds the LLM: they must be equal)"
            )
    image_token_id = _require(_section(original, _EMB), "img_context_token_id", "embedding_config")
    vocab = values[f"{_EMB}.llm_vocab_size"]
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int) or not 2 <= image_token_id < vocab:
        raise CheckpointError(
            f"config.json: embedding_config.img_context_token_id {image_token_id!r} is outside the vocabulary of "
            f"{vocab} tokens (it must be 2 .. {vocab - 1}: <img> and </img> take the two ids before it)"
        )
    patch = values[f"{_EMB}.patch_size"]
    for image_field in (f"{_EMB}.image_size", "force_image_size"):
        if image_field in values and values[image_field] % patch:
            raise CheckpointError(
                f"config.json: {image_field} {values[image_field]} is not a multiple of embedding_config.patch_size "
                f"{patch}"
            )
    # The same setting in two places (the tile size, the pixel-shuffle ratio): both must say the same.
    for inner, outer, default in (
        ("image_size", "force_image_size", 448),
        ("downsample_ratio", "downsample_ratio", 0.5),
    ):
        given = {label: values[label] for label in (f"{_EMB}.{inner}", outer) if label in values}
        if len(set(given.values())) > 1:
            (first, a), (second, b) = given.items()
            raise CheckpointError(f"config.json: {first} {a} differs from {second} {b}: they must agree")
        values[inner] = next(iter(given.values()), default)
    image_size = values["image_size"]
    image_field = f"{_EMB}.image_size" if f"{_EMB}.image_size" in values else "force_image_size"
    shuffle = round(1 / values["downsample_ratio"])
    if (image_size // patch) % shuffle:
        raise CheckpointError(
            f"config.json: downsample_ratio {values['downsample_ratio']} merges {shuffle}x{shuffle} patches, but a "
            f"tile is {image_size // patch} patches wide ({image_field} {image_size} / patch_size {patch})"
        )
    low, high = values["min_dynamic_patch"], values["max_dynamic_patch"]
    if low > high:
        raise CheckpointError(f"config.json: min_dynamic_patch {low} is greater than max_dynamic_patch {high}")
    try:  # the processor owns the tile budget's bound; a converted folder must not carry one it refuses
        check_max_tiles(high)
    except ValueError as error:
        raise CheckpointError(f"config.json: max_dynamic_patch: {error}") from None


def _rope_parameters(theta: float, scaling: dict[str, Any] | None) -> dict[str, Any]:
    if not scaling:
        return {"rope_type": "default", "rope_theta": float(theta)}
    # InternLM2's dynamic NTK scaling is the same formula as transformers' "dynamic" rope.
    return {"rope_type": scaling["type"], "factor": float(scaling["factor"]), "rope_theta": float(theta)}


def hovle_config_from_original(original: dict[str, Any]) -> HoVLEConfig:
    try:
        return _hovle_config_from_original(original)
    except CheckpointError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as error:  # what transformers' config classes still refuse
        raise CheckpointError(f"config.json: {str(error).strip().splitlines()[-1].strip()}") from error


def image_marker_ids(image_token_id: int) -> dict[str, int]:
    """The ids of `<img>` and `</img>`, which the release's config does not name: they sit right before
    `<IMG_CONTEXT>` in every HoVLE vocabulary (92544/92545/92546), checked against the tokenizer when it is converted."""
    return {"image_start_token_id": image_token_id - 2, "image_end_token_id": image_token_id - 1}


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
    values = _read_fields(original)
    _check_numbers(original, values)

    def section(where: str) -> dict[str, Any]:
        return {label.split(".", 1)[1]: value for label, value in values.items() if label.startswith(f"{where}.")}

    e, t = section(_EMB), section(_LLM)
    image_token_id = emb["img_context_token_id"]
    token_ids = {name: t[name] for name in ("bos_token_id", "eos_token_id")}
    embedding_config = HoVLEEmbeddingConfig(
        vocab_size=e["llm_vocab_size"],
        **{name: e[name] for name in (*_SIZES, "hidden_act", "rms_norm_eps", "max_position_embeddings")},
        rope_parameters=_rope_parameters(e["rope_theta"], e["rope_scaling"]),
        image_size=values["image_size"],
        patch_size=e["patch_size"],
        downsample_ratio=values["downsample_ratio"],
        pixel_shuffle_loc=e["pixel_shuffle_loc"],
        normalize_output=values["normalize_encoder_output"],
        **token_ids,
    )
    text_config = LlamaConfig(
        vocab_size=t["vocab_size"],
        **{name: t[name] for name in (*_SIZES, "hidden_act", "max_position_embeddings", "rms_norm_eps")},
        rope_parameters=_rope_parameters(t["rope_theta"], t["rope_scaling"]),
        attention_bias=t["bias"],
        tie_word_embeddings=False,
        pad_token_id=t["pad_token_id"],
        **token_ids,
    )
    return HoVLEConfig(
        embedding_config=embedding_config,
        text_config=text_config,
        image_token_id=image_token_id,
        **image_marker_ids(image_token_id),
        template=values["template"],
        dynamic_image_size=values["dynamic_image_size"],
        use_thumbnail=values["use_thumbnail"],
        min_dynamic_patch=values["min_dynamic_patch"],
        max_dynamic_patch=values["max_dynamic_patch"],
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


def chat_generation_config(text_config, end_of_turn_id: int | None) -> GenerationConfig:
    """The generation config of a HoVLE folder: chat replies end at `<|im_end|>` (`end_of_turn_id`, the tokenizer's;
    None without a tokenizer) and at `</s>`, as the release's own `chat()` stops. `hovle convert` writes it; a
    release, which has none, gets it where it is loaded (`release_model`, the vLLM plugin)."""
    eos = text_config.eos_token_id
    eos = [end_of_turn_id, eos] if end_of_turn_id is not None else eos
    return GenerationConfig(
        bos_token_id=text_config.bos_token_id, eos_token_id=eos, pad_token_id=text_config.pad_token_id
    )
