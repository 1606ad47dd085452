"""Write a random full-size HoVLE checkpoint in the original release layout (float32, three shards of about
4.94 / 4.73 / 0.76 GB like `OpenGVLab/HoVLE`), one shard in memory at a time.

    python benchmarks/make_full_size.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hovle.conversion.config_map import hovle_config_from_original
from hovle.conversion.layout import expected_original_shapes
from hovle.testing import release_original_config

SHARD_BYTES = 4_940_000_000  # the release's first shard; the split lands near 4.94 / 4.73 / 0.76 GB


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    original = release_original_config()
    shapes = expected_original_shapes(hovle_config_from_original(original))
    # The release orders its shards LLM-first (language_model.* then embedding_model.*) by key name.
    keys = sorted(shapes)
    groups, current, size = [], [], 0
    for key in keys:
        numel = 1
        for dim in shapes[key]:
            numel *= dim
        if current and size + numel * 4 > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += numel * 4
    groups.append(current)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    start = time.time()
    for number, group in enumerate(groups, start=1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {key: torch.empty(shapes[key]).normal_(0.0, 0.02, generator=generator) for key in group}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
        print(f"{name}: {sum(t.nbytes for t in tensors.values()) / 1e9:.2f} GB", flush=True)
        del tensors
    total = sum(torch.Size(s).numel() * 4 for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (folder / "config.json").write_text(json.dumps(original, indent=2))
    print(f"{len(shapes)} tensors, {total / 1e9:.2f} GB in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
