"""Full-size bf16 decoding and prefill on the CPU, each side by side with its floor in one run.

    python benchmarks/full_size_compute.py /big/work/converted-bf16 [--new-tokens 64] [--json out.json]

* Decoding, batch 1, prompt = one 448 px tile (256 image tokens) + 30 text tokens, greedy. Each decoding path
  runs one `generate()`; a streamer stamps every new token, so the per-token time is the median gap between
  consecutive tokens (the prefill is excluded by construction). Paths:
  - `dynamic`: the default (`DynamicCache`, eager PyTorch);
  - `dynamic_float32_kv`: the same with `attn_implementation="sdpa_float32_kv"` (float32 cache and attention);
  - `static_compiled`: `cache_implementation="static"` + `torch.compile` of the decoding step through
    transformers' `CompileConfig` (one warm-up `generate()` compiles; the timed one reuses the graph);
  - `static_compiled_float32_kv`: the same over a float32 static cache (`sdpa_float32_kv`);
  - `static_compiled_eager_attention`: the same with `attn_implementation="eager"`, whose attention the compiler
    fuses (cheaper at one query than the CPU flash kernel behind sdpa);
  - `int8_weight_only_float32_kv`: `hovle.quantization.quantize_linear_int8` with `sdpa_float32_kv` (approximate:
    its logit difference to the bf16 path is reported; its own floor is the same replay through the int8 kernel).
  Each is compared with
  - the matrix-vector floor: one token through every weight matrix of the model with `F.linear` (same dtype,
    same kernels), timed repeatedly between the decoding runs (median), and
  - the memory-bandwidth bound: streaming every weight byte once (a sum over every parameter).
  The greedy tokens of every path must equal the dynamic path's.
* Prefill of a 7-tile image (6 + thumbnail) + 30 text tokens against a plain 32-layer `LlamaForCausalLM` of the
  same width and vocabulary on the same sequence length (both computing only the last position's logits, one run
  each).

MODEL is a converted bf16 folder: `benchmarks/make_full_size.py` writes a random full-size checkpoint in the
release layout and `benchmarks/full_size_io.py` converts it (WORK/converted-bf16).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from hovle.cpu_decoding import FLOAT32_KV_ATTENTION, compiled_decoding_config, use_float32_cache
from hovle.quantization import Int8WeightOnlyLinear, quantize_linear_int8

from common import (
    StepClock,
    argument_parser,
    best_of,
    greedy_generate,
    image_prompt,
    llama_like,
    prefill,
    random_pixels,
    repeated,
    text_prompt_like,
    write_json,
)


def set_attention(model, attention: str) -> None:
    """Switch the model to `attention`. `sdpa_float32_kv` also keeps keys and values in float32 (dynamic and static
    caches), as `hovle.cpu_decoding.use_float32_cache` sets it up; any other attention undoes that."""
    if attention == FLOAT32_KV_ATTENTION:
        use_float32_cache(model)
    else:
        model.set_attn_implementation(attention)
        model.model.embedding_model.cache_layout.layer_types = {}


def replay_layers(model: torch.nn.Module, vectors: dict[int, torch.Tensor]) -> None:
    """The int8 floor: one token through every int8 linear layer with the same kernel, nothing else."""
    with torch.inference_mode():
        for layer in model.modules():
            if isinstance(layer, Int8WeightOnlyLinear):
                layer(vectors[layer.in_features])


def compare_greedy(reference: tuple[list[int], torch.Tensor], other: tuple[list[int], torch.Tensor]) -> dict:
    """Greedy agreement with the reference path. Random weights give nearly flat logits (top-1/top-2 margins of a
    few bf16 steps), so any change of kernel may flip a near-tie: where the tokens part, report the reference's
    margin there next to the logit difference, to tell a tie from a bug."""
    (ref_tokens, ref_logits), (tokens, logits) = reference, other
    first = next((i for i, (a, b) in enumerate(zip(ref_tokens, tokens, strict=True)) if a != b), None)
    upto = len(tokens) if first is None else first + 1  # identical prefixes up to here, so logits are comparable
    top2 = ref_logits[:upto].topk(2, dim=-1).values
    return {
        "greedy_tokens_equal": first is None,
        "first_different_step": first,
        "max_abs_logit_diff_on_shared_prefix": (ref_logits[:upto] - logits[:upto]).abs().max().item(),
        "reference_margin_at_first_difference": None if first is None else (top2[-1, 0] - top2[-1, 1]).item(),
        "reference_logit_scale": ref_logits.abs().max().item(),
    }


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("model", type=Path, help="converted bf16 folder")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-prefill", action="store_true")
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument("--paths", help="comma-separated subset of the decoding paths (the first is the reference)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True, dtype=torch.bfloat16)
    model.eval()
    config = model.config
    results = {"threads": torch.get_num_threads(), "attn": config._attn_implementation, "torch": torch.__version__}

    # -- prefill ---------------------------------------------------------------------------------------------
    if not args.skip_prefill:
        ids7 = image_prompt(config, 7)
        pixels7 = random_pixels(config, 7, torch.bfloat16)
        floor = llama_like(config, torch.bfloat16)
        floor_ids = text_prompt_like(ids7)

        def hovle_prefill():
            prefill(model, input_ids=ids7, pixel_values=pixels7)

        def llama_prefill():
            prefill(floor, input_ids=floor_ids)

        hovle_s = best_of(hovle_prefill, 1)
        llama_s = best_of(llama_prefill, 1)
        results["prefill"] = {
            "sequence_tokens": ids7.shape[1],
            "hovle_s": hovle_s,
            "llama_32_layers_s": llama_s,
            "ratio_to_llama": hovle_s / llama_s,
        }
        print(json.dumps(results["prefill"], indent=2), flush=True)
        del floor  # free its 5.2 GB before decoding
    # -- decoding --------------------------------------------------------------------------------------------
    ids = image_prompt(config, 1)
    pixels = random_pixels(config, 1, torch.bfloat16)

    matrices = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, 1, w.shape[1], dtype=torch.bfloat16) for w in matrices}

    def replay():
        with torch.inference_mode():
            for weight in matrices:
                F.linear(vectors[weight.shape[1]], weight)

    def stream_weights():
        with torch.inference_mode():
            for parameter in model.parameters():
                parameter.sum()

    def decode(**kwargs) -> tuple[list[float], list[int], torch.Tensor]:
        clock = StepClock()
        out = greedy_generate(
            model,
            args.new_tokens + 1,
            input_ids=ids,
            pixel_values=pixels,
            streamer=clock,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        logits = torch.cat(out.logits).float()  # (new tokens, vocab)
        return clock.step_seconds(), out.sequences[0, ids.shape[1] :].tolist(), logits

    # name -> (attention implementation, generate() arguments)
    paths = {
        "dynamic": ("sdpa", {}),
        # Same cache type, keys/values kept in float32 (`sdpa_float32_kv`): bf16 attention is slow without native bf16.
        "dynamic_float32_kv": ("sdpa_float32_kv", {}),
        "static_compiled": ("sdpa", {"cache_implementation": "static", "compile_config": compiled_decoding_config()}),
        # Both: a compiled step over a float32 static cache.
        "static_compiled_float32_kv": (
            "sdpa_float32_kv",
            {"cache_implementation": "static", "compile_config": compiled_decoding_config()},
        ),
        # Under compile, eager attention becomes a few fused kernels; the CPU flash kernel of sdpa costs ~1 ms per
        # call at one query against a 354-slot static cache (measured), more than the fused version.
        "static_compiled_eager_attention": (
            "eager",
            {"cache_implementation": "static", "compile_config": compiled_decoding_config()},
        ),
    }
    if not args.skip_int8:
        # Last: quantises the model in place. Both CPU levers together: int8 weights, float32 cache and attention.
        paths["int8_weight_only_float32_kv"] = ("sdpa_float32_kv", {})
    if args.paths:
        paths = {name: paths[name] for name in args.paths.split(",")}
    bandwidth = best_of(stream_weights, 3)  # before any path (the int8 one replaces the weights)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    replay()
    replay_times = repeated(replay, 5)
    decoding, reference = {}, None
    for name, (attention, kwargs) in paths.items():
        set_attention(model, attention)
        if name.startswith("int8"):
            quantize_linear_int8(model)
            int8_replay = functools.partial(replay_layers, model, vectors)
            int8_replay()
            decoding["int8_linear_replay_ms_median"] = statistics.median(repeated(int8_replay, 5)) * 1e3
        if "compile_config" in kwargs:
            start = time.perf_counter()
            decode(**kwargs)  # compiles the decoding step
            decoding[f"{name}_warmup_generate_s"] = time.perf_counter() - start
        steps, tokens, logits = decode(**kwargs)
        if not name.startswith("int8"):
            replay_times += repeated(replay, 5)
        reference = reference or (tokens, logits)
        decoding[name] = {
            "ms_per_token_median": statistics.median(steps) * 1e3,
            "ms_per_token_mean": statistics.mean(steps) * 1e3,
            **compare_greedy(reference, (tokens, logits)),
        }
        print(name, json.dumps(decoding[name]), flush=True)
    linear_floor = statistics.median(replay_times)
    for name in paths:
        per_token = decoding[name]["ms_per_token_median"] / 1e3
        decoding[name]["ratio_to_linear_replay"] = per_token / linear_floor
        decoding[name]["ratio_to_bandwidth_bound"] = per_token / bandwidth
    if "int8_weight_only_float32_kv" in paths:
        int8 = decoding["int8_weight_only_float32_kv"]
        int8["ratio_to_int8_linear_replay"] = int8["ms_per_token_median"] / decoding["int8_linear_replay_ms_median"]
    results["decode"] = {
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.new_tokens,
        **decoding,
        "linear_replay_ms_median": linear_floor * 1e3,
        "linear_replay_ms_min": min(replay_times) * 1e3,
        "weight_stream_ms": bandwidth * 1e3,
        "weight_gb": weight_bytes / 1e9,
        "weight_stream_gb_per_s": weight_bytes / bandwidth / 1e9,
        "linear_replay_gb_per_s": sum(w.numel() * w.element_size() for w in matrices) / linear_floor / 1e9,
    }
    print(json.dumps(results["decode"], indent=2), flush=True)

    write_json(args.json, results)


if __name__ == "__main__":
    main()
