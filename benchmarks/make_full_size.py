"""Write a random full-size HoVLE checkpoint in the original release layout (float32, three shards of about
4.94 / 4.73 / 0.76 GB like `OpenGVLab/HoVLE`, plus the index and the release's `config.json`). Tensors are drawn
one at a time (N(0, 0.02), seed 0) and streamed to disk with the converter's own safetensors writer, so memory
stays at about one tensor. The input of `benchmarks/full_size_io.py`.

    python benchmarks/make_full_size.py OUT_DIR
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from hovle.conversion.checkpoint_io import StreamingSafetensorsWriter
from hovle.conversion.layout import expected_original_shapes
from hovle.testing import release_original_config

from common import argument_parser, full_size_config, write_json

SHARD_BYTES = 4_940_000_000  # the release's first shard; the split lands near 4.94 / 4.73 / 0.76 GB


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("out", metavar="OUT_DIR")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = expected_original_shapes(full_size_config())
    # The release orders its shards LLM-first (language_model.* then embedding_model.*) by key name.
    plan = [(key, shapes[key], torch.float32) for key in sorted(shapes)]
    writer = StreamingSafetensorsWriter(folder, plan, SHARD_BYTES)
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for shard, entries in zip(writer.names, writer.shards, strict=True):
        for key, shape, _ in entries:
            writer.add(key, torch.empty(shape).normal_(0.0, 0.02, generator=generator))
        print(f"{shard}: {sum(math.prod(shape) * 4 for _, shape, _ in entries) / 1e9:.2f} GB", flush=True)
    writer.finish()  # closes the last shard, writes model.safetensors.index.json
    write_json(folder / "config.json", release_original_config())
    print(f"{len(plan)} tensors, {writer.total_bytes / 1e9:.2f} GB in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
