"""Faster exact decoding on CPUs, the levers measured in `benchmarks/full_size_compute.py` (`benchmarks/README.md`).

Both stay within transformers' own machinery:
* a float32 KV cache under bf16/fp16 weights, with transformers' sdpa attention registered under the name
  `sdpa_float32_kv` (`AttentionInterface`). On CPUs without native bf16 (AVX2), bf16 `scaled_dot_product_attention`
  at one query costs ~0.85-1.1 ms per layer against 300 cached positions, the same call over float32 keys and
  values ~0.13-0.23 ms; casting the cache every step is no cheaper.
* `generate()`'s static cache and `CompileConfig`, opted in on the CPU.

    from hovle.cpu_decoding import fast_cpu_decoding

    model.generate(**inputs, **fast_cpu_decoding(model, compile=True))
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicLayer, StaticLayer
from transformers.generation import CompileConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

FLOAT32_KV_ATTENTION = "sdpa_float32_kv"


class Float32DynamicLayer(DynamicLayer):
    """A dynamic cache layer that keeps keys and values in float32, whatever the model's dtype."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return super().update(key_states.float(), value_states.float(), *args, **kwargs)


class Float32StaticLayer(StaticLayer):
    """A static (compile-friendly) cache layer that keeps keys and values in float32; it allocates on first update,
    so the float32 states it receives set its dtype."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return super().update(key_states.float(), value_states.float(), *args, **kwargs)


# Each stock layer type and its float32 twin.
FLOAT32_LAYER_TYPES = {DynamicLayer: Float32DynamicLayer, StaticLayer: Float32StaticLayer}


def float32_kv_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention; over a float32 cache the query joins float32 and the output returns to bf16."""
    if key.dtype == query.dtype:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    output, weights = sdpa_attention_forward(module, query.to(key.dtype), key, value, attention_mask, **kwargs)
    return output.to(query.dtype), weights


def register_float32_kv_attention() -> None:
    """Make `attn_implementation="sdpa_float32_kv"` known to transformers (idempotent)."""
    AttentionInterface.register(FLOAT32_KV_ATTENTION, float32_kv_sdpa_attention)
    AttentionMaskInterface.register(FLOAT32_KV_ATTENTION, sdpa_mask)


def use_float32_cache(model: PreTrainedModel) -> None:
    """Decode `model` over float32 keys and values (dynamic and static caches) with `sdpa_float32_kv` attention;
    the weights keep their dtype. Exact in float32; under bf16 weights the more accurate of the two caches."""
    register_float32_kv_attention()
    model.set_attn_implementation(FLOAT32_KV_ATTENTION)
    model.model.embedding_model.cache_layout.layer_types = dict(FLOAT32_LAYER_TYPES)


def compiled_decoding_config(fullgraph: bool = False) -> CompileConfig:
    """A `CompileConfig` that also compiles on the CPU: transformers compiles the decoding step by itself on
    accelerators only, and opting other devices in has no public switch (5.17-5.24)."""
    config = CompileConfig(fullgraph=fullgraph, dynamic=False)
    config._compile_all_devices = True
    return config


def fast_cpu_decoding(model: PreTrainedModel, compile: bool = False) -> dict[str, Any]:
    """Switch `model` to the fastest exact decoding measured on the CPU and return the `generate()` arguments for it.

    * bf16/fp16 weights: keys, values and attention in float32 (`use_float32_cache`). Without native bf16, one-query
      attention over a bf16 cache costs about 6x the float32 call; float32 is also the more accurate of the two.
    * `compile=True`: a static cache and a compiled decoding step (one graph per step). The first `generate()`
      compiles, ~1.5 min at full size on 2 cores: worth it for long or repeated generations.
    """
    if model.device.type != "cpu":
        raise ValueError(
            f"fast_cpu_decoding is for models on the CPU; this one is on {model.device}. Its float32 cache answers a "
            "CPU without native bf16; on accelerators keep the model's own attention (sdpa or flash_attention_2)."
        )
    if model.dtype in (torch.bfloat16, torch.float16):
        use_float32_cache(model)
    if not compile:
        return {}
    return {"cache_implementation": "static", "compile_config": compiled_decoding_config()}
