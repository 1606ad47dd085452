"""`hovle train`: fine-tune HoVLE with the transformers Trainer, one of the paper's three stages.

    hovle train --model DIR --data train.jsonl --stage 3 --output OUT [--lora both] [--max-steps 1000] ...
    torchrun --nproc_per_node 8 -m hovle.training.train --model DIR --data train.jsonl --stage 3 --output OUT
    accelerate launch --config_file "$(python -c "import hovle.training as t; print(t.accelerate_config('fsdp'))")" \
        -m hovle.training.train ...

Data (JSON lines):
* stages 2 and 3: `{"messages": [chat messages], "images": ["path.jpg", ...]}`; labels cover the assistant replies;
* stage 1: `{"image": "path.jpg"}` or `{"text_ids": [..]}` lines (unpaired), plus `--teacher` (a transformers model
  with `get_image_features`, e.g. a native InternVL checkpoint whose features have the LLM's width).

Before a model is loaded, the arguments and every line of the data file are checked (`checks`: an output that is,
contains or lies inside the model folder, a non-empty output without `--overwrite`, a missing or malformed data line,
a missing or unreadable image, a chat without an assistant reply, `--teacher` outside stage 1, ...); once the
processor is loaded, samples longer than `--max-length` (default: the model's context) and too little free space for
the weights are refused before training. A refusal is one line and nothing is written. The trained model replaces
the output folder when training finishes (`--overwrite` allows replacing a non-empty one this package wrote), unless
its weights are NaN/Inf (a diverged run: refused, the output is left as it was). Only the main process writes and
prints `Wrote OUT`.

Device: a GPU when torch sees one; otherwise the CPU, with a status line (no `--cpu` needed). `--bf16` works on the
CPU as well (torch's bfloat16 CPU kernels; slow on CPUs without native bfloat16); a GPU without bfloat16 is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, Trainer, TrainingArguments

from ..commands import status, user_errors
from ..conversion.checkpoint_io import NonfiniteCheck, name_keys
from ..conversion.output_folder import atomic_output_folder, check_free_space, output_bytes
from ..conversion.to_transformers import ORIGINAL_TOKENIZER_DIR, copy_remote_code, is_converted_folder
from ..loading import check_model_source, load_model_and_processor
from .arguments import add_train_arguments
from .checks import (
    TrainingInputError,
    check_data,
    check_lengths,
    check_output,
    json_lines,
    resolve_image,
)
from .collator import HoVLEChatCollator
from .compat import CHECKPOINTING_FIELD
from .distillation import DistillationCollator, DistillationTrainer, check_teacher
from .stages import apply_stage

# Room for what a trained folder holds beside its weights: the configs, the tokenizer, the remote code.
COMPANION_BYTES = 64 * 2**20


class JsonLinesDataset(torch.utils.data.Dataset):
    """The samples of a JSON-lines file; image paths relative to the file; each sample's `_source` is `file:line`
    (the collators name a bad sample by it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows, self.lines = [], []
        for number, row in json_lines(self.path):
            self.rows.append(row)
            self.lines.append(number)
        if not self.rows:
            raise ValueError(f"{self.path} holds no samples")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.rows[index])
        if "images" in row and row["images"]:  # relative paths are relative to the data file
            row["images"] = [str(resolve_image(self.path, name)) for name in row["images"]]
        if "image" in row:
            row["image"] = str(resolve_image(self.path, row["image"]))
        row["_source"] = f"{self.path.name}:{self.lines[index]}"
        return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hovle train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(parser)
    return parser


def accelerator_available() -> bool:
    """Whether torch sees a GPU (CUDA, or another accelerator such as MPS) that the Trainer would use."""
    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator is not None and accelerator.is_available())


def check_arguments(args: argparse.Namespace) -> dict[str, int]:
    """Everything that can be refused before a model is loaded (`checks` module); returns `check_data`'s summary."""
    if args.stage == 1 and not args.teacher:
        raise TrainingInputError(
            "stage 1 (distillation) needs --teacher: a model folder or Hub id with get_image_features whose "
            "features have the LLM's width (e.g. a native InternVL checkpoint)"
        )
    if args.stage != 1 and args.teacher:
        raise TrainingInputError(
            f"--teacher is for stage 1 (distillation) only; stage {args.stage} learns from the chat data: leave out "
            "--teacher or use --stage 1"
        )
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise TrainingInputError(f"--lr must be a finite number above 0, got {args.lr}")
    if args.lora and importlib.util.find_spec("peft") is None:
        raise TrainingInputError("--lora needs peft, which is not installed: pip install 'hovle[train]'")
    for flag, name in (("--model", args.model), ("--teacher", args.teacher)):
        if name is not None and str(name):
            check_model_source(str(name), flag, TrainingInputError)
    check_output(args.output, args.model, args.data, args.teacher, getattr(args, "overwrite", False))
    return check_data(args.data, args.stage)


def run(args: argparse.Namespace) -> Path | None:
    """Train and write `--output`; returns its path on the main process, None on the others (torchrun, accelerate).
    A run that fails leaves no trace: the Trainer creates its `output_dir` when it starts, and an output folder that
    did not exist before is removed again while it is still empty."""
    output = Path(args.output)
    existed = output.exists() or output.is_symlink()
    try:
        return _train(args)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                output.rmdir()  # only ever an empty folder
        raise


def _train(args: argparse.Namespace) -> Path | None:
    summary = check_arguments(args)
    cpu = args.cpu or not accelerator_available()
    if not args.cpu and cpu:
        status("No GPU available: training on the CPU")
    if args.bf16 and not cpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise TrainingInputError(
            f"--bf16: this GPU ({torch.cuda.get_device_name()}) has no bfloat16; leave out --bf16 (float32) or pass --cpu"
        )
    training_args = TrainingArguments(
        output_dir=args.output,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        optim=args.optim,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        **{CHECKPOINTING_FIELD: args.gradient_checkpointing},
        train_sampling_strategy="sequential" if args.sequential else "random",
        use_cpu=cpu,
        bf16=args.bf16,
        seed=args.seed,
        data_seed=args.seed,
        ddp_backend="gloo" if cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model, processor = load_model_and_processor(args.model, getattr(args, "trust_remote_code", False), dtype=dtype)
    vocab_size = model.config.text_config.vocab_size
    if summary["max_text_id"] >= vocab_size:
        raise TrainingInputError(
            f"{args.data}: a text_ids entry is {summary['max_text_id']}, past the model's vocabulary of {vocab_size}"
        )
    max_length = args.max_length or model.config.text_config.max_position_embeddings
    flag = "--max-length" if args.max_length else "the model's context (max_position_embeddings)"
    check_lengths(args.data, args.stage, processor, max_length, args.max_tiles, flag)
    needed = output_bytes(((p.shape, p.element_size()) for p in model.parameters()), margin=COMPANION_BYTES)
    check_free_space(
        args.output, needed, f"--output {args.output}: the trained model"
    )  # before training: a full disk must not cost the trained model
    apply_stage(model, args.stage)
    if args.lora:
        from peft import get_peft_model

        from .lora import lora_config

        model = get_peft_model(model, lora_config(args.lora))
    dataset = JsonLinesDataset(args.data)
    if args.stage == 1:
        try:
            teacher = AutoModel.from_pretrained(args.teacher, dtype=dtype)
        except OSError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise TrainingInputError(f"Cannot load the teacher {args.teacher}: {first_line}") from error
        check_teacher(teacher, model)
        trainer = DistillationTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            teacher=teacher,
            data_collator=DistillationCollator(processor, args.max_tiles),
        )
    else:
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=HoVLEChatCollator(processor, args.max_tiles),
        )
    trainer.train()
    refuse_nonfinite_weights(trainer, args.output)
    if trainer.is_world_process_zero():
        save_trained(trainer, processor, args, needed)
    # The other processes leave only once the main one has written: one that exits early tears the process group
    # down under the others (torchrun then stops the whole run).
    trainer.accelerator.wait_for_everyone()
    return Path(args.output) if trainer.is_world_process_zero() else None


def save_trained(trainer: Trainer, processor, args: argparse.Namespace, needed: int) -> None:
    """Write the trained model, its processor and the folder's companions into `--output` (main process only)."""
    # The finished model replaces the output folder as a whole (scratch folder, then a swap): nothing of an
    # earlier run's files (an adapter config, other shards) stays to mix with it. The output folder's owner checks
    # the free space again, refuses to replace a folder that is not ours, and turns ENOSPC into one line.
    inputs = [path for path in (args.model, args.teacher, args.data) if path and Path(path).exists()]
    with atomic_output_folder(
        args.output,
        overwrite=getattr(args, "overwrite", False),
        inputs=inputs,
        looks_ours=is_converted_folder,
        needed_bytes=needed,
    ) as scratch:
        if args.lora:
            from .lora import merge_and_save

            merge_and_save(trainer.model, scratch, processor)
        else:
            trainer.save_model(str(scratch))
            processor.save_pretrained(scratch)
        keep_folder_companions(args.model, scratch)


def refuse_nonfinite_weights(trainer: Trainer, output: str) -> None:
    """Refuse to save weights that training made NaN/Inf (a diverged run, e.g. too high a learning rate), with the
    check conversion applies to its output (`NonfiniteCheck`). Every process checks its own shards (FSDP) and the
    counts are summed, so that all processes refuse together."""
    check = NonfiniteCheck(torch.float32)
    for name, tensor in trainer.model.state_dict().items():
        check.check_source(name, tensor.to_local() if hasattr(tensor, "to_local") else tensor)
    bad = torch.tensor([len(check.in_source)], device=trainer.args.device)
    if trainer.args.world_size > 1:
        bad = trainer.accelerator.reduce(bad, reduction="sum")
    if int(bad.item()) == 0:
        return
    named = name_keys(f"{key} ({count})" for key, count in check.in_source.items()) or "on another process"
    steps = trainer.state.global_step
    raise TrainingInputError(
        f"training diverged: after {steps} step(s) the weights hold NaN or Inf ({named}); nothing was written and "
        f"--output {output} was left as it was; lower --lr or check the data"
    )


def keep_folder_companions(model_source: str, output: Path) -> None:
    """What a converted folder carries beside the weights, carried over to the trained one: the remote-code files
    (so it loads with `trust_remote_code=True` wherever the package is absent) and the release's tokenizer files
    (so `hovle export` can write them back)."""
    copy_remote_code(output)
    kept = Path(model_source) / ORIGINAL_TOKENIZER_DIR
    if kept.is_dir():
        shutil.copytree(kept, output / ORIGINAL_TOKENIZER_DIR, dirs_exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hovle.training.train` (under torchrun or accelerate launch): as `hovle train`, one `error:` line and
    status 2 for a bad input."""
    args = build_parser().parse_args(argv)
    try:
        written = run(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if written is not None:  # the main process only (`run` returns None on the others)
        print(f"Wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
