"""`hovle train`: fine-tune HoVLE with the transformers Trainer, one of the paper's three stages.

    hovle train --model DIR --data train.jsonl --stage 3 --output OUT [--lora both] [--max-steps 1000] ...
    torchrun --nproc_per_node 8 -m hovle.training.train --model DIR --data train.jsonl --stage 3 --output OUT
    accelerate launch --config_file "$(python -c "import hovle.training as t; print(t.accelerate_config('fsdp'))")" \
        -m hovle.training.train ...

Data (JSON lines):
* stages 2 and 3: `{"messages": [chat messages], "images": ["path.jpg", ...]}`; labels cover the assistant replies;
* stage 1: `{"image": "path.jpg"}` or `{"text_ids": [..]}` lines (unpaired), plus `--teacher` (a transformers model
  with `get_image_features`, e.g. a native InternVL checkpoint whose features have the LLM's width).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, Trainer, TrainingArguments

from ..cli import add_train_arguments
from ..loading import load_model_and_processor
from .collator import HoVLEChatCollator
from .compat import CHECKPOINTING_FIELD
from .distillation import DistillationCollator, DistillationTrainer, check_teacher
from .stages import apply_stage


class JsonLinesDataset(torch.utils.data.Dataset):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        if not self.rows:
            raise ValueError(f"{self.path} holds no samples")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.rows[index])
        base = self.path.parent
        if "images" in row:  # relative paths are relative to the data file
            row["images"] = [str(base / p) if not Path(p).is_absolute() else p for p in row["images"]]
        if "image" in row and not Path(row["image"]).is_absolute():
            row["image"] = str(base / row["image"])
        return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hovle train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> Path:
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model, processor = load_model_and_processor(args.model, getattr(args, "trust_remote_code", False), dtype=dtype)
    apply_stage(model, args.stage)
    if args.lora:
        from peft import get_peft_model

        from .lora import lora_config

        model = get_peft_model(model, lora_config(args.lora))
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
        use_cpu=args.cpu,
        bf16=args.bf16,
        seed=args.seed,
        data_seed=args.seed,
        ddp_backend="gloo" if args.cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    dataset = JsonLinesDataset(args.data)
    if args.stage == 1:
        if not args.teacher:
            raise SystemExit("stage 1 needs --teacher")
        teacher = AutoModel.from_pretrained(args.teacher, dtype=dtype)
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
    if trainer.is_world_process_zero():
        if args.lora:
            from .lora import merge_and_save

            merge_and_save(trainer.model, args.output, processor)
        else:
            trainer.save_model(args.output)
            processor.save_pretrained(args.output)
    return Path(args.output)


def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
