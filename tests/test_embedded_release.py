"""The demo model shipped inside the package (`hovle.embedded_release()`): a release-layout folder that answers the
synthetic shapes task (`hovle.shapes_task`) on freshly generated images through `pipeline("image-text-to-text")` and
the release's `model.chat()`, with the same replies on both; and its recipe (`scripts/train_embedded_release.py`),
run from scratch, learns the task from the images: with the images shuffled against the answers it does not."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, pipeline

import hovle
from hovle.conversion.layout import expected_original_shapes
from hovle.conversion.tokenizer import TOKENIZER_FILES
from hovle.release_loading import HoVLEReleaseConfig
from hovle.shapes_task import (
    CHAT_DATA,
    COLORS,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    QUESTIONS,
    SAMPLE_QUESTION,
    SHAPE_DATA,
    SHAPES,
    accuracy,
    chat,
    generate,
    is_correct,
    main,
    sample_image,
    write_chat_data,
)
from hovle.testing import reference_pixel_values

REPOSITORY = Path(__file__).resolve().parents[1]
RECIPE = REPOSITORY / "scripts" / "train_embedded_release.py"
HELD_OUT_SEED = 20251205  # not the recipe's seed (0)
GREEDY = {"max_new_tokens": 8, "do_sample": False}


def recipe_module():
    spec = importlib.util.spec_from_file_location("train_embedded_release", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipeline_replies(pipe, samples, kind: str) -> list[str]:
    chats = [chat(QUESTIONS[kind]) for _ in samples]
    for messages, sample in zip(chats, samples, strict=True):
        messages[0]["content"][0]["image"] = sample.image
    outputs = pipe(text=chats, generate_kwargs=GREEDY, return_full_text=False, batch_size=8)
    return [output[0]["generated_text"] for output in outputs]


def chat_replies(model, tokenizer, samples, kind: str) -> list[str]:
    """The release's own API: tiles made by the reference tiling (what InternVL's `load_image` does)."""
    tile, max_tiles = model.config.embedding_config.image_size, model.config.max_dynamic_patch
    replies = []
    for sample in samples:
        _, tiles = reference_pixel_values(sample.image, max_num=max_tiles, tile=tile)
        replies.append(model.chat(tokenizer, torch.from_numpy(tiles), QUESTIONS[kind], dict(GREEDY)))
    return replies


def release_scores(release: Path, samples, kinds=("shape", "color"), paths=("pipeline", "chat")):
    """{path: {kind: accuracy}} and {path: {kind: replies}} for the release folder as it is (`import hovle`)."""
    model = AutoModelForImageTextToText.from_pretrained(release, dtype=torch.float32).eval()
    replies = {}
    if "pipeline" in paths:
        pipe = pipeline("image-text-to-text", model=str(release), dtype=torch.float32)
        replies["pipeline"] = {kind: pipeline_replies(pipe, samples, kind) for kind in kinds}
    if "chat" in paths:
        tokenizer = AutoTokenizer.from_pretrained(release)
        replies["chat"] = {kind: chat_replies(model, tokenizer, samples, kind) for kind in kinds}
    return {path: accuracy(samples, by_kind) for path, by_kind in replies.items()}, replies


# --- the task generator ---------------------------------------------------------------------------------------------


def test_generator_is_seeded_and_covers_the_task():
    samples = list(generate(300, seed=HELD_OUT_SEED))
    again = list(generate(300, seed=HELD_OUT_SEED))
    assert [s.image.tobytes() for s in samples[:20]] == [s.image.tobytes() for s in again[:20]]
    assert {s.shape for s in samples} == set(SHAPES) and {s.color for s in samples} == set(COLORS)
    sizes = [s.image.size for s in samples]
    assert all(MIN_SIDE <= side <= MAX_SIDE for size in sizes for side in size)
    ratios = [max(w, h) / min(w, h) for w, h in sizes]
    assert max(ratios) <= MAX_ASPECT + 0.05 and max(ratios) > 3 and min(ratios) < 1.2
    assert max(max(size) for size in sizes) > 700 and min(min(size) for size in sizes) < 48
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_generated_image_is_a_plain_background_and_one_shape_of_its_colour():
    for sample in generate(24, seed=1):
        pixels = np.asarray(sample.image).astype(int)  # (height, width, 3)
        background = pixels[0, 0]
        assert ((190 <= background) & (background <= 255)).all()
        shape = (pixels != background).any(axis=2)
        fill = pixels[shape][0]
        assert (pixels[shape] == fill).all()  # one colour, no blending
        assert (abs(fill - np.array(COLORS[sample.color])) <= 40).all()
        rows, cols = shape.any(axis=1).nonzero()[0], shape.any(axis=0).nonzero()[0]
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        short = min(sample.image.size)
        assert 0.3 * short - 1 <= extent <= 0.8 * short + 1


def test_answers_and_scoring():
    sample = next(generate(1, seed=0))
    assert sample.answer("describe") == f"a {sample.color} {sample.shape}"
    assert is_correct(" Circle.", "circle") and not is_correct("a circle", "circle")
    with pytest.raises(ValueError, match="Unknown question kind"):
        sample.answer("size")
    with pytest.raises(ValueError, match="1 shape replies for 2 samples"):
        accuracy([sample, sample], {"shape": ["circle"]})


def test_sample_png_is_the_seeded_sample_and_its_command_regenerates_it(tmp_path, capsys):
    """`scripts/sample.png` (what `make demo` asks about) is `sample_image()`, which the documented command writes,
    and it is a task image showing what its label says."""
    written = tmp_path / "sample.png"
    main(["--write-sample", str(written), "--sample-question"])
    assert capsys.readouterr().out.splitlines() == [SAMPLE_QUESTION]  # what `make demo` reads
    shipped = np.asarray(Image.open(REPOSITORY / "scripts" / "sample.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(written)), shipped)
    sample = sample_image()
    assert np.array_equal(np.asarray(sample.image), shipped)
    pixels = shipped.astype(int)
    fill = pixels[(pixels != pixels[0, 0]).any(axis=2)][0]
    assert (abs(fill - np.array(COLORS[sample.color])) <= 40).all()  # the label is the drawn colour


# --- the shipped release --------------------------------------------------------------------------------------------


def test_embedded_release_is_in_the_release_layout():
    release = hovle.embedded_release()
    assert isinstance(release, Path) and release.is_dir()
    config = json.loads((release / "config.json").read_text())
    assert {"embedding_config", "llm_config"} <= config.keys()
    assert config["max_dynamic_patch"] > 1 and config["use_thumbnail"]
    for name in TOKENIZER_FILES:
        assert (release / name).is_file(), name
    from safetensors import safe_open

    with safe_open(release / "model.safetensors", "pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    model_config = AutoConfig.from_pretrained(release)
    assert isinstance(model_config, HoVLEReleaseConfig)
    assert shapes == expected_original_shapes(model_config)
    assert any(key.endswith("attention.wqkv.weight") for key in shapes)
    tokenizer = AutoTokenizer.from_pretrained(release)
    for token in ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<box>", "</box>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == model_config.image_token_id
    total = sum(path.stat().st_size for path in release.iterdir())
    assert total < 5 * 2**20


@pytest.fixture(scope="module")
def fresh_samples():
    """200 freshly generated images (a seed the recipe never used), every size and aspect ratio of the task, so 1 to
    the most tiles + a thumbnail."""
    samples = list(generate(200, seed=HELD_OUT_SEED))
    random.Random(HELD_OUT_SEED).shuffle(samples)
    return samples


@pytest.fixture(scope="module")
def fresh_scores(fresh_samples):
    """The shipped release on `fresh_samples`, through `pipeline()` and `model.chat()`, greedy, float32."""
    return release_scores(hovle.embedded_release(), fresh_samples, kinds=tuple(QUESTIONS))


@pytest.mark.slow  # 1200 greedy replies: a minute on 2 cores
def test_embedded_release_gives_the_same_replies_through_pipeline_and_chat(fresh_scores):
    _, replies = fresh_scores
    assert replies["pipeline"] == replies["chat"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(QUESTIONS))
def test_embedded_release_answers_fresh_images(fresh_scores, kind):
    scores, _ = fresh_scores
    assert scores["pipeline"][kind] >= 0.95 and scores["chat"][kind] >= 0.95, scores


def hovle_chat_replies(monkeypatch, capsys, tmp_path, samples, question: str, dtype: str) -> list[str]:
    """`hovle chat --image IMAGE QUESTION` (no `--model`: the embedded release) per sample, in this process: the
    command's own code from the argument parser to the streamed reply, with its model loaded once."""
    import hovle.cli
    import hovle.commands

    loaded = hovle.commands.load_for_inference(None, dtype=dtype, announce=False)
    monkeypatch.setattr(hovle.cli, "load_for_inference", lambda model, **options: loaded)
    capsys.readouterr()
    replies = []
    for index, sample in enumerate(samples):
        path = tmp_path / f"{index}.png"
        sample.image.save(path)  # lossless: the pixels the other paths saw
        assert hovle.cli.main(["chat", "--image", str(path), question, "--dtype", dtype]) == 0
        replies.append(capsys.readouterr().out.strip())
    return replies


@pytest.mark.slow
def test_hovle_chat_gives_the_same_replies_as_pipeline(monkeypatch, capsys, tmp_path, fresh_samples, fresh_scores):
    """`hovle chat` on the 200 images: float32, the pipeline's replies exactly; bfloat16 (the release's own dtype, what
    `hovle chat` loads by default), >= 0.95 still."""
    _, replies = fresh_scores
    for kind in ("shape", "color"):
        chat_replies = hovle_chat_replies(monkeypatch, capsys, tmp_path, fresh_samples, QUESTIONS[kind], "float32")
        assert chat_replies == replies["pipeline"][kind]
    bf16 = hovle_chat_replies(monkeypatch, capsys, tmp_path, fresh_samples, QUESTIONS["describe"], "auto")
    assert accuracy(fresh_samples, {"describe": bf16})["describe"] >= 0.95


# --- the recipe -----------------------------------------------------------------------------------------------------


def shuffle_images(data: Path) -> None:
    """The mutation: in each of the recipe's data files, every chat gets another line's image, so the answers no
    longer follow the images."""
    for name in (SHAPE_DATA, CHAT_DATA):
        lines = [json.loads(line) for line in (data / name).read_text().splitlines()]
        images = [line["images"] for line in lines]
        random.Random(1).shuffle(images)
        for line, image in zip(lines, images, strict=True):
            line["images"] = image
        (data / name).write_text("".join(json.dumps(line) + "\n" for line in lines))


# A shortened run of the shipped recipe: about 6 minutes on one CPU thread (the shipped one takes 700 + 500 steps).
SHORT_RECIPE = ["--shape-steps", "600", "--steps", "300", "--stage2-steps", "20", "--threads", "1"]


@pytest.mark.slow
@pytest.mark.learning  # two 6-minute trainings at once
def test_recipe_learns_the_task_from_the_images(tmp_path):
    """A shortened run of the shipped recipe (all its steps: start release, convert, stage 2, the two stage-3 phases,
    export) answers shape and colour on held-out images; the same run on images shuffled against the answers stays
    near chance (both run at once, one thread each), so a change that breaks learning from the images (labels, masks,
    gradients into the embedding module, image placement) fails here."""
    runs = {}
    for name in ("images", "shuffled"):
        data = write_chat_data(tmp_path / name / "data", 2000, seed=7)
        if name == "shuffled":
            shuffle_images(data)
        output = tmp_path / name / "release"
        command = [sys.executable, str(RECIPE), "--output", str(output), "--data", str(data), *SHORT_RECIPE]
        command += ["--work", str(tmp_path / name / "work")]
        log = (tmp_path / f"{name}.log").open("w")
        runs[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_offline_env()), output)
    samples = list(generate(60, seed=HELD_OUT_SEED))
    scores = {}
    for name, (process, output) in runs.items():
        assert process.wait(timeout=1500) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        scores[name] = release_scores(output, samples, kinds=("shape", "color"), paths=("pipeline",))[0]["pipeline"]
    print(scores)
    assert scores["images"]["shape"] >= 0.9 and scores["images"]["color"] >= 0.9, scores
    assert scores["shuffled"]["shape"] <= 0.5 and scores["shuffled"]["color"] <= 0.5, scores


def _offline_env() -> dict[str, str]:
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1")
