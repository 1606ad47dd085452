"""The recipe of the embedded demo model (`hovle.embedded_release()`): a tiny HoVLE trained from scratch on the
synthetic shapes task (`hovle.shapes_task`), written in the original release's layout.

    python scripts/train_embedded_release.py                        # writes hovle/embedded_release/
    python scripts/train_embedded_release.py --output OUT --work W  # elsewhere, keeping the intermediate folders

Steps, each through the package's own commands (so the demo model goes through the code a real release does):
1. a random tiny model in the original layout (`config.json` with `embedding_config`/`llm_config`, fused `wqkv`)
   and a small sentencepiece tokenizer with the release's special and chat tokens (the chat pieces renamed by
   `tokenizer_config.json` as InternLM2's `[UNUSED_TOKEN_141..146]` are, the 9 InternVL tokens added after it);
2. `hovle convert`;
3. `hovle train --stage 2` (the embedding module learns, the LLM frozen), then `--stage 3` (everything) twice on
   generated data: first the shape question alone (`--shape-steps`), then all three questions (`--steps`): asked
   all three from the start, a model from scratch learns the colours and stays at chance on the shapes (see
   `hovle.shapes_task.write_chat_data`). Stage 1 (distillation) is skipped: it needs a pre-trained teacher whose
   image features already live in the LLM's space, and a randomly initialised LLM has no such teacher;
4. `hovle export` back to the original layout (bfloat16, as the release ships), then the tokenizer files, and the
   result replaces `--output`.

Seeded: the same arguments give the same data, the same start and the same training order (on one machine and
thread count; floating point sums may differ between CPUs). Single-threaded it takes about the time printed at
the end; `--threads` sets torch's threads for the training steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hovle.configuration_hovle import HoVLEConfig
from hovle.conversion.config_map import image_marker_ids, original_config_from_hovle
from hovle.conversion.layout import expected_original_shapes
from hovle.default_model import CHAT_PIECES, tiny_config, tiny_corpus, write_tiny_tokenizer
from hovle.processing_hovle import DEFAULT_SYSTEM_MESSAGE
from hovle.shapes_task import CHAT_DATA, COLORS, QUESTIONS, SHAPE_DATA, SHAPES, write_chat_data

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE_FOLDER = REPOSITORY / "hovle" / "embedded_release"
# The InternLM2 sentencepiece names of the chat pieces, which the release's tokenizer_config.json renames.
UNUSED_PIECES = [f"[UNUSED_TOKEN_{141 + i}]" for i in range(len(CHAT_PIECES))]
# The InternVL tokens the release adds after the sentencepiece vocabulary, in its order.
ADDED_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
SPM_VOCAB = 503  # + 9 added tokens = 512
# Lookup tables (a row is read, not multiplied): initialised at unit scale.
TABLES = ("llm_text_embeddings.weight", "tok_embeddings.weight", "position_embedding", "class_embedding")
# The shipped model's recipe (the defaults of the command line).
# 56 px tiles of 8x8 patches of 7 px -> 16 image tokens per tile, each from 14x14 px (14 px patches, 4 tokens a
# tile, did not learn the shapes in 1500 steps; 7 px ones, seen through the projector in pairs of rows, did).
HIDDEN, TILE, PATCH, MAX_TILES = 128, 56, 7, 6
IMAGES, BATCH_SIZE, LR = 8000, 16, 1e-3
STAGE2_STEPS, SHAPE_STEPS, STEPS = 50, 700, 500

MODEL_CARD = """# HoVLE demo model (synthetic shapes)

A tiny HoVLE trained from scratch on a synthetic task (`hovle.shapes_task`): one filled circle, square or triangle,
red, green, blue or yellow, on a plain background. It answers "What shape is in the image?", "What color is the
shape?" and "Describe the image.". It is NOT HoVLE's weights and knows nothing else; it is in the original
release's layout so that it loads, converts and serves through the same code as `OpenGVLab/HoVLE`.

Recipe: `python scripts/train_embedded_release.py {arguments}` in the hovle repository.
"""
RECIPE_ARGUMENTS = (
    "images",
    "shape_steps",
    "steps",
    "stage2_steps",
    "batch_size",
    "lr",
    "hidden",
    "tile",
    "patch",
    "max_tiles",
)


def write_model_card(output: Path, args: argparse.Namespace) -> None:
    """The release's README.md: what the model is (and is not) and the arguments that trained it."""
    arguments = " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in RECIPE_ARGUMENTS)
    arguments += f" --seed {args.seed}" + (" --data DATA" if args.data else "")
    (output / "README.md").write_text(MODEL_CARD.format(arguments=arguments))


def model_config(hidden: int, tile: int, max_tiles: int, patch: int = 14) -> HoVLEConfig:
    """The demo model's shape: `tiny_config`'s depth (2 embedding layers, 3 LLM layers) at width `hidden`, tiles of
    `tile` px (patch 14), up to `max_tiles` tiles + a thumbnail, and the tokenizer's vocabulary."""
    vocab = SPM_VOCAB + len(ADDED_TOKENS)
    width = {"hidden_size": hidden, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab}
    config = tiny_config(
        "pre",
        embedding={**width, "intermediate_size": 2 * hidden, "image_size": tile, "patch_size": patch},
        text={**width, "intermediate_size": 2 * hidden},
        max_dynamic_patch=max_tiles,
    )
    config.image_token_id = SPM_VOCAB + ADDED_TOKENS.index("<IMG_CONTEXT>")
    for name, value in image_marker_ids(config.image_token_id).items():
        setattr(config, name, value)
    return config


def initial_weights(config: HoVLEConfig, seed: int) -> dict[str, torch.Tensor]:
    """Every original-layout tensor, initialised for training from scratch: norms 1, biases 0, token and position
    tables normal(0, 1), every other weight normal(0, 1/fan_in) (so that each layer keeps its input's scale: at this
    width the usual 0.02 shrinks the image features layer after layer, and the colours took several times longer to
    be learned)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in expected_original_shapes(config).items():
        if key.endswith("norm.weight"):
            weights[key] = torch.ones(shape)
        elif key.endswith(".bias"):
            weights[key] = torch.zeros(shape)
        elif key.endswith(TABLES):
            weights[key] = torch.randn(shape, generator=generator)
        else:
            weights[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    return weights


def tokenizer_corpus() -> list[str]:
    """Random mixed-script text (`tiny_corpus`) and, often enough to become whole pieces, the task's own texts."""
    task = ["system", "user", "assistant", DEFAULT_SYSTEM_MESSAGE, *QUESTIONS.values(), *SHAPES, *COLORS]
    task += [f"a {color} {shape}" for color in COLORS for shape in SHAPES]
    return tiny_corpus() + task * 200


def write_release_tokenizer(folder: Path) -> None:
    """tokenizer.model + the release's tokenizer_config.json, added_tokens.json and special_tokens_map.json."""
    write_tiny_tokenizer(folder, vocab_size=SPM_VOCAB, corpus=tokenizer_corpus(), chat_pieces=UNUSED_PIECES)
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    named = {0: "<unk>", 1: "<s>", 2: "</s>"}
    named |= {3 + i: piece for i, piece in enumerate(CHAT_PIECES)}  # renames [UNUSED_TOKEN_141..146]
    named |= {SPM_VOCAB + i: token for i, token in enumerate(ADDED_TOKENS)}
    special = CHAT_PIECES + ADDED_TOKENS
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": token, **entry} for i, token in named.items()},
        "additional_special_tokens": special,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 8192,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    role = {key: value for key, value in entry.items() if key != "special"}
    special_map = {"additional_special_tokens": special} | {
        name: {"content": token, **role}
        for name, token in (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "</s>"), ("unk_token", "<unk>"))
    }
    added = {token: SPM_VOCAB + i for i, token in enumerate(ADDED_TOKENS)}
    for name, content in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_map),
        ("added_tokens.json", added),
    ):
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def write_start(folder: Path, config: HoVLEConfig, seed: int) -> Path:
    """The untrained model as a release: config.json, model.safetensors and the tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(initial_weights(config, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(original_config_from_hovle(config), indent=2) + "\n")
    write_release_tokenizer(folder)
    return folder


def hovle_command(*arguments: str, threads: int | None = None) -> None:
    """Run `hovle ARGUMENTS` (this interpreter's package), offline; a failure stops the recipe with its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "hovle.cli", *arguments]
    print("$ hovle " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, env=env)


def train_stages(converted: Path, data: Path, work: Path, args: argparse.Namespace) -> Path:
    """`hovle train` stage 2 for `--stage2-steps`, stage 3 on the shape question for `--shape-steps`, then stage 3 on
    the three questions for `--steps`; returns the trained folder."""
    common = ["--batch-size", str(args.batch_size), "--seed", str(args.seed), "--lr", str(args.lr)]
    common += ["--max-length", "1024", "--cpu"]
    phases = [("stage2", "2", SHAPE_DATA, args.stage2_steps), ("shapes", "3", SHAPE_DATA, args.shape_steps)]
    phases.append(("chat", "3", CHAT_DATA, args.steps))
    folder = converted
    for name, stage, data_file, steps in phases:
        if not steps:
            continue
        output = work / name
        hovle_command(
            "train", "--model", str(folder), "--stage", stage, "--output", str(output), "--data",
            str(data / data_file), "--max-steps", str(steps), *common, threads=args.threads,
        )  # fmt: skip
        folder = output
    return folder


def build(args: argparse.Namespace) -> Path:
    """The whole recipe into `args.output` (replaced as a whole once everything else succeeded)."""
    started = time.monotonic()
    work = Path(args.work or tempfile.mkdtemp(prefix="hovle-embedded-"))
    work.mkdir(parents=True, exist_ok=True)
    config = model_config(args.hidden, args.tile, args.max_tiles, args.patch)
    start = write_start(work / "start", config, args.seed)
    data = Path(args.data) if args.data else write_chat_data(work / "data", args.images, args.seed)
    print(f"data {data} ({time.monotonic() - started:.0f} s)", flush=True)
    hovle_command("convert", "--input", str(start), "--output", str(work / "converted"), "--dtype", "float32")
    trained = train_stages(work / "converted", data, work, args)
    exported = work / "exported"
    hovle_command("export", "--input", str(trained), "--output", str(exported), "--dtype", args.dtype)
    output = Path(args.output)
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(exported, output)
    write_model_card(output, args)
    if not args.work:
        shutil.rmtree(work)
    print(f"Wrote {output} in {time.monotonic() - started:.0f} s", flush=True)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(PACKAGE_FOLDER), help="release folder to write (default: %(default)s)")
    parser.add_argument("--work", help="keep the intermediate folders here (default: a temporary folder, removed)")
    parser.add_argument(
        "--data",
        help=f"a folder holding {SHAPE_DATA} and {CHAT_DATA} (`hovle.shapes_task.write_chat_data`) instead of generated data",
    )
    parser.add_argument("--images", type=int, default=IMAGES, help="generated images (default: %(default)s)")
    parser.add_argument(
        "--shape-steps",
        type=int,
        default=SHAPE_STEPS,
        help="stage-3 steps on the shape question (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=STEPS, help="stage-3 steps on the three questions (default: %(default)s)"
    )
    parser.add_argument("--stage2-steps", type=int, default=STAGE2_STEPS, help="stage-2 steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=LR, help="constant learning rate (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="model width (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=TILE, help="tile side in px (default: %(default)s)")
    parser.add_argument("--patch", type=int, default=PATCH, help="patch side in px (default: %(default)s)")
    parser.add_argument("--max-tiles", type=int, default=MAX_TILES, help="(default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", help="weights of the written release (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads while training (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    build(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
