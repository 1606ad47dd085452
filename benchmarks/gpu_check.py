"""Full-size HoVLE decoding on one CUDA GPU against the memory-bandwidth bound of the card it runs on, bf16.

    python benchmarks/gpu_check.py OUT.json [--new-tokens 128] [--batches 8 32]

Needs no download: the models are built at full size from the release config with random weights directly on the
GPU (speed does not depend on the values). One run measures, writing OUT.json after each item (a failing item is
recorded as `FAILED: ...` and the next still runs):

1. `bandwidth`: the card's rated DRAM bandwidth (`torch.cuda.get_device_properties`) and a measured
   device-to-device copy bandwidth, the denominator of every bound below.
2. `prefill`: one forward over a prompt of 1 and of 7 tiles (+ 30 text tokens), sdpa, ms (best of 3).
3. `hovle_b1`: batch-1 decoding after a 3-tile prompt (798 tokens), `--new-tokens` greedy tokens, with eager and
   sdpa attention over the default dynamic cache, and `static_compiled`: sdpa over `cache_implementation="static"`,
   which generate() compiles by itself on CUDA (transformers' auto-compile: `torch.compile`,
   `mode="reduce-overhead"`, i.e. CUDA graphs; the prefill stays eager). Per path: the median gap between decoding
   steps, the whole generate() call's ms per new token, peak memory, and both against the bound.
4. `hovle_batches`: left-padded batches (`--batches`, 1-3 tiles per row) over the static compiled path and sdpa:
   tokens/s and the bound.
5. `llama_floor_b1`: a plain 32-layer `LlamaForCausalLM` of HoVLE's width and vocabulary, prompt of the same
   length, through the same sdpa and static compiled paths: the floor the same machinery reaches.
6. `dynamo`: graph breaks, recompilations and CUDA-graph skips counted over the run.

The bound of a decoding step is the bytes it must read (decoder weights, LM head, and the keys and values of the mean
context of the run) at the measured copy bandwidth; `fraction_of_bound` is bound / measured (1.0 = at the bound).
Designed to take about 8 minutes on an H100 or H200 (most of it compiling), within a 15-minute device budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch
from torch import nn

from hovle.modeling_hovle import HoVLEForConditionalGeneration

from common import (
    argument_parser,
    attempt,
    best_of,
    bound_report,
    bytes_of,
    cuda_environment,
    full_size_config,
    greedy_generate,
    image_prompt,
    kv_cache_bytes_read,
    left_padded_image_batch,
    llama_like,
    measured_copy_bandwidth,
    median_step_seconds,
    prefill,
    random_pixels,
    rated_memory_bandwidth,
    text_prompt_like,
    timed,
    write_json,
)

SYNC = torch.cuda.synchronize
# generate()'s own compile path: a static cache on CUDA is enough to trigger it (CUDA graphs, reduce-overhead).
STATIC = {"cache_implementation": "static"}


def decode_timing(model, new_tokens: int, step_bytes: Callable[[float], float], bandwidth: float, **inputs) -> dict:
    """Decoding `new_tokens` greedy tokens with `inputs`: the median step (between consecutive decoding steps of one
    call, a clock synchronising at each) and the whole call's ms per new token (a separate call, no clock), after
    two warm-up calls (kernels, allocator, compilation, CUDA-graph recording); tokens/s, peak memory, bounds."""
    batch = inputs["input_ids"].shape[0]
    for _ in range(2):
        greedy_generate(model, new_tokens, **inputs)
    torch.cuda.reset_peak_memory_stats()
    whole = timed(lambda: greedy_generate(model, new_tokens, **inputs), SYNC)
    step_ms = median_step_seconds(model, new_tokens, SYNC, **inputs) * 1e3
    generate_ms = whole / new_tokens * 1e3
    mean_context = inputs["input_ids"].shape[1] + new_tokens / 2
    bytes_per_step = step_bytes(mean_context)
    return {
        "batch": batch,
        "prompt_tokens": inputs["input_ids"].shape[1],
        "new_tokens": new_tokens,
        "median_step_ms": step_ms,
        "generate_ms_per_token": generate_ms,
        "tokens_per_s": batch * 1e3 / step_ms,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "bytes_per_step": bytes_per_step,
        "median_step_vs_bound": bound_report(step_ms, bytes_per_step, bandwidth),
        "generate_vs_bound": bound_report(generate_ms, bytes_per_step, bandwidth),
    }


def hovle_step_bytes(model: HoVLEForConditionalGeneration, batch: int) -> Callable[[float], float]:
    """Bytes one HoVLE decoding step reads at a context length: both decoder stacks, the final norm and LM head
    (the token tables are read one row a token, the vision weights not at all), and both stacks' keys and values."""
    inner = model.model
    weights = bytes_of([inner.embedding_model.layers, inner.language_model.layers, inner.language_model.norm])
    weights += bytes_of([model.lm_head])
    text, embedding = model.config.text_config, model.config.embedding_config

    def at(context: float) -> float:
        kv = kv_cache_bytes_read(text, text.num_hidden_layers, batch, context, model.dtype)
        kv += kv_cache_bytes_read(embedding, embedding.num_hidden_layers, batch, context, model.dtype)
        return weights + kv

    return at


def llama_step_bytes(model: nn.Module, batch: int) -> Callable[[float], float]:
    weights = bytes_of([model.model.layers, model.model.norm, model.lm_head])
    config = model.config
    return lambda context: weights + kv_cache_bytes_read(config, config.num_hidden_layers, batch, context, model.dtype)


def build_hovle(attn: str) -> HoVLEForConditionalGeneration:
    config = full_size_config(attn_implementation=attn)
    with torch.device("cuda"):  # random init straight on the GPU (fast); values do not affect speed
        model = HoVLEForConditionalGeneration(config)
    return model.to(torch.bfloat16).eval()


def measure_prefill(model: HoVLEForConditionalGeneration) -> dict:
    report = {}
    for tiles in (1, 7):
        inputs = {
            "input_ids": image_prompt(model.config, tiles, device="cuda"),
            "pixel_values": random_pixels(model.config, tiles, torch.bfloat16, device="cuda"),
        }
        prefill(model, **inputs)  # warm-up
        ms = best_of(lambda inputs=inputs: prefill(model, **inputs), 3, SYNC) * 1e3
        report[f"{tiles}_tiles"] = {"sequence": inputs["input_ids"].shape[1], "ms": ms}
    return report


def hovle_batch1(model: HoVLEForConditionalGeneration, new_tokens: int, bandwidth: float) -> dict[str, Callable]:
    """The batch-1 paths, each a measurement to attempt; the attention implementation is switched in place."""
    ids = image_prompt(model.config, 3, device="cuda")
    pixels = random_pixels(model.config, 3, torch.bfloat16, device="cuda")
    step_bytes = hovle_step_bytes(model, 1)

    def path(attn: str, **extra) -> Callable[[], dict]:
        def run() -> dict:
            model.set_attn_implementation(attn)
            return decode_timing(model, new_tokens, step_bytes, bandwidth, input_ids=ids, pixel_values=pixels, **extra)

        return run

    return {"eager": path("eager"), "sdpa": path("sdpa"), "static_compiled": path("sdpa", **STATIC)}


def hovle_batches(model: HoVLEForConditionalGeneration, sizes: list[int], new_tokens: int, bandwidth: float) -> dict:
    runs = {}
    for size in sizes:
        ids, mask, pixels = left_padded_image_batch(model.config, size, device="cuda")
        inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
        step_bytes = hovle_step_bytes(model, size)
        for name, extra in (("static_compiled", STATIC), ("sdpa", {})):
            runs[f"b{size}_{name}"] = lambda step_bytes=step_bytes, inputs=inputs, extra=extra: decode_timing(
                model, new_tokens, step_bytes, bandwidth, **inputs, **extra
            )
    return runs


def llama_floor(new_tokens: int, bandwidth: float) -> dict[str, Callable]:
    config = full_size_config(attn_implementation="sdpa")
    model = llama_like(config, torch.bfloat16, device="cuda")
    ids = text_prompt_like(image_prompt(config, 3, device="cuda"))
    step_bytes = llama_step_bytes(model, 1)
    return {
        "sdpa": lambda: decode_timing(model, new_tokens, step_bytes, bandwidth, input_ids=ids),
        "static_compiled": lambda: decode_timing(model, new_tokens, step_bytes, bandwidth, input_ids=ids, **STATIC),
    }


def dynamo_counters() -> dict:
    """Graph breaks, compiled graphs and CUDA-graph skips so far: the compiled decoding step should add one graph
    per shape and no break or skip."""
    from torch._dynamo.utils import counters

    return {
        "graph_breaks": dict(counters["graph_break"]),
        "stats": dict(counters["stats"]),
        "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0),
    }


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("out")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    args = parser.parse_args()
    report = cuda_environment()
    start = time.perf_counter()

    def record(section: str, name: str, measurement: Callable[[], object]) -> None:
        began = time.perf_counter()
        report.setdefault(section, {})[name] = attempt(measurement)  # a failure is recorded, the next item runs
        took = round(time.perf_counter() - began, 1)
        print(section, name, took, "s", json.dumps(report[section][name]), flush=True)
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_json(args.out, report)

    copy = measured_copy_bandwidth()
    record("bandwidth", "measured_copy_bytes_per_s", lambda: copy)
    record("bandwidth", "rated_bytes_per_s", rated_memory_bandwidth)
    measure_hovle(record, report, args, copy)
    torch.cuda.empty_cache()  # the HoVLE model is gone with measure_hovle's frame
    for name, run in attempt_floor(args.new_tokens, copy).items():
        record("llama_floor_b1", name, run)
    record("dynamo", "counters", dynamo_counters)


def measure_hovle(record: Callable, report: dict, args, bandwidth: float) -> None:
    model = build_hovle("sdpa")
    report["hovle_parameters"] = sum(p.numel() for p in model.parameters())
    record("prefill", "sdpa", lambda: measure_prefill(model))
    for name, run in hovle_batch1(model, args.new_tokens, bandwidth).items():
        record("hovle_b1", name, run)
    for name, run in hovle_batches(model, args.batches, args.new_tokens, bandwidth).items():
        record("hovle_batches", name, run)


def attempt_floor(new_tokens: int, bandwidth: float) -> dict[str, Callable]:
    """The floor's measurements, or one that reports why the floor model could not be built."""
    built = attempt(lambda: llama_floor(new_tokens, bandwidth))
    return built if isinstance(built, dict) else {"build": lambda: built}


if __name__ == "__main__":
    main()
