"""Convert an original-format HoVLE checkpoint (`OpenGVLab/HoVLE`, `OpenGVLab/HoVLE-HD`, or a training checkpoint
of the original code base) into a Hub-ready transformers folder loaded with `trust_remote_code=True`.

    python conversion/convert_hovle_to_hf.py --input OpenGVLab/HoVLE --output ./HoVLE-hf [--dtype bfloat16]

Everything is validated before anything is written: every source tensor must map to exactly one place, every
model tensor must be produced, every shape must match. Tensors are then streamed shard by shard into a scratch
folder that replaces `--output` only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm
from transformers import GenerationConfig

from hovle import configuration_hovle
from hovle.configuration_hovle import HoVLEConfig
from hovle.conversion.checkpoint_io import (
    CheckpointError,
    StreamingSafetensorsWriter,
    TensorSource,
    atomic_output_folder,
    parse_size,
    resolve_folder,
)
from hovle.conversion.config_map import hovle_config_from_original
from hovle.conversion.tokenizer_conversion import tokenizer_for_model, write_processor_files
from hovle.conversion.weight_map import (
    geometries_from_config,
    map_original_key,
    original_keys_for,
    original_to_ours,
    ours_to_original,
)
from hovle.modeling_hovle import HoVLEForConditionalGeneration

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a converted folder ships as remote code (processing_hovle.py joins when it exists).
ROOT_MODULES = ("configuration_hovle.py", "modeling_hovle.py", "processing_hovle.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hovle.HoVLEConfig",
    "AutoModel": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hovle.HoVLEForConditionalGeneration",
}
SOURCE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.py", "*.txt", "*.md"]


def model_state_shapes(config: HoVLEConfig) -> dict[str, tuple[int, ...]]:
    """Our model's tensors and shapes, from a model built on the meta device (no memory, any size)."""
    with torch.device("meta"):
        model = HoVLEForConditionalGeneration(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def expected_original_shapes(config: HoVLEConfig) -> dict[str, tuple[int, ...]]:
    """Every original key this config implies, with its shape: our meta tensors pushed back through the table.

    Also checks the table itself: every model tensor is produced by exactly one original key.
    """
    ours = model_state_shapes(config)
    meta = {key: torch.empty(shape, device="meta") for key, shape in ours.items()}
    geometries = geometries_from_config(config)
    expected, produced = {}, []
    for key in original_keys_for(config.embedding_config.num_hidden_layers, config.text_config.num_hidden_layers):
        mapping = map_original_key(key)
        expected[key] = tuple(ours_to_original(mapping, [meta[t] for t in mapping.targets], geometries).shape)
        produced.extend(mapping.targets)
    if sorted(produced) != sorted(ours):
        raise AssertionError(f"key table out of sync with the model: {sorted(set(produced) ^ set(ours))}")
    return expected


def validate_source(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig) -> None:
    """Raise a `CheckpointError` naming every missing, unexpected or mis-shaped tensor."""
    expected = expected_original_shapes(config)
    unexpected = sorted(k for k in shapes if k not in expected)
    missing = sorted(k for k in expected if k not in shapes)
    wrong = [
        f"{k}: {list(shapes[k])} != expected {list(expected[k])}"
        for k in shapes
        if k in expected and shapes[k] != expected[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"unknown tensor(s) not in the HoVLE layout: {unexpected}")
    if missing:
        problems.append(f"missing tensor(s): {missing}")
    if wrong:
        problems.append(f"wrong shape(s): {wrong}")
    if problems:
        raise CheckpointError("Cannot convert: " + "; ".join(problems))


def write_model_card(folder: Path, base_model: str, dtype: str, config: HoVLEConfig) -> None:
    data = ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_model,
        tags=["hovle", "vision-language", "monolithic-vlm", "custom_code"],
    )
    body = f"""
# HoVLE (transformers format)

HoVLE, the monolithic vision-language model of [arXiv:2412.16158](https://arxiv.org/abs/2412.16158) (CVPR 2025),
converted from `{base_model}` for transformers 5.x ({dtype} weights). No vision encoder: a holistic embedding
module ({config.embedding_config.num_hidden_layers} causal layers) maps image patches and text tokens into one space
that the LLM ({config.text_config.num_hidden_layers} Llama-layout layers) reads like text.

```python
import torch
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained("<this repo>", trust_remote_code=True, dtype=torch.bfloat16)
```

Pixel-shuffle location: `{config.embedding_config.pixel_shuffle_loc}`; {config.tokens_per_tile} tokens per
{config.embedding_config.image_size}px tile.
"""
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(folder / "README.md")


def copy_remote_code(folder: Path) -> None:
    package_dir = Path(configuration_hovle.__file__).parent  # the flat repo root, or the installed package
    for name in ROOT_MODULES:
        if (package_dir / name).exists():
            shutil.copy2(package_dir / name, folder / name)


def save_hf_config(config: HoVLEConfig, folder: Path, dtype: torch.dtype, end_of_turn_id: int | None) -> None:
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["HoVLEForConditionalGeneration"]
    config.dtype = dtype
    config.save_pretrained(folder)
    eos = config.text_config.eos_token_id
    # Chat replies end with <|im_end|>: stop there by default (and at </s>).
    eos = [end_of_turn_id, eos] if end_of_turn_id is not None else eos
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=config.text_config.pad_token_id,
    ).save_pretrained(folder)


def convert(
    source: str | Path,
    output: str | Path,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> Path:
    """Convert `source` (an original-format folder or Hub id) into a transformers folder at `output`."""
    if dtype not in DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    folder = resolve_folder(source, allow_patterns=SOURCE_PATTERNS)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"No config.json in {folder}")
    try:
        original_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"config.json in {folder} is not valid JSON: {error}") from error
    config = hovle_config_from_original(original_config)
    tensors = TensorSource(folder)
    validate_source(tensors.shapes(), config)
    tokenizer = tokenizer_for_model(folder, config)

    target_dtype = DTYPES[dtype]
    geometries = geometries_from_config(config)
    output = Path(output)
    with atomic_output_folder(output, overwrite=overwrite) as scratch:
        ours = model_state_shapes(config)
        plan = [(t, ours[t], target_dtype) for key in tensors.keys() for t in map_original_key(key).targets]
        writer = StreamingSafetensorsWriter(scratch, plan, parse_size(max_shard_size))
        for key, tensor in tqdm(
            tensors.iter_tensors(), total=len(plan), desc="Converting", unit="tensor", disable=not progress
        ):
            for target, converted in original_to_ours(map_original_key(key), tensor, geometries):
                writer.add(target, converted.to(target_dtype))
            del tensor
        writer.finish()
        token_ids = write_processor_files(tokenizer, scratch, config) if tokenizer is not None else None
        save_hf_config(config, scratch, target_dtype, token_ids["im_end"] if token_ids else None)
        copy_remote_code(scratch)
        base_model = str(source) if not Path(source).exists() else "OpenGVLab/HoVLE"
        write_model_card(scratch, base_model, dtype, config)
    if push_to_hub:
        upload_folder(output, push_to_hub, private=private)
    return output


def upload_folder(folder: Path, repo_id: str, private: bool = False) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload HoVLE (transformers format)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="original-format folder or Hub repo id")
    parser.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the result to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    try:
        out = convert(
            args.input,
            args.output,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
        )
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
