"""Child of `tests/test_golden.py`, run in a fresh offline process: loads a converted folder through the Auto classes
with trust_remote_code, and prints (after `REPORT`) its logits' and greedy tokens' distance from the golden fixture.

    python golden_child.py CONVERTED_FOLDER FIXTURE_DIR
"""

import json
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

folder, fixture = sys.argv[1], sys.argv[2]
expected = load_file(fixture + "/expected.safetensors")
cases = json.load(open(fixture + "/expected.json"))["cases"]
report = {"config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__}
report["automodel"] = type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
report["class"] = type(model).__name__
report["attn"] = model.config._attn_implementation
with tempfile.TemporaryDirectory() as resaved:
    model.save_pretrained(resaved)
    reloaded = AutoModelForImageTextToText.from_pretrained(resaved, trust_remote_code=True, dtype=torch.float32)
for case in cases:
    name = case["name"]
    ids = expected[name + ".input_ids"]
    extra = {"pixel_values": expected[name + ".pixel_values"]} if case["tiles"] else {}
    with torch.no_grad():
        logits = model(input_ids=ids, **extra).logits
        resaved_logits = reloaded.eval()(input_ids=ids, **extra).logits
    greedy = model.generate(input_ids=ids, **extra, max_new_tokens=6, do_sample=False, use_cache=True)
    report[name] = {
        "max_abs_diff": (logits - expected[name + ".logits"]).abs().max().item(),
        "resaved_max_abs_diff": (resaved_logits - logits).abs().max().item(),
        "greedy": greedy[0, ids.shape[1] :].tolist(),
        "expected_greedy": expected[name + ".greedy"][0].tolist(),
    }
print("REPORT" + json.dumps(report))
