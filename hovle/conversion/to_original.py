"""A transformers-layout HoVLE folder (e.g. after fine-tuning) -> the original release layout, so the original
InternVL code base can load it. The face is `hovle export`; the key table is `layout`'s, run backwards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from ..configuration_hovle import HoVLEConfig
from .checkpoint_io import (
    CheckpointError,
    StreamingSafetensorsWriter,
    TensorSource,
    parse_size,
    resolve_folder,
    target_dtype,
)
from .config_map import original_config_from_hovle
from .layout import (
    expected_original_shapes,
    geometries_from_config,
    map_original_key,
    original_keys_for,
    ours_to_original,
    validate_transformers,
)
from .output_folder import atomic_output_folder


def export(
    source: str | Path,
    output: str | Path,
    dtype: str = "float32",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    out_dtype = target_dtype(dtype)
    folder = resolve_folder(source, allow_patterns=["*.json", "*.safetensors"])
    try:
        config = HoVLEConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{folder} has no readable HoVLE config.json: {error}") from error
    tensors = TensorSource(folder)
    validate_transformers(tensors.shapes(), config)

    geometries = geometries_from_config(config)
    keys = list(original_keys_for(config.embedding_config.num_hidden_layers, config.text_config.num_hidden_layers))
    with atomic_output_folder(Path(output), overwrite=overwrite, inputs=[folder]) as scratch:
        original_shapes = expected_original_shapes(config)
        plan = [(key, original_shapes[key], out_dtype) for key in keys]
        writer = StreamingSafetensorsWriter(scratch, plan, parse_size(max_shard_size))
        for key in tqdm(keys, desc="Exporting", unit="tensor", disable=not progress):
            mapping = map_original_key(key)
            tensor = ours_to_original(mapping, [tensors.get(t) for t in mapping.targets], geometries)
            writer.add(key, tensor.to(out_dtype))
        writer.finish()
        original = original_config_from_hovle(config, dtype=dtype)
        (scratch / "config.json").write_text(json.dumps(original, indent=2) + "\n")
    return Path(output)


def run(args: argparse.Namespace) -> Path:
    return export(args.input, args.output, args.dtype, args.max_shard_size, args.overwrite)
