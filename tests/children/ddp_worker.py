"""Run under `torchrun` (or alone) by `tests/test_training_distributed.py`: a few Trainer steps on a JSON-lines chat
set; every rank saves its weights."""

import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

from hovle.training.collator import HoVLEChatCollator
from hovle.training.train import JsonLinesDataset

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--data")
parser.add_argument("--out")
parser.add_argument("--batch-size", type=int)
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()

processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32)
training_args = TrainingArguments(
    output_dir=args.out,
    per_device_train_batch_size=args.batch_size,
    max_steps=args.steps,
    learning_rate=0.1,
    optim="sgd",
    lr_scheduler_type="constant",
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    remove_unused_columns=False,
    train_sampling_strategy="sequential",
    seed=0,
    data_seed=0,
    ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    logging_steps=1,
)
trainer = Trainer(
    model=model,
    args=training_args,
    train_dataset=JsonLinesDataset(args.data),
    data_collator=HoVLEChatCollator(processor),
)
trainer.train()
rank = int(os.environ.get("RANK", 0))
state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
save_file(state, os.path.join(args.out, f"rank{rank}.safetensors"))
