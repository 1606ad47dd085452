"""Acceptance: the converted golden fixture, loaded through the Auto classes with trust_remote_code in a fresh
offline process, reproduces the ORIGINAL implementation's logits and greedy tokens."""

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys, tempfile
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
            "greedy": greedy[0, ids.shape[1]:].tolist(),
            "expected_greedy": expected[name + ".greedy"][0].tolist(),
        }
    print("REPORT" + json.dumps(report))
    """
)


def test_converted_fixture_reproduces_original_outputs(converted_fixture, fixture_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(converted_fixture), str(fixture_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert report["config"] == "HoVLEConfig"
    assert report["automodel"] == report["class"] == "HoVLEForConditionalGeneration"
    cases = json.loads((fixture_dir / "expected.json").read_text())["cases"]
    assert len(cases) == 3
    for case in cases:
        got = report[case["name"]]
        assert got["max_abs_diff"] <= 1e-4, (case["name"], got)
        assert got["resaved_max_abs_diff"] == 0.0, (case["name"], got)
        assert got["greedy"] == got["expected_greedy"], (case["name"], got)
