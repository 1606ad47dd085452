"""16 chat requests (text only and 1-3 images, 1-7 tiles each), served three ways side by side in one run:

  * vLLM's offline engine with the HoVLE plugin (continuous batching, paged KV caches), all 16 submitted at once;
  * transformers `generate()`, one request after the other;
  * transformers `generate()`, the 16 left-padded into one batch.

Every request generates exactly NEW_TOKENS tokens greedily (EOS ignored) so the three do the same work; reported:
requests/s, generated tokens/s and the ratios to the one-by-one baseline. The model is a random HoVLE of reduced
size (width 512, head_dim 64 as vLLM's CPU attention needs, 2 embedding + 6 LLM layers, InternLM2's real 92,553-token
vocabulary and tokenizer, 448 px tiles of 256 tokens), float32. vLLM's engine start is reported, not counted.

Runs in the vLLM environment (`scripts/install_vllm.sh`), which has both libraries:

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --json benchmarks/results/vllm_throughput_cpu.json
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from common import argument_parser, write_json

NEW_TOKENS = 32
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
RELEASE_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "internlm2"
WIDTH = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 1408}
# (question, image sizes): 16 requests, 0-3 images of 1, 3, 4 or 7 tiles.
REQUESTS = [
    ("Hello, who are you?", []),
    ("What is in this picture?", [(448, 448)]),
    ("Describe the image in detail.", [(1344, 448)]),
    ("Compare the two images.", [(448, 448), (896, 448)]),
    ("Write a short poem about the sea.", []),
    ("What colours do you see?", [(500, 380)]),
    ("Is there text in it?", [(896, 448)]),
    ("Which of the three is brightest?", [(448, 448), (448, 448), (896, 448)]),
    ("Summarise our conversation.", []),
    ("Count the objects.", [(1344, 448)]),
    ("Where was this taken?", [(448, 448)]),
    ("Tell me a joke.", []),
    ("What is the main subject?", [(500, 380)]),
    ("Are these the same?", [(896, 448), (896, 448)]),
    ("Explain quantum computing briefly.", []),
    ("What time of day is it?", [(448, 448)]),
]


def build_folder(root: Path) -> Path:
    from hovle.conversion.to_transformers import convert
    from hovle.testing import random_original_state_dict, tiny_config_real_vocab, write_original_checkpoint

    config = tiny_config_real_vocab(embedding={**WIDTH, "num_hidden_layers": 2}, text={**WIDTH, "num_hidden_layers": 6})
    state = random_original_state_dict(config, seed=0, std=0.05)
    source = write_original_checkpoint(root / "original", config, state_dict=state)
    for name in TOKENIZER_FILES:
        shutil.copy(RELEASE_TOKENIZER / name, source / name)
    return convert(source, root / "hovle-bench", dtype="float32", progress=False)


def images_for(sizes, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def rendered_requests(processor) -> list[tuple[str, list[Image.Image]]]:
    out = []
    for seed, (question, sizes) in enumerate(REQUESTS):
        content = [{"type": "image"}] * len(sizes) + [{"type": "text", "text": question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        out.append((text, images_for(sizes, seed)))
    return out


def transformers_runs(folder: Path, requests) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def one(text, images):
        inputs = processor(text=text, images=images or None, return_tensors="pt")
        with torch.inference_mode():
            return model.generate(**inputs, **settings).shape[1] - inputs["input_ids"].shape[1]

    one(*requests[0])  # warm-up
    start = time.perf_counter()
    generated = sum(one(text, images) for text, images in requests)
    one_by_one = time.perf_counter() - start

    texts = [text for text, _ in requests]
    images = [images for _, images in requests]
    start = time.perf_counter()
    inputs = processor(text=texts, images=images, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, **settings)
    batched = time.perf_counter() - start
    batch_generated = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    return {
        "one_by_one": {"seconds": one_by_one, "generated_tokens": generated},
        "left_padded_batch": {
            "seconds": batched,
            "generated_tokens": batch_generated,
            "padded_prompt_length": inputs["input_ids"].shape[1],
        },
    }


def vllm_run(folder: Path, requests, bos: str) -> dict:
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=4096,
        # Of the RAM of the machine's NUMA node on the CPU backend: weights, profiling activations and the KV cache.
        gpu_memory_utilization=0.4,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 3},
    )
    engine_start = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)

    def inputs(text, images):
        # vLLM adds the BOS to a text prompt itself; the rendered conversation carries one already.
        prompt = {"prompt": text.removeprefix(bos)}
        if images:
            prompt["multi_modal_data"] = {"image": images}
        return prompt

    llm.generate([inputs(*requests[0])], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate([inputs(*r) for r in requests], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return {
        "engine_start_seconds": engine_start,
        "seconds": seconds,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
    }


def rates(run: dict, requests: int) -> dict:
    return {
        **run,
        "requests_per_s": requests / run["seconds"],
        "tokens_per_s": run["generated_tokens"] / run["seconds"],
    }


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    import vllm
    from transformers import AutoProcessor

    import hovle

    hovle.register_auto_classes()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp))
        processor = AutoProcessor.from_pretrained(folder)
        requests = rendered_requests(processor)
        hf = transformers_runs(folder, requests)
        served = vllm_run(folder, requests, processor.tokenizer.bos_token)
    count = len(requests)
    baseline = rates(hf["one_by_one"], count)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "requests": count,
        "new_tokens_per_request": NEW_TOKENS,
        "transformers_one_by_one": baseline,
        "transformers_left_padded_batch": rates(hf["left_padded_batch"], count),
        "vllm": rates(served, count),
    }
    for key in ("transformers_left_padded_batch", "vllm"):
        results[key]["speedup_vs_one_by_one"] = baseline["seconds"] / results[key]["seconds"]
    for key in ("transformers_one_by_one", "transformers_left_padded_batch", "vllm"):
        run = results[key]
        print(
            f"{key:32s} {run['seconds']:7.2f} s  {run['requests_per_s']:6.3f} req/s  {run['tokens_per_s']:7.1f} tok/s"
            + (f"  x{run['speedup_vs_one_by_one']:.2f}" if "speedup_vs_one_by_one" in run else "")
        )
    print(f"vLLM engine start (not counted): {served['engine_start_seconds']:.1f} s")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
