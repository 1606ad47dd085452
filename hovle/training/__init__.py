"""Training: the paper's three stages as presets of which parameters train (`stages`), the chat-format collator,
stage-1 distillation, LoRA helpers, the `hovle train` entry point (`train`) and its up-front checks of the output
folder and the data file (`checks`). Accelerate configs for DDP, FSDP2
and DeepSpeed ship as package data (`accelerate_config`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ACCELERATE_CONFIGS = ("ddp", "fsdp", "deepspeed_zero3")


def device_count() -> int:
    """The accelerators torch sees (CUDA, or another such as XPU/MPS), at least 1 (one CPU process)."""
    import torch

    if torch.cuda.is_available():
        return max(torch.cuda.device_count(), 1)
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and accelerator.is_available():
        return max(accelerator.device_count(), 1)
    return 1


def accelerate_config(name: str, num_processes: int | None = None) -> Path:
    """The path of an `accelerate launch --config_file` YAML: one of `ACCELERATE_CONFIGS`, with `num_processes` set
    to `num_processes`, by default this machine's device count (the shipped files leave it out: a fixed count
    started 8 processes on a 2-core machine without a GPU). The filled copy is a new file in the temporary folder."""
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"Unknown accelerate config {name!r}; choose one of {list(ACCELERATE_CONFIGS)}")
    count = device_count() if num_processes is None else num_processes
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"num_processes must be a whole number of at least 1, got {count!r}")
    shipped = Path(__file__).parent / "configs" / f"{name}.yaml"
    text = shipped.read_text().rstrip("\n") + f"\nnum_processes: {count}\n"
    # A fresh file of its own (mkstemp: unpredictable name, created exclusively, mode 0600): a fixed name in the shared
    # temporary folder could be created first, or linked elsewhere, by another user.
    handle, filled = tempfile.mkstemp(prefix=f"hovle-accelerate-{name}-{count}p-", suffix=".yaml")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return Path(filled)
