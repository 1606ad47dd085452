"""Faster decoding on CPUs, the levers measured in `benchmarks/full_size_compute.py` (README, "Real size").

Both stay within transformers' own machinery: an attention function registered with `AttentionInterface`
(`sdpa_float32_kv`, see `modeling_hovle.py`) and `generate()`'s static cache and `CompileConfig`.

    from hovle.decoding import fast_cpu_decoding

    model.generate(**inputs, **fast_cpu_decoding(model, compile=True))
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.generation import CompileConfig

from .modeling_hovle import FLOAT32_KV_ATTENTION


def compiled_decoding_config(fullgraph: bool = False) -> CompileConfig:
    """A `CompileConfig` that also compiles on the CPU: transformers compiles the decoding step by itself on
    accelerators only, and opting other devices in has no public switch (5.17-5.24)."""
    config = CompileConfig(fullgraph=fullgraph, dynamic=False)
    config._compile_all_devices = True
    return config


def fast_cpu_decoding(model: PreTrainedModel, compile: bool = False) -> dict[str, Any]:
    """Switch `model` to the fastest exact decoding measured on the CPU and return the `generate()` arguments for it.

    * bf16/fp16 weights: keys, values and attention in float32 (`sdpa_float32_kv`). Without native bf16, one-query
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
        model.set_attn_implementation(FLOAT32_KV_ATTENTION)
    if not compile:
        return {}
    return {"cache_implementation": "static", "compile_config": compiled_decoding_config()}
