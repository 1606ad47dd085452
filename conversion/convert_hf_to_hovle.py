"""Export a transformers-format HoVLE folder (e.g. after fine-tuning here) back to the original layout, so the
original InternVL code base can load it.

    python conversion/convert_hf_to_hovle.py --input ./HoVLE-finetuned --output ./HoVLE-original [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from hovle.configuration_hovle import HoVLEConfig
from hovle.conversion.checkpoint_io import (
    CheckpointError,
    StreamingSafetensorsWriter,
    TensorSource,
    atomic_output_folder,
    parse_size,
    resolve_folder,
)
from hovle.conversion.config_map import original_config_from_hovle
from hovle.conversion.convert_hovle_to_hf import DTYPES, expected_original_shapes, model_state_shapes
from hovle.conversion.weight_map import geometries_from_config, map_original_key, original_keys_for, ours_to_original


def export(
    source: str | Path,
    output: str | Path,
    dtype: str = "float32",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    if dtype not in DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    folder = resolve_folder(source, allow_patterns=["*.json", "*.safetensors"])
    try:
        config = HoVLEConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{folder} has no readable HoVLE config.json: {error}") from error
    tensors = TensorSource(folder)
    expected = model_state_shapes(config)
    shapes = tensors.shapes()
    unexpected = sorted(set(shapes) - set(expected))
    missing = sorted(set(expected) - set(shapes))
    wrong = [f"{k}: {list(shapes[k])} != {list(v)}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    if unexpected or missing or wrong:
        raise CheckpointError(f"Cannot export: unknown {unexpected}, missing {missing}, wrong shapes {wrong}")

    target_dtype = DTYPES[dtype]
    geometries = geometries_from_config(config)
    keys = list(original_keys_for(config.embedding_config.num_hidden_layers, config.text_config.num_hidden_layers))
    with atomic_output_folder(Path(output), overwrite=overwrite) as scratch:
        original_shapes = expected_original_shapes(config)
        plan = [(key, original_shapes[key], target_dtype) for key in keys]
        writer = StreamingSafetensorsWriter(scratch, plan, parse_size(max_shard_size))
        for key in tqdm(keys, desc="Exporting", unit="tensor", disable=not progress):
            mapping = map_original_key(key)
            tensor = ours_to_original(mapping, [tensors.get(t) for t in mapping.targets], geometries)
            writer.add(key, tensor.to(target_dtype))
        writer.finish()
        original = original_config_from_hovle(config, dtype=dtype)
        (scratch / "config.json").write_text(json.dumps(original, indent=2) + "\n")
    return Path(output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="transformers-format HoVLE folder or Hub repo id")
    parser.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the release stores float32")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = export(args.input, args.output, args.dtype, args.max_shard_size, args.overwrite)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
