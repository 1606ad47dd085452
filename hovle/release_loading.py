"""Loading the original release (`OpenGVLab/HoVLE`, model type `internvl_chat`) as it is, with no conversion step.

`register_release_loading()` (run by `import hovle`) teaches transformers' Auto classes two things:

* the config: `internvl_chat` maps to `HoVLEReleaseConfig`, which builds the `HoVLEConfig` through the converter's
  one mapping (`conversion.config_map.hovle_config_from_original`). It claims only HoVLE releases (configs with
  `embedding_config`); an InternVL config (`vision_config`) is handed to its own remote code when the caller passed
  `trust_remote_code=True`, as transformers does without this package, and refused otherwise. A registered class
  is preferred over a folder's `auto_map` even with `trust_remote_code=True`, so the release's own code never runs.
* the weights: a load-time conversion registered for `internvl_chat` with
  `transformers.conversion_mapping.register_checkpoint_conversion_mapping`, generated from the key table in
  `conversion/layout.py` (`WeightRenaming`s for the renames, one `WeightConverter` with `SplitGroupedQKV` for the
  fused, grouped `wqkv` of both stacks). Converted folders (`model_type` `hovle`) are not touched by it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming

from .configuration_hovle import HoVLEConfig
from .conversion import layout

RELEASE_MODEL_TYPE = "internvl_chat"


class HoVLEReleaseConfig(HoVLEConfig):
    """`HoVLEConfig` under the release's model type: what `AutoConfig` builds from a release's `config.json`."""

    model_type = RELEASE_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        if "llm_config" in config_dict and "embedding_config" in config_dict:  # the release's own config.json
            config_dict = _release_dict(config_dict)
        elif "embedding_config" not in config_dict:  # InternVL (or any other internvl_chat): not ours
            return _not_claimed(config_dict, kwargs)
        return super().from_dict(config_dict, **kwargs)


def _release_dict(original: dict[str, Any]) -> dict[str, Any]:
    """The release's config.json as this class's dict, through the converter's mapping."""
    from .conversion.config_map import hovle_config_from_original  # imports the processor: only when needed

    converted = hovle_config_from_original(original).to_dict()
    converted["model_type"] = RELEASE_MODEL_TYPE
    if original.get("torch_dtype") is not None:
        converted["dtype"] = original["torch_dtype"]
    return converted


def _auto_config_frame():
    """The frame of the running `AutoConfig.from_pretrained` (which calls `from_dict`), or None."""
    from transformers import AutoConfig

    code = AutoConfig.from_pretrained.__func__.__code__
    frame = sys._getframe(2)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame


def _not_claimed(config_dict: dict[str, Any], kwargs: dict[str, Any]):
    """An `internvl_chat` config that is not a HoVLE release: what `AutoConfig` does without this package, i.e. the
    folder's own config class when the caller trusts its code (`AutoConfig.from_pretrained` does not pass
    `trust_remote_code` on to `from_dict`, so it is read from that call's frame), an error otherwise."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    frame = _auto_config_frame()
    class_ref = (config_dict.get("auto_map") or {}).get("AutoConfig")
    trusted = frame is not None and frame.f_locals.get("trust_remote_code") is True
    name = frame.f_locals.get("pretrained_model_name_or_path") if frame is not None else kwargs.get("name_or_path")
    if class_ref is None or not trusted:
        raise ValueError(
            f"{name} holds an {RELEASE_MODEL_TYPE!r} config without 'embedding_config' (InternVL, not HoVLE): hovle "
            "does not claim it, and transformers has no class for it; it loads with its own code "
            "(`trust_remote_code=True`)"
        )
    auto_kwargs = dict(frame.f_locals["kwargs"])
    config_class = get_class_from_dynamic_module(
        class_ref, name, code_revision=frame.f_locals.get("code_revision"), **auto_kwargs
    )
    config_class.register_for_auto_class()
    return config_class.from_pretrained(name, **auto_kwargs)


class SplitGroupedQKV(ConversionOps):
    """InternLM2's fused `wqkv` (rows grouped per KV head: q_0..q_{g-1}, k, v) -> q, k, v; the stack (and so the
    attention geometry) is read from the tensor's renamed key, the geometry from the model's config."""

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs) -> dict[str, torch.Tensor]:
        (tensors,) = input_dict.values()
        wqkv = tensors[0] if isinstance(tensors, list) else tensors
        geometry = _geometry(kwargs["config"], kwargs["full_layer_name"])
        return dict(zip(target_patterns, geometry.split_wqkv(wqkv), strict=True))

    @property
    def reverse_op(self) -> ConversionOps:
        return FuseGroupedQKV()


class FuseGroupedQKV(ConversionOps):
    """q, k, v -> InternLM2's fused, grouped `wqkv` (the reverse of `SplitGroupedQKV`, used when saving)."""

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs) -> dict[str, torch.Tensor]:
        q, k, v = (input_dict[pattern] for pattern in source_patterns)
        q, k, v = (t[0] if isinstance(t, list) else t for t in (q, k, v))
        geometry = _geometry(kwargs["config"], kwargs["full_layer_name"])
        return {target_patterns[0]: geometry.fuse_wqkv(q, k, v)}

    @property
    def reverse_op(self) -> ConversionOps:
        return SplitGroupedQKV()


def _geometry(config: HoVLEConfig, key: str) -> layout.AttentionGeometry:
    geometries = layout.geometries_from_config(config)
    for stack, prefixes in layout._STACKS.items():
        if any(prefix.split("{}")[0] in key for prefix in prefixes):
            return geometries[stack]
    raise ValueError(f"{key}: not a layer of either stack, cannot split or fuse its wqkv")


def release_weight_conversions() -> list[WeightRenaming | WeightConverter]:
    """The load-time conversion from the release's keys to ours, generated from `conversion/layout.py`'s table."""

    def exact(key: str) -> str:
        return "^" + re.escape(key)  # no "$": transformers keeps it in the reversed (saving) name

    renamings = [WeightRenaming(exact(original), ours) for original, ours in layout._EXACT.items()]
    # Stack prefixes first (`embedding_model.encoder.3.` -> `model.embedding_model.layers.3.`), then the layer suffixes.
    for original_prefix, ours_prefix in layout._STACKS.values():
        source = "^" + re.escape(original_prefix.split("{}")[0]) + r"(\d+)\."
        target = ours_prefix.split("{}")[0] + r"\1."
        renamings.append(WeightRenaming(source, target))
    converters = []
    for original_suffix, ours in layout._LAYER.items():
        if isinstance(ours, tuple):  # the fused wqkv
            converters.append(WeightConverter(original_suffix, list(ours), operations=[SplitGroupedQKV()]))
        else:
            renamings.append(WeightRenaming(original_suffix, ours))
    return [*renamings, *converters]


def register_release_loading() -> None:
    """Make transformers' Auto classes load HoVLE releases as they are (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    from .modeling_hovle import HoVLEForConditionalGeneration

    AutoConfig.register(RELEASE_MODEL_TYPE, HoVLEReleaseConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        # Not `auto_class.register`: it wants the model's `config_class` (HoVLEConfig) to carry this class's name.
        auto_class._model_mapping.register(HoVLEReleaseConfig, HoVLEForConditionalGeneration, exist_ok=True)
    register_checkpoint_conversion_mapping(RELEASE_MODEL_TYPE, release_weight_conversions(), overwrite=True)
