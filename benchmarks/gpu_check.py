"""Full-size HoVLE on one CUDA GPU: prefill time and decoding tokens/s per attention backend, bf16.

    python benchmarks/gpu_check.py OUT.json [--new-tokens 256]

Needs no download: the model is built at full size from the release config with random weights directly on the
GPU (speed does not depend on the values). Workload as the paper's throughput figure: 768 image tokens (3 tiles)
+ 30 text tokens, greedy, `--new-tokens` new tokens; plus the prefill of a 7-tile image. Backends: sdpa, and
flash_attention_2 when `flash_attn` is importable; then the floor, a plain 32-layer `LlamaForCausalLM` of the same
width and vocabulary decoding after a prompt of the same length (sdpa), and sdpa with a static cache under
`torch.compile(mode="reduce-overhead")`. The decoding figure is the median gap between consecutive decoding steps
of one `generate()` (after a warm-up call). Each backend's result (or its error) goes into OUT.json as soon as it is
known. Designed to finish well under 8 minutes on an H100 or H200.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from transformers import LogitsProcessorList

from hovle.modeling_hovle import HoVLEForConditionalGeneration

from common import (
    StepClock,
    argument_parser,
    attempt,
    best_of,
    cuda_environment,
    full_size_config,
    greedy_generate,
    image_prompt,
    llama_like,
    prefill,
    random_pixels,
    text_prompt_like,
    timed,
    write_json,
)

SYNC = torch.cuda.synchronize


def decode_ms_per_token(model, ids, new_tokens: int, **inputs) -> float:
    """Median time between consecutive decoding steps of one generate() call (same shapes every call, so a
    compiled model compiles once in the warm-up)."""
    greedy_generate(model, new_tokens, input_ids=ids, **inputs)  # warm-up (kernels, allocator, compilation)
    clock = StepClock(synchronize=SYNC)
    greedy_generate(model, new_tokens, input_ids=ids, logits_processor=LogitsProcessorList([clock]), **inputs)
    return statistics.median(clock.step_seconds()) * 1e3


def run_llama_floor(attn: str, new_tokens: int) -> dict:
    """A plain 32-layer LlamaForCausalLM of the same width and vocabulary, same prompt length: the floor."""
    config = full_size_config(attn_implementation=attn)
    model = llama_like(config, torch.bfloat16, device="cuda")
    ids = text_prompt_like(image_prompt(config, 3, device="cuda"))
    return {"decode_ms_per_token": decode_ms_per_token(model, ids, new_tokens)}


def run_backend(attn: str, new_tokens: int, static_compiled: bool = False) -> dict:
    config = full_size_config(attn_implementation=attn)
    with torch.device("cuda"):  # random init straight on the GPU (fast); values do not affect speed
        model = HoVLEForConditionalGeneration(config)
    model = model.to(torch.bfloat16).eval()
    result = {"parameters": sum(p.numel() for p in model.parameters())}
    ids = image_prompt(config, 3, device="cuda")
    pixels = random_pixels(config, 3, torch.bfloat16, device="cuda")
    if static_compiled:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
        ms = decode_ms_per_token(model, ids, new_tokens, pixel_values=pixels, cache_implementation="static")
        return {"decode_ms_per_token": ms, "decode_tokens_per_s": 1e3 / ms}

    def generate(n):
        greedy_generate(model, n, input_ids=ids, pixel_values=pixels)

    generate(4)  # warm-up (kernels, allocator)
    one = best_of(lambda: generate(1), 3, SYNC)
    full = timed(lambda: generate(1 + new_tokens), SYNC)
    step_ms = decode_ms_per_token(model, ids, new_tokens, pixel_values=pixels)
    result.update(
        prompt_tokens=ids.shape[1],
        new_tokens=new_tokens,
        prefill_768_image_tokens_ms=one * 1e3,
        decode_ms_per_token=step_ms,
        decode_tokens_per_s=1e3 / step_ms,
        end_to_end_tokens_per_s=(1 + new_tokens) / full,
    )
    ids7 = image_prompt(config, 7, device="cuda")
    pixels7 = random_pixels(config, 7, torch.bfloat16, device="cuda")

    def prefill7():
        prefill(model, input_ids=ids7, pixel_values=pixels7)

    prefill7()
    result["prefill_7_tiles_ms"] = best_of(prefill7, 3, SYNC) * 1e3
    result["sequence_7_tiles"] = ids7.shape[1]
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("out")
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    report = cuda_environment()
    runs = {"sdpa": lambda: run_backend("sdpa", args.new_tokens)}
    if report["flash_attn_importable"]:
        runs["flash_attention_2"] = lambda: run_backend("flash_attention_2", args.new_tokens)
    runs["llama_floor_sdpa"] = lambda: run_llama_floor("sdpa", args.new_tokens)
    runs["sdpa_static_compiled"] = lambda: run_backend("sdpa", args.new_tokens, static_compiled=True)
    for attn, run in runs.items():
        start = time.perf_counter()
        report[attn] = attempt(run)  # a failure is recorded and the next backend still runs
        torch.cuda.empty_cache()  # the backend's model is gone with run_backend's frame
        torch.cuda.reset_peak_memory_stats()
        print(attn, round(time.perf_counter() - start, 1), "s", json.dumps(report[attn]), flush=True)
        write_json(args.out, report)


if __name__ == "__main__":
    main()
