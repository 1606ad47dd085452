"""HoVLE through the vLLM plugin at full size on one CUDA GPU: decoding tokens/s at batch 1 and 32, against the
memory-bandwidth bound of the card it runs on.

A random full-size HoVLE (the release's config: 8 + 24 layers of width 2048, InternLM2's vocabulary, bf16) is
written as a converted folder with the release's tokenizer (vendored under tests/fixtures/internlm2), then served by
vLLM's offline engine (CUDA graphs on, vLLM's defaults). Each request is a one-image (1 tile) chat prompt generating
NEW_TOKENS tokens (EOS ignored). Decoding time = time(NEW_TOKENS) - time(1 token), so prefill is left out.

One decoding step reads every weight once: ~4.4 GB in bf16 (both stacks and the LM head; the token tables are only
gathered). The bound is 4.4 GB / the measured device-to-device copy bandwidth; at batch 32 the same bytes serve 32
tokens. Needs vLLM 0.32 with CUDA (`pip install "hovle[vllm]"`) in the environment that runs it:

    python benchmarks/vllm_gpu_check.py --json benchmarks/results/vllm_gpu_<card>.json
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import argument_parser, cuda_environment, full_size_config, write_json

NEW_TOKENS = 256
WEIGHT_BYTES_PER_STEP = 4.4e9
RELEASE_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "internlm2"


def copy_bandwidth(gigabytes: float = 2.0, repeats: int = 20) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), the best of `repeats`."""
    source = torch.empty(int(gigabytes * 1e9) // 2, dtype=torch.bfloat16, device="cuda")
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del source, target
    torch.cuda.empty_cache()
    return 2 * gigabytes * 1e9 / best


def write_random_folder(folder: Path) -> Path:
    """A converted folder holding a random full-size HoVLE in bf16, its tokenizer and processor."""
    from hovle.conversion.tokenizer import convert_tokenizer
    from hovle.modeling_hovle import HoVLEForConditionalGeneration
    from hovle.processing_hovle import build_processor

    config = full_size_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = HoVLEForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer = convert_tokenizer(RELEASE_TOKENIZER, config.text_config.vocab_size, 32768)
    build_processor(tokenizer, config).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    import vllm
    from vllm import LLM, SamplingParams

    import hovle

    hovle.register_auto_classes()
    bandwidth = copy_bandwidth()
    bound_ms = WEIGHT_BYTES_PER_STEP / bandwidth * 1e3
    tmp = Path(tempfile.mkdtemp())
    try:
        folder = write_random_folder(tmp / "hovle-full-random")
        llm = LLM(model=str(folder), dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.6)
        prompt = "<|im_start|>user\n<image>\nDescribe this picture.<|im_end|><|im_start|>assistant\n"
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))
        request = {"prompt": prompt, "multi_modal_data": {"image": image}}

        def seconds(batch: int, tokens: int) -> float:
            params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
            llm.generate([request] * batch, params, use_tqdm=False)  # warm-up (and the image cache)
            start = time.perf_counter()
            llm.generate([request] * batch, params, use_tqdm=False)
            return time.perf_counter() - start

        results = {
            **cuda_environment(),
            "vllm": vllm.__version__,
            "copy_bandwidth_GBps": bandwidth / 1e9,
            "bound_ms_per_step": bound_ms,
            "new_tokens": NEW_TOKENS,
        }
        for batch in (1, 32):
            decode = seconds(batch, NEW_TOKENS) - seconds(batch, 1)
            step_ms = decode / (NEW_TOKENS - 1) * 1e3
            results[f"batch_{batch}"] = {
                "ms_per_step": step_ms,
                "tokens_per_s": batch * (NEW_TOKENS - 1) / decode,
                "fraction_of_bandwidth_bound": bound_ms / step_ms,
            }
            print(
                f"batch {batch:2d}: {step_ms:.2f} ms/step, {results[f'batch_{batch}']['tokens_per_s']:.0f} tok/s, "
                f"{bound_ms / step_ms:.0%} of the bound ({bound_ms:.2f} ms)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
