"""Multi-process training: torchrun DDP on gloo equals one process with the same global batch; FSDP2
`fully_shard` (wrapping by `_no_split_modules`) equals the unsharded forward/backward."""

import os
import shutil
import sys

import pytest
import torch
from helpers import free_port, run_child, write_chat_data
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


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
    common = ["--model", tiny_hub_folder, "--data", data, "--steps", "5"]
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    ddp = run_child(
        "ddp_worker.py", *common, "--out", tmp_path / "ddp", "--batch-size", "2", env=env, launcher=torchrun
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = run_child("ddp_worker.py", *common, "--out", tmp_path / "single", "--batch-size", "4", env=env)
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


def test_fsdp2_fully_shard_matches_unsharded(tiny_hub_folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = run_child("fsdp_child.py", tiny_hub_folder, free_port(), env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    wrapped, loss_diff, grad_diff = result.stdout.split("RESULT", 1)[1].split()
    assert int(wrapped) == 5  # 2 embedding + 3 LLM decoder layers
    assert float(loss_diff) < 1e-5 and float(grad_diff) < 1e-5
