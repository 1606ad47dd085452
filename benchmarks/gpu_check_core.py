"""A short CUDA correctness check of the core model; needs no network (transformers as installed).

    python benchmarks/gpu_check_core.py FIXTURE_DIR OUT_JSON

FIXTURE_DIR is the golden fixture (`tests/fixtures/original_tiny`: `original/`, `expected.json`,
`expected.safetensors`, the original implementation's outputs on a tiny checkpoint). Checks:

1. the golden fixture converted and loaded with trust_remote_code on CUDA (float32, TF32 off): logits and greedy
   tokens against the original implementation's outputs;
2. for `pre` and `post`, each available attention backend (eager, sdpa, flash_attention_2 if importable) in
   bfloat16: cached greedy decoding == no-cache decoding, and a left-padded batch row == the prompt alone;
3. for `pre` and `post`, float32 sdpa, a left-padded image batch: `cache_implementation="static"`, which generate()
   compiles by itself on CUDA (CUDA graphs, `mode="reduce-overhead"`), gives the dynamic cache's greedy tokens and
   logits, on the first call and on a second one that replays the recorded graphs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from hovle.conversion.to_transformers import convert
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import tiny_config

from common import (
    argument_parser,
    attempt,
    cuda_environment,
    greedy_generate,
    image_prompt,
    left_padded_image_batch,
    random_pixels,
    write_json,
)


def golden(fixture: str, device: str) -> dict:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = convert(f"{fixture}/original", tempfile.mkdtemp() + "/hf", dtype="float32", progress=False)
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    model = model.to(device).eval()
    expected = load_file(f"{fixture}/expected.safetensors")
    report = {}
    for case in json.loads(Path(fixture, "expected.json").read_text())["cases"]:
        name = case["name"]
        ids = expected[f"{name}.input_ids"].to(device)
        extra = {"pixel_values": expected[f"{name}.pixel_values"].to(device)} if case["tiles"] else {}
        with torch.no_grad():
            logits = model(input_ids=ids, **extra).logits.cpu()
        tokens = model.generate(input_ids=ids, **extra, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
        report[name] = {
            "max_abs_diff": (logits - expected[f"{name}.logits"]).abs().max().item(),
            "greedy_equal": tokens.cpu().tolist() == expected[f"{name}.greedy"][0].tolist(),
        }
    return report


def decoding(loc: str, attn: str, device: str) -> dict:
    torch.manual_seed(0)
    config = tiny_config(loc)
    config._attn_implementation = attn
    model = HoVLEForConditionalGeneration(config).to(device, torch.bfloat16).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    # BOS, 5, 6, <img> + 2 tiles x 4 <IMG_CONTEXT> + </img>, 7, 8, 9
    ids = image_prompt(config, 2, text_tokens=3, first_text_id=7, before=(5, 6), device=device)
    pixels = random_pixels(config, 2, torch.bfloat16, device=device)
    cached = greedy_generate(model, 12, input_ids=ids, pixel_values=pixels, use_cache=True)[0, ids.shape[1] :]
    full = greedy_generate(model, 12, input_ids=ids, pixel_values=pixels, use_cache=False)[0, ids.shape[1] :]
    # Left-padded batch: row 0 is the image prompt, row 1 a longer text-only prompt.
    text = torch.tensor([[1] + list(range(30, 50))], device=device)
    width = text.shape[1]
    batch = torch.full((2, width), 2, device=device)
    mask = torch.zeros((2, width), dtype=torch.long, device=device)
    batch[0, width - ids.shape[1] :], mask[0, width - ids.shape[1] :] = ids[0], 1
    batch[1], mask[1] = text[0], 1
    batched = greedy_generate(model, 12, input_ids=batch, attention_mask=mask, pixel_values=pixels)[:, width:]
    text_alone = greedy_generate(model, 12, input_ids=text)[0, width:]
    return {
        "cached_equals_full": cached.tolist() == full.tolist(),
        "batch_row0_equals_alone": batched[0].tolist() == cached.tolist(),
        "batch_row1_equals_alone": batched[1].tolist() == text_alone.tolist(),
        "tokens": cached.tolist(),
    }


def static_compiled(loc: str, device: str) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    config = tiny_config(loc)
    config._attn_implementation = "sdpa"
    model = HoVLEForConditionalGeneration(config).to(device).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    ids, mask, pixels = left_padded_image_batch(config, 8, device=device, dtype=torch.float32)
    kwargs = {"attention_mask": mask, "pixel_values": pixels, "output_logits": True, "return_dict_in_generate": True}
    dynamic = greedy_generate(model, 12, input_ids=ids, **kwargs)
    report = {}
    for call in ("first_call", "replay"):
        static = greedy_generate(model, 12, input_ids=ids, cache_implementation="static", **kwargs)
        difference = (torch.stack(static.logits) - torch.stack(dynamic.logits)).abs().max().item()
        report[call] = {
            "tokens_equal": torch.equal(static.sequences, dynamic.sequences),
            "max_abs_logit_diff": difference,
        }
    return report


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("fixture", metavar="FIXTURE_DIR")
    parser.add_argument("out", metavar="OUT_JSON")
    args = parser.parse_args()
    device = "cuda"
    start = time.time()
    report = cuda_environment()
    # Each check is recorded (or its error) and the next still runs: they are independent.
    report["golden_fp32"] = attempt(lambda: golden(args.fixture, device))
    backends = ["eager", "sdpa"] + (["flash_attention_2"] if report["flash_attn_importable"] else [])
    for loc in ("pre", "post"):
        for attn in backends:
            report[f"bf16_{loc}_{attn}"] = attempt(lambda loc=loc, attn=attn: decoding(loc, attn, device))
        report[f"fp32_{loc}_static_compiled"] = attempt(lambda loc=loc: static_compiled(loc, device))
    report["seconds"] = round(time.time() - start, 1)
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
