"""A transformers-layout HoVLE folder (e.g. after fine-tuning) -> the original release layout, so the original
InternVL code base can load it. The face is `hovle export`; the key table is `layout`'s, run backwards.

The release's tokenizer files that `hovle convert` kept in `original_tokenizer/` are written back at the top of the
exported folder, so that converting the export again gives the same tokenizer."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from ..configuration_hovle import HoVLEConfig
from .checkpoint_io import CheckedTensorWriter, CheckpointError, TensorSource, read_json_object, resolve_folder
from .config_map import original_config_from_hovle
from .layout import (
    expected_original_shapes,
    geometries_from_config,
    map_original_key,
    original_keys_for,
    ours_to_original,
    validate_transformers,
)
from .output_folder import atomic_output_folder, config_json_matches, interruptions_raise
from .to_transformers import (
    ORIGINAL_TOKENIZER_DIR,
    ORIGINAL_TOKENIZER_PATTERNS,
    is_converted_folder,
    planned_bytes,
    warnings_to_stderr,
)
from .tokenizer import TOKENIZER_FILES

logger = logging.getLogger(__name__)


def export(
    source: str | Path,
    output: str | Path,
    dtype: str = "float32",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> Path:
    """`source` (a transformers-layout HoVLE folder or Hub id) -> the original release layout at `output`.

    `allow_nonfinite`: write weights that are NaN/Inf in the source or overflow to inf in `dtype` (refused
    otherwise, naming the tensors)."""
    out_dtype, shard_bytes = CheckedTensorWriter.options(dtype, max_shard_size)
    patterns = ["*.json", "*.safetensors", *(f"{ORIGINAL_TOKENIZER_DIR}/{p}" for p in ORIGINAL_TOKENIZER_PATTERNS)]
    folder = resolve_folder(source, allow_patterns=patterns)
    if (folder / "config.json").exists():
        # Named as it is: a folder there would otherwise give a default config (32 layers) and a misleading error.
        read_json_object(folder / "config.json")
    try:
        config = HoVLEConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{folder} has no readable HoVLE config.json: {error}") from error
    tensors = TensorSource(folder)
    validate_transformers(tensors.shapes(), config)
    tokenizer_dir = folder / ORIGINAL_TOKENIZER_DIR
    if not (tokenizer_dir / "tokenizer.model").is_file():
        tokenizer_dir = None
        logger.warning(
            f"{source} has no {ORIGINAL_TOKENIZER_DIR}/tokenizer.model (the release tokenizer files `hovle convert` "
            f"keeps): the exported folder will have no tokenizer. Copy {', '.join(TOKENIZER_FILES)} of the release "
            "into it, or pass --tokenizer when converting it back"
        )

    geometries = geometries_from_config(config)
    keys = list(original_keys_for(config.embedding_config.num_hidden_layers, config.text_config.num_hidden_layers))
    original_shapes = expected_original_shapes(config)
    plan = [(key, original_shapes[key], out_dtype) for key in keys]
    with atomic_output_folder(
        Path(output),
        overwrite=overwrite,
        inputs=[folder],
        looks_ours=is_package_output,
        needed_bytes=planned_bytes(plan, folder),
    ) as scratch:
        writer = CheckedTensorWriter(scratch, plan, out_dtype, shard_bytes)
        for key in tqdm(keys, desc="Exporting", unit="tensor", disable=not progress):
            mapping = map_original_key(key)
            parts = [writer.cast(target, writer.read(target, tensors.get(target))) for target in mapping.targets]
            writer.add(key, ours_to_original(mapping, parts, geometries))
        writer.finish(allow_nonfinite)
        original = original_config_from_hovle(config, dtype=dtype)
        (scratch / "config.json").write_text(json.dumps(original, indent=2) + "\n")
        if tokenizer_dir is not None:
            for file in sorted(tokenizer_dir.iterdir()):
                if file.is_file():
                    shutil.copy2(file, scratch / file.name)
    return Path(output)


def is_package_output(path: Path) -> bool:
    """Whether `path` looks like a folder this package wrote: an export (the release layout's config.json, with
    `embedding_config` and `llm_config`) or a converted folder. The marker `--overwrite` needs before it replaces."""
    release = config_json_matches(path, lambda settings: "embedding_config" in settings and "llm_config" in settings)
    return release or is_converted_folder(path)


def run(args: argparse.Namespace) -> Path:
    with warnings_to_stderr(), interruptions_raise():
        return export(
            args.input,
            args.output,
            args.dtype,
            args.max_shard_size,
            args.overwrite,
            allow_nonfinite=args.allow_nonfinite,
        )
