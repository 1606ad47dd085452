"""Child of `tests/test_training_distributed.py`: two gloo processes shard the model with FSDP2 `fully_shard`
(wrapping by `_no_split_modules`) and compare its loss and gradients with the unsharded model's on one batch.
Rank 0 prints `RESULT <wrapped modules> <loss difference> <largest gradient difference>`.

    python fsdp_child.py CONVERTED_FOLDER PORT
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForImageTextToText, AutoProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `helpers.samples`
from helpers import samples  # noqa: E402

from hovle.training.collator import HoVLEChatCollator  # noqa: E402


def main(rank, world, folder, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    batch = HoVLEChatCollator(processor)(samples(4))
    reference = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    sharded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    ref_loss = reference(**batch).loss
    ref_loss.backward()
    wrap = set(sharded._no_split_modules)
    wrapped = [m for m in sharded.modules() if type(m).__name__ in wrap]
    for module in wrapped:
        fully_shard(module)
    fully_shard(sharded)
    loss = sharded(**batch).loss
    loss.backward()
    worst = 0.0
    for (_, p), (_, q) in zip(sharded.named_parameters(), reference.named_parameters(), strict=True):
        if q.grad is None:
            continue
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        worst = max(worst, (grad - q.grad).abs().max().item())
    if rank == 0:
        print(f"RESULT {len(wrapped)} {abs(loss.item() - ref_loss.item())} {worst}")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
