"""`hovle train`'s arguments, defined without importing torch: `hovle --help` and `hovle train --help` answer at
once, and `python -m hovle.training.train` (torchrun, accelerate launch) takes the same ones."""

from __future__ import annotations

import argparse

from ..commands import add_trust_remote_code_argument, positive_int, tile_budget

TRAIN_DESCRIPTION = (
    "Fine-tune a converted HoVLE model with the transformers Trainer, one of the paper's three stages: 1 distils "
    "the embedding module from --teacher on unpaired images and text, 2 trains the embedding module on chat data "
    "(the LLM frozen), 3 trains everything on chat data. The arguments and every line of --data are checked before "
    "the model loads; the trained model replaces --output only when training finishes. Several GPUs: torchrun or "
    "accelerate launch -m hovle.training.train (see hovle.training.train)."
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults shown in --help ("%(default)s"): they decide how long a run takes and what it learns.
    if parser.description is None:
        parser.description = TRAIN_DESCRIPTION
    parser.add_argument(
        "--model", required=True, help="HoVLE release (e.g. OpenGVLab/HoVLE) or converted folder, local or Hub id"
    )
    parser.add_argument(
        "--data",
        required=True,
        help='JSON lines file: {"messages": [...], "images": [...]} per line (stages 2, 3) or {"image": ...} / '
        '{"text_ids": [...]} (stage 1); image paths relative to the file',
    )
    parser.add_argument(
        "--stage", type=int, required=True, choices=[1, 2, 3], help="1 distillation, 2 alignment, 3 instruction"
    )
    parser.add_argument(
        "--output", required=True, help="folder for the trained model (not the model folder; empty or absent)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output when training ends")
    parser.add_argument("--teacher", help="stage 1 only (required there): teacher model folder or Hub id")
    parser.add_argument("--lora", choices=["embedding", "text", "both"], help="train LoRA adapters on these stacks")
    parser.add_argument("--max-steps", type=positive_int, default=100, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="per device (default: %(default)s)")
    parser.add_argument(
        "--grad-accum", type=positive_int, default=1, help="gradient accumulation steps (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate, constant (default: %(default)s)")
    parser.add_argument("--optim", default="adamw_torch", help="a transformers optimizer name (default: %(default)s)")
    parser.add_argument("--max-tiles", type=tile_budget, default=6, help="most tiles per image (default: %(default)s)")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        help="refuse samples longer than this many tokens, image tokens included (default: the model's context, "
        "max_position_embeddings)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory")
    parser.add_argument("--sequential", action="store_true", help="no shuffling (reproducible comparisons)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights and autocast (GPU or CPU)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="train on CPU even with a GPU (the default without one; gloo for multi-process)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_trust_remote_code_argument(parser)
