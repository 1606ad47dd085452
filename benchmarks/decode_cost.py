"""Decoding cost per token of HoVLE with the cache, side by side in one run with

* the structural floor: a plain `LlamaForCausalLM` of the same width, vocabulary and 8 + 24 layers, decoding the
  same number of tokens after a prompt of the same length (no image work, one stack, one mask);
* full recomputation per token (`use_cache=False`): what the original release's generation path does.

The per-token figure is timed directly: the median gap between consecutive decoding steps of one `generate()` call
(`common.median_step_seconds`, as `gpu_check.py` does), the lowest of `--repeats` calls; the prefill is not in it.
(Subtracting a 1-token from an N-token generation instead mixed two calls' noise: -470 ms/token on a busy machine.)
Random weights: decoding cost does not depend on their values.

    python benchmarks/decode_cost.py [--hidden 1024] [--new-tokens 16] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from hovle.configuration_hovle import HoVLEConfig
from hovle.modeling_hovle import HoVLEForConditionalGeneration

from common import (
    argument_parser,
    cpu_environment,
    image_prompt,
    llama_config_like,
    median_step_seconds,
    random_pixels,
    text_prompt_like,
    write_json,
)

VOCAB, IMAGE_TOKEN = 92553, 92546


def build(hidden: int, dtype: torch.dtype):
    """HoVLE of width `hidden` (8 + 24 layers, the release's vocabulary and 448 px tiles) and its floor, a plain
    32-layer `LlamaForCausalLM` of the same width and vocabulary."""
    shared = dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        vocab_size=VOCAB,
    )
    config = HoVLEConfig(
        embedding_config=dict(shared, num_hidden_layers=8, image_size=448, patch_size=14),
        text_config=dict(shared, num_hidden_layers=24, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        image_token_id=IMAGE_TOKEN,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hovle = HoVLEForConditionalGeneration(config).to(dtype).eval()
    floor = LlamaForCausalLM(llama_config_like(config)).to(dtype).eval()
    return hovle, floor, config


def per_token(model, new_tokens: int, repeats: int, use_cache: bool = True, **inputs) -> float:
    """Seconds per decoded token: the median step gap of a `new_tokens`-token generation, lowest of `repeats`."""
    return min(median_step_seconds(model, new_tokens, use_cache=use_cache, **inputs) for _ in range(repeats))


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--hidden", type=int, default=1024, help="model width (the release: 2048)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per timed generation (at least 2)")
    parser.add_argument(
        "--recompute-tokens", type=int, default=4, help="tokens for the slow no-cache baseline (at least 2)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    hovle, floor, config = build(args.hidden, dtype)
    prompt = image_prompt(config, 1, args.text_tokens, first_text_id=100)
    pixels = random_pixels(config, 1, dtype)
    floor_prompt = text_prompt_like(prompt)

    results = {
        "hidden": args.hidden,
        "layers": "8 + 24",
        "dtype": args.dtype,
        "prompt_tokens": prompt.shape[1],
        "new_tokens": args.new_tokens,
        "recompute_tokens": args.recompute_tokens,
        "method": f"median gap between decoding steps of one generate() call, lowest of {args.repeats} calls",
        "machine": cpu_environment(),
    }
    # Interleave the two cached measurements so timing noise hits both alike.
    hovle_s = per_token(hovle, args.new_tokens, args.repeats, input_ids=prompt, pixel_values=pixels)
    floor_s = per_token(floor, args.new_tokens, args.repeats, input_ids=floor_prompt)
    hovle_s = min(hovle_s, per_token(hovle, args.new_tokens, args.repeats, input_ids=prompt, pixel_values=pixels))
    floor_s = min(floor_s, per_token(floor, args.new_tokens, args.repeats, input_ids=floor_prompt))
    recompute_s = per_token(hovle, args.recompute_tokens, 1, use_cache=False, input_ids=prompt, pixel_values=pixels)
    results.update(
        hovle_cached_ms_per_token=hovle_s * 1e3,
        llama_floor_ms_per_token=floor_s * 1e3,
        hovle_full_recompute_ms_per_token=recompute_s * 1e3,
        ratio_to_llama_floor=hovle_s / floor_s,
        speedup_over_full_recompute=recompute_s / hovle_s,
    )
    print(f"| measure ({args.dtype}, width {args.hidden}, 8+24 layers, {prompt.shape[1]}-token prompt) | ms/token |")
    print("|---|---|")
    print(f"| HoVLE, cached (both stacks) | {hovle_s * 1e3:.1f} |")
    print(f"| plain LlamaForCausalLM, 32 layers, cached (floor) | {floor_s * 1e3:.1f} |")
    print(f"| HoVLE, full recomputation per token | {recompute_s * 1e3:.1f} |")
    print(f"ratio to floor: {hovle_s / floor_s:.3f}x; speed-up over full recomputation: {recompute_s / hovle_s:.1f}x")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
