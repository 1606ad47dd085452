"""The embedded demo model (`hovle.embedded_release()`), served by vLLM's offline engine with the plugin as the release
folder it is (its weight names, config and tokenizer files; no conversion), CPU backend, float32, greedy: on the 200
fresh images of `tests/test_embedded_release.py` it answers the shape and the colour questions (>= 0.95 each) with the
replies of `pipeline("image-text-to-text")` on the same folder (float32, greedy, computed here in vLLM's environment),
from the prompt ids of the transformers processor, and stops at the end of its turn as `pipeline()` does; the 400
requests submitted together in one `generate` call each equal the same request alone."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_embedded_release import GREEDY, HELD_OUT_SEED, pipeline_replies
from transformers import pipeline

import hovle
from hovle.processing_hovle import END_OF_TURN
from hovle.shapes_task import QUESTIONS, accuracy, chat, generate

pytestmark = pytest.mark.slow
CHILD = Path(__file__).resolve().parents[1] / "children" / "vllm_offline.py"
KINDS = ("shape", "color")


@pytest.fixture(scope="module")
def fresh_samples():
    """The 200 images and order of `tests/test_embedded_release.py`'s `fresh_samples` (its seed, then shuffled)."""
    samples = list(generate(200, seed=HELD_OUT_SEED))
    random.Random(HELD_OUT_SEED).shuffle(samples)
    return samples


@pytest.fixture(scope="module")
def pipe():
    """The transformers reference: the release folder as it is (`import hovle`), float32."""
    return pipeline("image-text-to-text", model=str(hovle.embedded_release()), dtype=torch.float32)


@pytest.fixture(scope="module")
def image_paths(fresh_samples, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("fresh-images")
    paths = []
    for index, sample in enumerate(fresh_samples):
        path = folder / f"{index:03d}.png"
        sample.image.save(path)  # lossless: the pixels the pipeline sees
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def requests(pipe, image_paths) -> dict[str, list[dict]]:
    """Per question kind, one request per image: the conversation `pipeline()` renders, as a vLLM text prompt."""
    tokenizer = pipe.processor.tokenizer
    by_kind = {}
    for kind in KINDS:
        rendered = pipe.processor.apply_chat_template(chat(QUESTIONS[kind]), add_generation_prompt=True, tokenize=False)
        # vLLM tokenizes a text prompt with special tokens (the BOS); the processor sees the BOS the template wrote.
        prompt = rendered.removeprefix(tokenizer.bos_token)
        by_kind[kind] = [
            {"prompt": prompt, "images": [path], "max_tiles": None, "max_tokens": GREEDY["max_new_tokens"]}
            for path in image_paths
        ]
    return by_kind


@pytest.fixture(scope="module")
def served(requests, tmp_path_factory, vllm_env) -> dict[str, dict[str, list[dict]]]:
    """One engine start on the release folder (`tests/children/vllm_offline.py`): every request alone, then all 400
    in one `generate` call; {"alone" | "together": {kind: outputs}}."""
    work = tmp_path_factory.mktemp("vllm-embedded")
    flat = [request for kind in KINDS for request in requests[kind]]
    (work / "requests.json").write_text(json.dumps(flat))
    output = work / "outputs.json"
    folder = str(hovle.embedded_release())
    child = subprocess.run(
        [sys.executable, str(CHILD), folder, str(work / "requests.json"), str(output)],
        env=vllm_env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-6000:]
    runs = json.loads(output.read_text())
    count = len(requests[KINDS[0]])
    return {
        mode: {kind: runs[mode][index * count : (index + 1) * count] for index, kind in enumerate(KINDS)}
        for mode in ("alone", "together")
    }


@pytest.fixture(scope="module")
def vllm_replies(pipe, served) -> dict[str, list[str]]:
    """vLLM's greedy tokens (the 400 submitted together) up to the end of the turn, decoded as `pipeline()` decodes
    its own: the reply `pipeline()` would give for the same tokens (it stops at `<|im_end|>`, its generation config's
    end of sequence, and leaves it out of the text). Whether vLLM stops there by itself is
    `test_vllm_stops_at_the_end_of_turn`'s question; greedy tokens before a stop do not depend on it."""
    decode = pipe.processor.post_process_image_text_to_text
    end = pipe.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    replies = {}
    for kind in KINDS:
        tokens = [output["token_ids"] for output in served["together"][kind]]
        replies[kind] = [decode(ids[: ids.index(end)] if end in ids else ids) for ids in tokens]
    return replies


@pytest.fixture(scope="module")
def pipeline_reference(pipe, fresh_samples) -> dict[str, list[str]]:
    return {kind: pipeline_replies(pipe, fresh_samples, kind) for kind in KINDS}


def test_prompts_are_the_processors_and_span_every_tile_count(pipe, requests, served):
    """vLLM's prompt ids (placeholders expanded by the plugin) are the transformers processor's for every request,
    and the images cover the task's range: one tile up to the most tiles plus the thumbnail."""
    processor = pipe.processor
    tiles = set()
    for kind in KINDS:
        for request, got in zip(requests[kind], served["together"][kind], strict=True):
            image = Image.open(request["images"][0]).convert("RGB")
            text = processor.tokenizer.bos_token + request["prompt"]
            expected = processor(text=text, images=[image], return_tensors="pt")["input_ids"][0].tolist()
            assert got["prompt_token_ids"] == expected, request["images"][0]
            tiles.add(expected.count(processor.image_token_id) // processor.tokens_per_tile)
    assert min(tiles) == 1 and max(tiles) == pipe.model.config.max_dynamic_patch + 1, tiles


@pytest.mark.parametrize("kind", KINDS)
def test_vllm_answers_fresh_images(fresh_samples, vllm_replies, kind):
    score = accuracy(fresh_samples, {kind: vllm_replies[kind]})[kind]
    assert score >= 0.95, (kind, score)


@pytest.mark.parametrize("kind", KINDS)
def test_vllm_replies_equal_the_pipelines(vllm_replies, pipeline_reference, kind):
    differing = [
        (index, got, expected)
        for index, (got, expected) in enumerate(zip(vllm_replies[kind], pipeline_reference[kind], strict=True))
        if got != expected
    ]
    assert not differing, differing


def test_batched_requests_equal_each_alone(served):
    for kind in KINDS:
        for index, (alone, together) in enumerate(zip(served["alone"][kind], served["together"][kind], strict=True)):
            assert together["token_ids"] == alone["token_ids"], (kind, index)


def test_vllm_stops_at_the_end_of_turn(pipe, served):
    """Served as it is, with vLLM's default sampling parameters, a reply ends at its first `<|im_end|>` (as with
    `pipeline()`, `model.chat()` and `hovle chat`), so that `LLM.generate` and `vllm serve` give the answer alone."""
    end = pipe.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    continued = [
        (kind, index, output["token_ids"])
        for kind in KINDS
        for index, output in enumerate(served["together"][kind])
        if end in output["token_ids"][:-1]
    ]
    assert not continued, (
        f"{len(continued)} of {2 * len(served['together'][KINDS[0]])} replies go on after {END_OF_TURN}: {continued[:3]}"
    )
