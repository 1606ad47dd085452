"""vLLM's offline engine on the plugin equals the transformers implementation, and continuous batching is exact:
greedy tokens, prompt token ids and top-5 log-probabilities, float32, CPU backend. vLLM serves both the converted
folder and the release it was converted from (as it is: its weight names, config and tokenizer files); the reference
is always transformers on the converted folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import hovle

pytestmark = pytest.mark.slow
CHILD = Path(__file__).resolve().parents[1] / "children" / "vllm_offline.py"


def chat(*turns):
    """Messages from (role, text, number of images) triples."""
    messages = []
    for role, text, images in turns:
        content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
        messages.append({"role": role, "content": content if images else text})
    return messages


# name -> (messages, images, max_tiles, max_new_tokens). The texts hold " ." and " ?", which the release's tokenizer
# decodes to "." and "?": vLLM's placeholder replacement must not.
SCENARIOS = {
    "text only": (chat(("user", "Hello ! Who are you ?", 0)), [], None, 12),
    "one image, 1 tile": (chat(("user", "What is in this picture ?", 1)), ["square"], None, 10),
    "one image, 3+1 tiles": (chat(("user", "Describe it . Briefly .", 1)), ["strip"], None, 10),
    "two images": (chat(("user", "Compare the two images .", 2)), ["square", "wide"], None, 10),
    "multi-turn": (
        chat(
            ("user", "What is this ?", 1),
            ("assistant", "It is noise , I think .", 0),
            ("user", "And the colours ?", 0),
        ),
        ["odd"],
        None,
        10,
    ),
}


def concurrent_requests():
    """16 requests of mixed lengths, image counts and tile limits (images shared between requests, so vLLM's
    processor cache serves some of them)."""
    base = list(SCENARIOS.values())
    extra = [
        (chat(("user", "Short .", 1)), ["wide"], 2, 6),
        (chat(("user", "Three pictures , one question : which is brightest ?", 3)), ["square", "odd", "wide"], None, 9),
        (chat(("user", "Tell me a long story about the sea .", 0)), [], None, 24),
        (chat(("user", "Same image , fewer tiles .", 1)), ["strip"], 1, 8),
        (chat(("user", "Again .", 1)), ["strip"], None, 7),
        (chat(("user", "Hi", 0)), [], None, 3),
        (chat(("user", "Four at once .", 4)), ["square", "wide", "strip", "odd"], 2, 5),
        (
            chat(("user", "What is this ?", 1), ("assistant", "Noise .", 0), ("user", "Sure ?", 1)),
            ["odd", "square"],
            None,
            8,
        ),
        (chat(("user", "Count the tiles .", 1)), ["odd"], 3, 11),
        (chat(("user", "Last one ?", 0)), [], None, 16),
        (chat(("user", "Describe it . Briefly .", 1)), ["strip"], None, 10),
    ]
    return base + extra


@pytest.fixture(scope="module")
def processor(converted_folder):
    hovle.register_auto_classes()
    return AutoProcessor.from_pretrained(converted_folder)


@pytest.fixture(scope="module")
def model(converted_folder):
    hovle.register_auto_classes()
    return AutoModelForImageTextToText.from_pretrained(converted_folder, dtype=torch.float32).eval()


def as_request(processor, image_files, spec) -> dict:
    messages, images, max_tiles, max_new_tokens = spec
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return {
        # vLLM tokenizes a text prompt with special tokens (the BOS), the transformers processor sees the BOS the
        # template wrote: the same ids (checked below).
        "prompt": rendered.removeprefix(processor.tokenizer.bos_token),
        "images": [str(image_files[name]) for name in images],
        "max_tiles": max_tiles,
        "max_tokens": max_new_tokens,
    }


@pytest.fixture(scope="module")
def requests(processor, image_files):
    return [as_request(processor, image_files, spec) for spec in concurrent_requests()]


@pytest.fixture(scope="module")
def engine_runs(requests, tmp_path_factory, vllm_env):
    """`run(folder)`: one engine start (about a minute on 2 cores) on `folder` for every request, alone and then all
    16 together; each folder's run made once."""
    runs = {}

    def run(folder: Path) -> dict:
        if folder not in runs:
            work = tmp_path_factory.mktemp("vllm-offline")
            (work / "requests.json").write_text(json.dumps(requests))
            output = work / "outputs.json"
            child = subprocess.run(
                [sys.executable, str(CHILD), str(folder), str(work / "requests.json"), str(output)],
                env=vllm_env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-6000:]
            runs[folder] = json.loads(output.read_text())
        return runs[folder]

    return run


@pytest.fixture(scope="module")
def served(served_folder, engine_runs):
    return engine_runs(served_folder)


def transformers_greedy(model, processor, request) -> tuple[list[int], list[int], torch.Tensor]:
    """(prompt ids, greedy new tokens, per-step log-probabilities) from the transformers implementation."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in request["images"]] or None
    text = processor.tokenizer.bos_token + request["prompt"]  # the rendered conversation
    inputs = processor(text=text, images=images, max_tiles=request["max_tiles"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=request["max_tokens"],
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt = inputs["input_ids"][0].tolist()
    new_tokens = out.sequences[0, len(prompt) :].tolist()
    return prompt, new_tokens, torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)


# Every request is compared with transformers, the 11 beyond the named scenarios too (tile limits per request,
# up to 4 images, longer replies).
REQUEST_NAMES = [*SCENARIOS, *(f"concurrent request {i}" for i in range(len(SCENARIOS), len(concurrent_requests())))]


@pytest.mark.parametrize("index,name", list(enumerate(REQUEST_NAMES)))
def test_vllm_equals_transformers(index, name, model, processor, requests, served):
    request, got = requests[index], served["alone"][index]
    prompt, tokens, logprobs = transformers_greedy(model, processor, request)
    # The same prompt: vLLM's placeholder expansion gives the ids of the transformers processor.
    assert got["prompt_token_ids"] == prompt
    assert got["token_ids"] == tokens
    for step, top in enumerate(got["logprobs"]):
        for token, value in top.items():
            assert abs(value - logprobs[step, int(token)].item()) < 1e-3, (name, step, token)
        expected_top5 = set(logprobs[step].topk(5).indices.tolist())
        assert expected_top5 <= {int(token) for token in top}, (name, step)


def test_scenarios_cover_tiles_and_images(processor, requests, served):
    """The scenarios are what they claim: images of 1, 4 and 7 tiles, two images, several turns. InternVL's tiling
    picks the grid of at most 6 tiles closest to the image's aspect ratio, plus a thumbnail when there is more than
    one: 448x448 -> 1x1 (1 tile); 1344x448 -> 3x1 (3+1); 896x448 -> 2x1 (2+1); 500x380 (1.32) -> 3x2 (6+1)."""
    context = processor.image_token_id  # <IMG_CONTEXT>
    counts = [prompt["prompt_token_ids"].count(context) for prompt in served["alone"][: len(SCENARIOS)]]
    assert counts == [0, 1 * 256, 4 * 256, (1 + 3) * 256, 7 * 256]
    assert requests[4]["prompt"].count("<|im_start|>user") == 2


def test_continuous_batching_is_exact(requests, served):
    assert len(served["together"]) == len(requests) == 16
    for index, (alone, together) in enumerate(zip(served["alone"], served["together"], strict=True)):
        assert together["prompt_token_ids"] == alone["prompt_token_ids"], index
        assert together["token_ids"] == alone["token_ids"], index
        for step_alone, step_together in zip(alone["logprobs"], together["logprobs"], strict=True):
            assert step_alone.keys() == step_together.keys(), index
            for token, value in step_alone.items():
                assert abs(value - step_together[token]) < 1e-4, (index, token)


def test_release_loads_the_converted_folders_weights(served_folders, engine_runs):
    """The release's tensors (InternLM2 names, fused grouped `wqkv` per stack), converted by the plugin while loading,
    are bit for bit what vLLM loads from the converted folder: every parameter, by vLLM's name."""
    release, converted = (engine_runs(served_folders[layout])["weights"] for layout in ("release", "converted"))
    assert converted.keys() == release.keys()
    assert any("qkv_proj" in name for name in converted)  # the split and re-fused attention weights are compared
    assert release == converted
