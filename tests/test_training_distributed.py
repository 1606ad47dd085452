"""Multi-process training: torchrun DDP on gloo equals one process with the same global batch; FSDP2
`fully_shard` (wrapping by `_no_split_modules`) equals the unsharded forward/backward."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def write_chat_data(folder: Path, count: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        images = []
        for k in range(i % 3):
            name = f"img{i}_{k}.png"
            Image.effect_noise((40 + 10 * k, 56), 50 + i).convert("RGB").save(folder / name)
            images.append(name)
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": f"question {i} " * (1 + i % 4)}]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": f"reply {i}" * (1 + i % 2)},
                ],
                "images": images,
            }
        )
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ddp_equals_single_process(tiny_hub_folder, tmp_path):
    data = write_chat_data(tmp_path / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    common = ["--model", str(tiny_hub_folder), "--data", str(data), "--steps", "5"]
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    ddp = subprocess.run(
        [*torchrun, str(WORKER), *common, "--out", str(tmp_path / "ddp"), "--batch-size", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = subprocess.run(
        [sys.executable, str(WORKER), *common, "--out", str(tmp_path / "single"), "--batch-size", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-4000:]
    rank0, rank1 = (load_file(str(tmp_path / "ddp" / f"rank{r}.safetensors")) for r in (0, 1))
    alone = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    base = load_file(str(next(tiny_hub_folder.glob("model*.safetensors"))))
    moved = 0
    for key, tensor in alone.items():
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], tensor, atol=1e-5, rtol=0, msg=key)
        moved += not torch.equal(tensor, base[key])
    assert moved > 50, "training must have changed the weights"
    shutil.rmtree(tmp_path / "data")


FSDP_CHILD = r"""
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForImageTextToText, AutoProcessor
sys.path.insert(0, sys.argv[3])
from test_training import samples
from hovle.training.collator import HoVLEChatCollator

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
    for (name, p), (_, q) in zip(sharded.named_parameters(), reference.named_parameters()):
        if q.grad is None:
            continue
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        worst = max(worst, (grad - q.grad).abs().max().item())
    if rank == 0:
        print(f"RESULT {len(wrapped)} {abs(loss.item() - ref_loss.item())} {worst}")
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_fsdp2_fully_shard_matches_unsharded(tiny_hub_folder, tmp_path):
    script = tmp_path / "fsdp_child.py"
    script.write_text(FSDP_CHILD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_hub_folder), str(free_port()), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    wrapped, loss_diff, grad_diff = result.stdout.split("RESULT", 1)[1].split()
    assert int(wrapped) == 5  # 2 embedding + 3 LLM decoder layers
    assert float(loss_diff) < 1e-5 and float(grad_diff) < 1e-5
