"""Full-size HoVLE on one CUDA GPU: prefill time and decoding tokens/s per attention backend, bf16.

    python benchmarks/gpu_check.py OUT.json [--new-tokens 256]

Needs no download: the model is built at full size from the release config with random weights directly on the
GPU (speed does not depend on the values). Workload as the paper's throughput figure: 768 image tokens (3 tiles)
+ 30 text tokens, greedy, `--new-tokens` new tokens; plus the prefill of a 7-tile image. Backends: sdpa, and
flash_attention_2 when `flash_attn` is importable. Each backend's result (or its error) goes into OUT.json.
Designed to finish well under 8 minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch
import transformers

from hovle.conversion.config_map import hovle_config_from_original
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import release_original_config


def timed(function) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def prompt(config, tiles: int, text_tokens: int = 30) -> torch.Tensor:
    image = [config.image_start_token_id] + [config.image_token_id] * (tiles * config.tokens_per_tile)
    return torch.tensor([[1, *image, config.image_end_token_id, *range(1000, 1000 + text_tokens)]], device="cuda")


class StepClock:
    """A logits processor that timestamps every decoding step (after a device sync)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def decode_ms_per_token(model, ids, new_tokens: int, **inputs) -> float:
    """Median time between consecutive decoding steps of one generate() call (same shapes every call, so a
    compiled model compiles once in the warm-up)."""
    from transformers import LogitsProcessorList

    kwargs = dict(do_sample=False, pad_token_id=2, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **inputs)
    with torch.inference_mode():
        model.generate(input_ids=ids, **kwargs)  # warm-up (kernels, allocator, compilation)
        clock = StepClock()
        model.generate(input_ids=ids, logits_processor=LogitsProcessorList([clock]), **kwargs)
    steps = sorted(b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False))
    return steps[len(steps) // 2] * 1e3


def run_llama_floor(attn: str, new_tokens: int) -> dict:
    """A plain 32-layer LlamaForCausalLM of the same width and vocabulary, same prompt length: the floor."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = hovle_config_from_original(release_original_config()).text_config
    config = LlamaConfig(**{**text.to_dict(), "num_hidden_layers": 32})
    config._attn_implementation = attn
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(100, 1000, (1, 801), device="cuda")
    return {"decode_ms_per_token": decode_ms_per_token(model, ids, new_tokens)}


def run_backend(attn: str, new_tokens: int, static_compiled: bool = False) -> dict:
    config = hovle_config_from_original(release_original_config())
    config._attn_implementation = attn
    with torch.device("cuda"):  # random init straight on the GPU (fast); values do not affect speed
        model = HoVLEForConditionalGeneration(config)
    model = model.to(torch.bfloat16).eval()
    result = {"parameters": sum(p.numel() for p in model.parameters())}
    ids = prompt(config, 3)
    if static_compiled:
        pixels = torch.randn(3, 3, 448, 448, device="cuda", dtype=torch.bfloat16)
        model.forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
        ms = decode_ms_per_token(model, ids, new_tokens, pixel_values=pixels, cache_implementation="static")
        return {"decode_ms_per_token": ms, "decode_tokens_per_s": 1e3 / ms}
    pixels = torch.randn(3, 3, 448, 448, device="cuda", dtype=torch.bfloat16)
    kwargs = dict(do_sample=False, pad_token_id=2)

    def generate(n):
        with torch.inference_mode():
            model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=n, min_new_tokens=n, **kwargs)

    generate(4)  # warm-up (kernels, allocator)
    one = min(timed(lambda: generate(1)) for _ in range(3))
    full = timed(lambda: generate(1 + new_tokens))
    step_ms = decode_ms_per_token(model, ids, new_tokens, pixel_values=pixels)
    result.update(
        prompt_tokens=ids.shape[1],
        new_tokens=new_tokens,
        prefill_768_image_tokens_ms=one * 1e3,
        decode_ms_per_token=step_ms,
        decode_tokens_per_s=1e3 / step_ms,
        end_to_end_tokens_per_s=(1 + new_tokens) / full,
    )
    ids7, pixels7 = prompt(config, 7), torch.randn(7, 3, 448, 448, device="cuda", dtype=torch.bfloat16)

    def prefill7():
        with torch.inference_mode():
            model(input_ids=ids7, pixel_values=pixels7, logits_to_keep=1, use_cache=False)

    prefill7()
    result["prefill_7_tiles_ms"] = min(timed(prefill7) for _ in range(3)) * 1e3
    result["sequence_7_tiles"] = ids7.shape[1]
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
    }
    runs = {"sdpa": lambda: run_backend("sdpa", args.new_tokens)}
    if report["flash_attn_importable"]:
        runs["flash_attention_2"] = lambda: run_backend("flash_attention_2", args.new_tokens)
    runs["llama_floor_sdpa"] = lambda: run_llama_floor("sdpa", args.new_tokens)
    runs["sdpa_static_compiled"] = lambda: run_backend("sdpa", args.new_tokens, static_compiled=True)
    for attn, run in runs.items():
        start = time.perf_counter()
        try:
            report[attn] = run()
        except Exception as error:  # record and go on to the next backend
            report[attn] = f"FAILED: {type(error).__name__}: {error}"
        torch.cuda.empty_cache()  # the backend's model is gone with run_backend's frame
        torch.cuda.reset_peak_memory_stats()
        print(attn, round(time.perf_counter() - start, 1), "s", json.dumps(report[attn]), flush=True)
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
