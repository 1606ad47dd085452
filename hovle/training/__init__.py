"""Training: the paper's three stages as presets of which parameters train (`stages`), the chat-format collator,
stage-1 distillation, LoRA helpers, the `hovle train` entry point (`train`) and its up-front checks of the output
folder and the data file (`checks`). Accelerate configs for DDP, FSDP2
and DeepSpeed ship as package data (`accelerate_config`)."""

from __future__ import annotations

from pathlib import Path

ACCELERATE_CONFIGS = ("ddp", "fsdp", "deepspeed_zero3")


def accelerate_config(name: str) -> Path:
    """The path of a shipped `accelerate launch --config_file` YAML: one of `ACCELERATE_CONFIGS`."""
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"Unknown accelerate config {name!r}; choose one of {list(ACCELERATE_CONFIGS)}")
    return Path(__file__).parent / "configs" / f"{name}.yaml"
