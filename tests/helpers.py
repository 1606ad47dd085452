"""Helpers common to the test modules: fixture paths, tiny-model builders, chat training data, and running the
child-process scripts in `tests/children/`. Pytest fixtures live in `conftest.py`; this module holds plain code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments

from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import TINY_IMAGE_TOKEN, tiny_config

TESTS_DIR = Path(__file__).resolve().parent
FIXTURES = TESTS_DIR / "fixtures"
# The original implementation's own outputs on a tiny checkpoint (vendored; see its README).
FIXTURE = FIXTURES / "original_tiny"
# The release checkpoint's tensor names and shapes.
SHAPES_JSON = FIXTURES / "original_checkpoint_shapes.json"
CHILDREN = TESTS_DIR / "children"
IMG_START, IMG_END = TINY_IMAGE_TOKEN - 2, TINY_IMAGE_TOKEN - 1


def build_model(pixel_shuffle_loc="pre", attn="eager", seed=0) -> HoVLEForConditionalGeneration:
    torch.manual_seed(seed)
    config = tiny_config(pixel_shuffle_loc)
    config._attn_implementation = attn
    model = HoVLEForConditionalGeneration(config).eval()
    # Larger-than-init weights so that logits differ clearly between tokens (a meaningful greedy path).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name and "norm.weight" not in name:
                # crc32, not hash(): str hashes are salted per process, which made the weights differ run to run.
                param_seed = zlib.crc32(f"{seed}:{name}".encode())
                param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(param_seed))
    return model


def image_prompt(text_before: list[int], tiles_per_image: list[int], text_after: list[int], tokens_per_tile=4):
    """BOS + text + one `<img><IMG_CONTEXT>*n</img>` block per image + text, as a list of ids."""
    ids = [1, *text_before]
    for tiles in tiles_per_image:
        ids += [IMG_START] + [TINY_IMAGE_TOKEN] * (tiles * tokens_per_tile) + [IMG_END]
    return ids + list(text_after)


def load_expected(fixture_dir: Path):
    """The golden fixture's cases (`expected.json`) and tensors (`expected.safetensors`)."""
    from safetensors.torch import load_file

    cases = json.loads((fixture_dir / "expected.json").read_text())["cases"]
    return cases, load_file(str(fixture_dir / "expected.safetensors"))


def output_cache(outputs):
    """The cache of a model output on any supported transformers (`cache` since 5.2x, `past_key_values` before)."""
    return outputs["cache"] if "cache" in outputs else outputs["past_key_values"]


# --- child processes ---------------------------------------------------------------------------------------------


def run_child(script: str, *args, env: dict | None = None, timeout: int = 600, cwd=None, launcher=(sys.executable,)):
    """Run `tests/children/<script>` with `args` under `launcher` (a fresh interpreter; `torchrun` for several
    processes), offline unless `env` says otherwise; the finished process, its output captured as text."""
    env = env if env is not None else {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [*launcher, str(CHILDREN / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def child_report(result: subprocess.CompletedProcess) -> dict:
    """The JSON a child printed after `REPORT`, once it exited cleanly."""
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.split("REPORT", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- chat training data ------------------------------------------------------------------------------------------


def load_model(folder):
    return AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)


def image(seed):
    return Image.effect_noise((40 + seed * 10, 56), 60 + seed).convert("RGB")


def samples(count=8):
    data = []
    for i in range(count):
        content = [{"type": "image"}] * (i % 3) + [{"type": "text", "text": f"Question {i}?"}]
        data.append(
            {
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": f"answer number {i}"},
                    {"role": "user", "content": "and then?"},
                    {"role": "assistant", "content": "done"},
                ],
                "images": [image(i + k) for k in range(i % 3)],
            }
        )
    return data


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def train(model, processor, tmp_path, steps, batch_size=4, accumulation=1, lr=5e-3, optim="adamw_torch", data=None):
    from hovle.training.collator import HoVLEChatCollator

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=lr,
        optim=optim,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_drop_last=True,
        lr_scheduler_type="constant",
        seed=0,
        data_seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ListDataset(data or samples()), data_collator=HoVLEChatCollator(processor)
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def write_chat_data(folder: Path, count: int = 20) -> Path:
    """A JSON-lines chat set (`messages` + `images`, 0-2 images a row) with its images, as `hovle train` reads it."""
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
