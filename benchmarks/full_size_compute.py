"""Full-size bf16 decoding and prefill on this machine, each side by side with its floor in one run.

    python benchmarks/full_size_compute.py /big/work/converted-bf16 [--new-tokens 64] [--json out.json]

* Decoding, batch 1, prompt = one 448 px tile (256 image tokens) + 30 text tokens, greedy: per-token time
  = (generate 1 + N tokens - generate 1 token) / N, against
  - the matrix-vector floor: one token through every weight matrix of the model with `F.linear` (same dtype,
    same kernels), and
  - the memory-bandwidth bound: streaming every weight byte once (a sum over every parameter).
* Prefill of a 7-tile image (6 + thumbnail) + 30 text tokens against a plain 32-layer `LlamaForCausalLM` of the
  same width and vocabulary on the same sequence length (both computing only the last position's logits).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, LlamaConfig, LlamaForCausalLM


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def prompt_ids(config, tiles: int, text_tokens: int) -> torch.Tensor:
    image = [config.image_start_token_id] + [config.image_token_id] * (tiles * config.tokens_per_tile)
    return torch.tensor([[1, *image, config.image_end_token_id, *range(1000, 1000 + text_tokens)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="converted bf16 folder")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-prefill", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True, dtype=torch.bfloat16)
    model.eval()
    config = model.config
    results = {"threads": torch.get_num_threads(), "attn": config._attn_implementation}

    # -- decoding --------------------------------------------------------------------------------------------
    ids = prompt_ids(config, 1, 30)
    pixels = torch.randn(1, 3, 448, 448, dtype=torch.bfloat16)
    kw = dict(do_sample=False, pad_token_id=2)

    def generate(n):
        with torch.inference_mode():
            model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=n, min_new_tokens=n, **kw)

    one = best_of(lambda: generate(1), args.repeats)
    many = best_of(lambda: generate(1 + args.new_tokens), args.repeats)
    per_token = (many - one) / args.new_tokens

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

    replay()
    linear_floor = best_of(replay, 5)
    bandwidth = best_of(stream_weights, 3)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    results["decode"] = {
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.new_tokens,
        "ms_per_token": per_token * 1e3,
        "linear_replay_ms": linear_floor * 1e3,
        "weight_stream_ms": bandwidth * 1e3,
        "ratio_to_linear_replay": per_token / linear_floor,
        "ratio_to_bandwidth_bound": per_token / bandwidth,
        "weight_gb": weight_bytes / 1e9,
        "linear_replay_gb_per_s": sum(w.numel() * w.element_size() for w in matrices) / linear_floor / 1e9,
        "weight_stream_gb_per_s": weight_bytes / bandwidth / 1e9,
    }
    print(json.dumps(results["decode"], indent=2), flush=True)

    # -- prefill ---------------------------------------------------------------------------------------------
    if not args.skip_prefill:
        ids7 = prompt_ids(config, 7, 30)
        pixels7 = torch.randn(7, 3, 448, 448, dtype=torch.bfloat16)
        text = config.text_config
        floor_config = LlamaConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers + config.embedding_config.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            num_key_value_heads=text.num_key_value_heads,
            rope_parameters=text.rope_parameters,
            max_position_embeddings=text.max_position_embeddings,
        )
        floor_config._attn_implementation = config._attn_implementation
        with torch.device("meta"):
            floor = LlamaForCausalLM(floor_config)
        floor = floor.to_empty(device="cpu").to(torch.bfloat16).eval()
        for parameter in floor.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
        floor_ids = torch.randint(100, 1000, ids7.shape)

        def hovle_prefill():
            with torch.inference_mode():
                model(input_ids=ids7, pixel_values=pixels7, logits_to_keep=1, use_cache=False)

        def llama_prefill():
            with torch.inference_mode():
                floor(input_ids=floor_ids, logits_to_keep=1, use_cache=False)

        hovle_s = best_of(hovle_prefill, 1)
        llama_s = best_of(llama_prefill, 1)
        results["prefill"] = {
            "sequence_tokens": ids7.shape[1],
            "hovle_s": hovle_s,
            "llama_32_layers_s": llama_s,
            "ratio_to_llama": hovle_s / llama_s,
        }
        print(json.dumps(results["prefill"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
