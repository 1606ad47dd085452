"""Original release layout (`OpenGVLab/HoVLE`, `OpenGVLab/HoVLE-HD`, or a training checkpoint of the original code
base) -> a Hub-ready transformers folder, loaded with `trust_remote_code=True`. The face is `hovle convert`.

Everything is validated before anything is written (the config's numbers, the config against the tensor names and
shapes, `layout.validate_original`, the tokenizer files): every source tensor must map to exactly one place, every
model tensor must be produced, every shape must match. Tensors are then streamed shard by shard into a scratch
folder that replaces the output only when complete; values that the output dtype would turn into inf, and NaN/Inf
already in the source, are refused unless allowed.

The source's release tokenizer files (`tokenizer.model`, ...) are converted into a fast tokenizer and also kept as
they are in `original_tokenizer/`, so that `hovle export` can write them back in the release layout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm

from .. import configuration_hovle
from ..configuration_hovle import HoVLEConfig
from .checkpoint_io import CheckedTensorWriter, CheckpointError, TensorSource, read_json_object, resolve_folder
from .config_map import chat_generation_config, hovle_config_from_original
from .layout import geometries_from_config, map_original_key, model_state_shapes, original_to_ours, validate_original
from .output_folder import atomic_output_folder, config_json_matches, interruptions_raise, output_bytes
from .tokenizer import TOKENIZER_FILES, tokenizer_for_model, write_processor_files

logger = logging.getLogger(__name__)

# What a converted folder ships as remote code: what `auto_map` names, and what those files import.
REMOTE_CODE_FILES = ("configuration_hovle.py", "modeling_hovle.py", "processing_hovle.py", "chat_hovle.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hovle.HoVLEConfig",
    "AutoModel": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_hovle.HoVLEForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hovle.HoVLEForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_hovle.HoVLEProcessor"}
SOURCE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.py", "*.txt", "*.md"]
# The release's tokenizer files as they are (+ its slow tokenizer's code, when present), kept in a converted folder
# for `hovle export`. A subfolder: AutoTokenizer / AutoProcessor read only the folder's top level.
ORIGINAL_TOKENIZER_DIR = "original_tokenizer"
ORIGINAL_TOKENIZER_PATTERNS = [*TOKENIZER_FILES, "tokenization_*.py"]
NO_TOKENIZER_WARNING = (
    "{source} has no tokenizer (no tokenizer.model): the converted folder will have no tokenizer and no processor, "
    "so pipeline(), AutoProcessor, `hovle chat` and `hovle train` cannot use it. Pass --tokenizer DIR_OR_HUB_ID "
    "(tokenizer_source=) to take the release's tokenizer files from another folder or Hub repo, e.g. OpenGVLab/HoVLE"
)


def describe_source(source: str | Path) -> tuple[str | None, str]:
    """(the Hub id to name as `base_model`, or None for a local folder; how the model card names the source)."""
    path = Path(source)
    if path.exists():
        return None, f"a local checkpoint ({path.resolve().name})"
    return str(source), f"`{source}`"


def write_model_card(
    folder: Path, base_model: str | None, source: str, dtype: str, config: HoVLEConfig, tokenizer_note: str = ""
) -> None:
    """`base_model` is a Hub id or None (a local source: no Hub model is claimed); `source` names it in the text."""
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
converted from {source} for transformers 5.x ({dtype} weights).{tokenizer_note} No vision encoder: a holistic embedding
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
    """Ship the remote code in a written folder and point its config files at it, so that the folder loads through
    transformers' Auto classes and `pipeline()` with `trust_remote_code=True` in a process that never imported this
    package: the one rule for every folder the package writes (`hovle convert`, `hovle train`, LoRA merge). Call it
    after the model and processor files are saved. `auto_map` is written into the files rather than left to
    `register_for_auto_class`, whose class-wide flag outlives the call: a processor saved by a fresh process (a
    training run) had none, one saved after a conversion in the same process had it."""
    package_dir = Path(configuration_hovle.__file__).parent
    for name in REMOTE_CODE_FILES:
        shutil.copy2(package_dir / name, folder / name)
    _edit_json(folder / "config.json", lambda settings: settings.update(auto_map=dict(AUTO_MAP)))

    def processor_settings(settings: dict) -> None:
        settings["auto_map"] = dict(PROCESSOR_AUTO_MAP)
        if isinstance(settings.get("image_processor"), dict):  # a stock image processor: no pointer of its own
            settings["image_processor"].pop("auto_map", None)

    _edit_json(folder / "processor_config.json", processor_settings)
    # The tokenizer is a stock fast tokenizer: no remote-code pointer in its config.
    _edit_json(folder / "tokenizer_config.json", lambda settings: settings.pop("auto_map", None))


def _edit_json(path: Path, edit) -> None:
    """Apply `edit` to the JSON object in `path`, if the file exists; written as transformers writes its configs."""
    if not path.is_file():
        return
    settings = json.loads(path.read_text(encoding="utf-8"))
    edit(settings)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def save_hf_config(config: HoVLEConfig, folder: Path, dtype: torch.dtype, end_of_turn_id: int | None) -> None:
    config.architectures = ["HoVLEForConditionalGeneration"]
    config.dtype = dtype
    config.save_pretrained(folder)
    chat_generation_config(config.text_config, end_of_turn_id).save_pretrained(folder)


def copy_original_tokenizer(source: Path, folder: Path) -> None:
    """The release's tokenizer files of `source`, unchanged, into `folder` (what `hovle export` writes back)."""
    folder.mkdir()
    for pattern in ORIGINAL_TOKENIZER_PATTERNS:
        for file in sorted(source.glob(pattern)):
            if file.is_file():
                shutil.copy2(file, folder / file.name)


def tokenizer_folder(source_folder: Path, tokenizer_source: str | Path | None) -> Path:
    """Where the release tokenizer files come from: `tokenizer_source` (a folder or Hub id) when given, which must
    hold a `tokenizer.model`, else the checkpoint's own folder (which may have none)."""
    if tokenizer_source is None:
        return source_folder
    folder = resolve_folder(tokenizer_source, allow_patterns=ORIGINAL_TOKENIZER_PATTERNS)
    if not (folder / "tokenizer.model").is_file():
        raise CheckpointError(
            f"--tokenizer {tokenizer_source}: no tokenizer.model in {folder} (expected the release's tokenizer "
            f"files: {', '.join(TOKENIZER_FILES)})"
        )
    return folder


def convert(
    source: str | Path,
    output: str | Path,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
    tokenizer_source: str | Path | None = None,
    allow_nonfinite: bool = False,
) -> Path:
    """Convert `source` (an original-format folder or Hub id) into a transformers folder at `output`.

    `tokenizer_source`: a folder or Hub id to take the release's tokenizer files from (default: `source`'s own).
    `allow_nonfinite`: write weights that are NaN/Inf in the source or that overflow to inf in `dtype` (refused
    otherwise, naming the tensors). A source without a tokenizer converts, with a warning: the output then has no
    tokenizer and no processor. A failed `push_to_hub` upload raises a `CheckpointError` after the folder was
    written, saying where."""
    out_dtype, shard_bytes = CheckedTensorWriter.options(dtype, max_shard_size)
    folder = resolve_folder(source, allow_patterns=SOURCE_PATTERNS)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"No config.json in {folder}")
    config = hovle_config_from_original(read_json_object(config_path))
    tensors = TensorSource(folder)
    validate_original(tensors.shapes(), config)
    tokenizer_dir = tokenizer_folder(folder, tokenizer_source)
    tokenizer = tokenizer_for_model(tokenizer_dir, config)
    if tokenizer is None:
        logger.warning(NO_TOKENIZER_WARNING.format(source=source))

    geometries = geometries_from_config(config)
    output = Path(output)
    ours = model_state_shapes(config)
    mappings = {key: map_original_key(key) for key in tensors.keys()}
    plan = [(t, ours[t], out_dtype) for mapping in mappings.values() for t in mapping.targets]
    with atomic_output_folder(
        output,
        overwrite=overwrite,
        inputs=[folder, tokenizer_dir],
        looks_ours=is_converted_folder,
        needed_bytes=planned_bytes(plan, folder),
    ) as scratch:
        writer = CheckedTensorWriter(scratch, plan, out_dtype, shard_bytes)
        # The bar counts written tensors: a fused wqkv source tensor advances it by its three targets.
        with tqdm(total=len(plan), desc="Converting", unit="tensor", disable=not progress) as bar:
            for key, tensor in tensors.iter_tensors():
                for target, part in original_to_ours(mappings[key], writer.read(key, tensor), geometries):
                    writer.add(target, writer.cast(key, part))
                    bar.update(1)
                del tensor
        writer.finish(allow_nonfinite)
        token_ids = write_processor_files(tokenizer, scratch, config) if tokenizer is not None else None
        if tokenizer is not None:
            copy_original_tokenizer(tokenizer_dir, scratch / ORIGINAL_TOKENIZER_DIR)
        save_hf_config(config, scratch, out_dtype, token_ids["im_end"] if token_ids else None)
        copy_remote_code(scratch)
        base_model, described = describe_source(source)
        note = ""
        if tokenizer_source is not None:
            note = f" Tokenizer from {describe_source(tokenizer_source)[1]}."
        write_model_card(scratch, base_model, described, dtype, config, note)
    if push_to_hub:
        try:
            upload_folder(output, push_to_hub, private=private)
        except Exception as error:  # offline, no token, no permission, network: the folder is written all the same
            lines = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
            raise CheckpointError(
                f"The converted folder was written at {output}, but the upload to {push_to_hub} failed ({reason}); "
                f"upload it later with `hf upload {push_to_hub} {output}`"
            ) from error
    return output


def is_converted_folder(path: Path) -> bool:
    """Whether `path` looks like a folder this package wrote in transformers layout (`hovle convert`, `hovle
    train`): its config.json names a HoVLE model. The marker `--overwrite` needs before it replaces a folder."""
    return config_json_matches(path, lambda settings: settings.get("model_type") == HoVLEConfig.model_type)


def planned_bytes(plan: list[tuple[str, tuple[int, ...], torch.dtype]], source: Path) -> int:
    """The bytes a writing plan will take: its tensors, plus the source's small files (config, tokenizer) that
    travel with them, as a margin."""
    small = sum(f.stat().st_size for f in source.iterdir() if f.is_file() and f.suffix not in (".safetensors", ".bin"))
    return output_bytes(((shape, dtype.itemsize) for _, shape, dtype in plan), margin=small)


def upload_folder(folder: Path, repo_id: str, private: bool = False) -> None:
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set, so nothing can be uploaded")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload HoVLE (transformers format)")


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """While a command runs: the package's warnings (no tokenizer, config defaults, allowed non-finite weights) as
    `[hovle] warning: ...` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("[hovle] warning: %(message)s"))
    package_logger = logging.getLogger("hovle")
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)


def run(args: argparse.Namespace) -> Path:
    if args.private and not args.push_to_hub:
        raise CheckpointError("--private applies to the Hub repo of --push-to-hub, which was not given")
    with warnings_to_stderr(), interruptions_raise():
        return convert(
            args.input,
            args.output,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
            tokenizer_source=args.tokenizer,
            allow_nonfinite=args.allow_nonfinite,
        )
