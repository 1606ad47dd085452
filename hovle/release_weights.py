"""The release's weights converted while loading, by transformers' own load-time conversion.

`release_weight_conversions()` generates, from the one key table in `conversion/layout.py`, the `WeightRenaming`s of
the renamed tensors and one `WeightConverter` per fused, grouped InternLM2 `wqkv` (`SplitGroupedQKV`: both stacks,
the geometry read from the model's config). transformers reverses them when saving (`FuseGroupedQKV`), so
`save_pretrained` of a release-loaded model writes the release's key layout again. No copy of the weights is made
on disk; sharded safetensors, `.bin`, `dtype` and `device_map` are transformers' own loading.
"""

from __future__ import annotations

import re

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming

from .configuration_hovle import HoVLEConfig
from .conversion import layout


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
