"""A short CUDA check of the core model for a session lent a GPU (no network there; transformers as installed).

    python benchmarks/gpu_check_core.py FIXTURE_DIR OUT_JSON

1. the golden fixture converted and loaded with trust_remote_code on CUDA (float32, TF32 off): logits and greedy
   tokens against the original implementation's outputs;
2. for `pre` and `post`, each available attention backend (eager, sdpa, flash_attention_2 if importable) in
   bfloat16: cached greedy decoding == no-cache decoding, and a left-padded batch row == the prompt alone.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from hovle.conversion.to_transformers import convert
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import tiny_config


def golden(fixture: str, device: str) -> dict:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = convert(f"{fixture}/original", tempfile.mkdtemp() + "/hf", dtype="float32", progress=False)
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    model = model.to(device).eval()
    expected = load_file(f"{fixture}/expected.safetensors")
    report = {}
    for case in json.load(open(f"{fixture}/expected.json"))["cases"]:
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
    ids = torch.tensor([[1, 5, 6, 1020] + [1022] * 8 + [1021, 7, 8, 9]], device=device)
    pixels = torch.randn(2, 3, 56, 56, device=device, dtype=torch.bfloat16)
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=2)
    cached = model.generate(input_ids=ids, pixel_values=pixels, use_cache=True, **kw)[0, ids.shape[1] :]
    full = model.generate(input_ids=ids, pixel_values=pixels, use_cache=False, **kw)[0, ids.shape[1] :]
    # Left-padded batch: row 0 is the image prompt, row 1 a longer text-only prompt.
    text = torch.tensor([[1] + list(range(30, 50))], device=device)
    width = text.shape[1]
    batch = torch.full((2, width), 2, device=device)
    mask = torch.zeros((2, width), dtype=torch.long, device=device)
    batch[0, width - ids.shape[1] :], mask[0, width - ids.shape[1] :] = ids[0], 1
    batch[1], mask[1] = text[0], 1
    batched = model.generate(input_ids=batch, attention_mask=mask, pixel_values=pixels, **kw)[:, width:]
    text_alone = model.generate(input_ids=text, **kw)[0, width:]
    return {
        "cached_equals_full": cached.tolist() == full.tolist(),
        "batch_row0_equals_alone": batched[0].tolist() == cached.tolist(),
        "batch_row1_equals_alone": batched[1].tolist() == text_alone.tolist(),
        "tokens": cached.tolist(),
    }


def main() -> None:
    fixture, out_path = sys.argv[1], sys.argv[2]
    device = "cuda"
    start = time.time()
    report = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
    }
    try:
        report["golden_fp32"] = golden(fixture, device)
    except Exception as error:  # report and go on: the other checks are independent
        report["golden_fp32"] = f"FAILED: {type(error).__name__}: {error}"
    backends = ["eager", "sdpa"] + (["flash_attention_2"] if report["flash_attn_importable"] else [])
    for loc in ("pre", "post"):
        for attn in backends:
            try:
                report[f"bf16_{loc}_{attn}"] = decoding(loc, attn, device)
            except Exception as error:
                report[f"bf16_{loc}_{attn}"] = f"FAILED: {type(error).__name__}: {error}"
    report["seconds"] = round(time.time() - start, 1)
    json.dump(report, open(out_path, "w"), indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
