"""Original release layout (`OpenGVLab/HoVLE`, `OpenGVLab/HoVLE-HD`, or a training checkpoint of the original code
base) -> a Hub-ready transformers folder, loaded with `trust_remote_code=True`. The face is `hovle convert`.

Everything is validated before anything is written (`layout.validate_original`, the tokenizer files): every source
tensor must map to exactly one place, every model tensor must be produced, every shape must match. Tensors are then
streamed shard by shard into a scratch folder that replaces the output only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .. import configuration_hovle
from ..configuration_hovle import HoVLEConfig
from .checkpoint_io import (
    CheckpointError,
    StreamingSafetensorsWriter,
    TensorSource,
    parse_size,
    resolve_folder,
    target_dtype,
)
from .config_map import hovle_config_from_original
from .layout import geometries_from_config, map_original_key, model_state_shapes, original_to_ours, validate_original
from .output_folder import atomic_output_folder
from .tokenizer import tokenizer_for_model, write_processor_files

# What a converted folder ships as remote code: what `auto_map` names, and what those files import.
REMOTE_CODE_FILES = ("configuration_hovle.py", "modeling_hovle.py", "processing_hovle.py", "chat_hovle.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hovle.HoVLEConfig",
    "AutoModel": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hovle.HoVLEForConditionalGeneration",
}
SOURCE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.py", "*.txt", "*.md"]


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
    package_dir = Path(configuration_hovle.__file__).parent
    for name in REMOTE_CODE_FILES:
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
    out_dtype = target_dtype(dtype)
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
    validate_original(tensors.shapes(), config)
    tokenizer = tokenizer_for_model(folder, config)

    geometries = geometries_from_config(config)
    output = Path(output)
    with atomic_output_folder(output, overwrite=overwrite, inputs=[folder]) as scratch:
        ours = model_state_shapes(config)
        plan = [(t, ours[t], out_dtype) for key in tensors.keys() for t in map_original_key(key).targets]
        writer = StreamingSafetensorsWriter(scratch, plan, parse_size(max_shard_size))
        for key, tensor in tqdm(
            tensors.iter_tensors(), total=len(plan), desc="Converting", unit="tensor", disable=not progress
        ):
            for target, converted in original_to_ours(map_original_key(key), tensor, geometries):
                writer.add(target, converted.to(out_dtype))
            del tensor
        writer.finish()
        token_ids = write_processor_files(tokenizer, scratch, config) if tokenizer is not None else None
        save_hf_config(config, scratch, out_dtype, token_ids["im_end"] if token_ids else None)
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


def run(args: argparse.Namespace) -> Path:
    return convert(
        args.input,
        args.output,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
