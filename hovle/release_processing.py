"""The release's tokenizer and processor at load time: `AutoTokenizer` / `AutoProcessor` on an original HoVLE release
(`tokenizer.model` + `tokenizer_config.json` naming `InternLM2Tokenizer` with an `auto_map`, no processor files) give
what `hovle convert` writes, with none of the release's code run.

* The tokenizer is built from the release's files by the converter (`conversion.tokenizer.tokenizer_for_model`: the
  same ids, the same checks, the image token ids against the model config), given the chat template by
  `build_processor` and saved as the converter saves it; it is then loaded from those files, as from a converted
  folder. Building it from InternLM2's real `tokenizer.model` takes about a second, so the saved files are kept in a
  cache (`tokenizer_cache_root()`), one entry per sha256 of the source files and of the config values the build reads,
  written atomically and checked against its own manifest of hashes on every use (a damaged entry is rebuilt).
* The processor is `HoVLEProcessor.from_model_config` of that tokenizer and the release's config (tiling from its
  `max_dynamic_patch`, `use_thumbnail`, `force_image_size`), as `build_processor` makes it for a converted folder.

How `AutoTokenizer` is made to pick it (transformers 5.17 .. 5.25, `models/auto/tokenization_auto.py`): for a
`tokenizer_config.json` with an `auto_map`, the folder's code runs when `trust_remote_code=True` unless the named
`tokenizer_class` resolves to a class outside transformers AND the config's type has no `TOKENIZER_MAPPING` entry
("explicit local code"). So `HoVLEReleaseTokenizer` is registered under the release's class name
(`InternLM2Tokenizer`) and deliberately NOT in `TOKENIZER_MAPPING` (an entry there would hand the release's code the
load whenever `trust_remote_code=True`). Other folders naming `InternLM2Tokenizer` (InternLM2, InternVL releases) are
handed to their own code as transformers does without this package. `AutoProcessor` takes the registered
`PROCESSOR_MAPPING` entry of the release's config class (the release ships no processor files and no `AutoProcessor`
in any `auto_map`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from .conversion.checkpoint_io import CheckpointError
from .conversion.config_map import chat_generation_config
from .conversion.tokenizer import TOKENIZER_FILES, tokenizer_for_model
from .errors import HoVLEUserError
from .processing_hovle import END_OF_TURN, HoVLEProcessor, build_processor

RELEASE_TOKENIZER_CLASS = "InternLM2Tokenizer"
# Bumped when what an entry holds changes; with the package's and `tokenizers`' versions, part of every key.
CACHE_FORMAT = 2  # 2: the entry holds the chat generation config too
MANIFEST = "hovle-manifest.json"
# `from_pretrained` keyword arguments that say where the release's files are (the rest go to the tokenizer).
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
# The config classes of releases (`register_release_processing`); others' tokenizers are not built here.
_RELEASE_CONFIG_CLASSES: list[type] = []


def tokenizer_cache_root() -> Path:
    """Where built release tokenizers are kept: `$HF_HOME/hovle/release-tokenizers` (huggingface_hub's home, read at
    call time so that `HF_HOME` set after import counts)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hovle" / "release-tokenizers"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(folder: Path, config) -> str:
    """sha256 of the release's tokenizer files and of the config values `tokenizer_for_model` reads (vocabulary size,
    context length, image token ids), with the cache format and the versions that write the files."""
    import tokenizers

    from . import __version__

    text = config.text_config
    parts: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "versions": [__version__, tokenizers.__version__],
        "files": {name: _sha256(folder / name) if (folder / name).is_file() else None for name in TOKENIZER_FILES},
        "config": [
            text.vocab_size,
            text.max_position_embeddings,
            config.image_token_id,
            config.image_start_token_id,
            config.image_end_token_id,
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entry_is_whole(entry: Path) -> bool:
    """Whether a cache entry holds every file its manifest lists, each with the hash written there."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        return bool(manifest) and all(_sha256(entry / name) == digest for name, digest in manifest.items())
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _write_entry(tokenizer: PreTrainedTokenizerFast, config, folder: Path) -> None:
    """The converter's tokenizer files (chat template included), the generation config it writes (replies end at the
    tokenizer's `<|im_end|>`) and their manifest, into `folder`."""
    build_processor(tokenizer, config).tokenizer.save_pretrained(folder)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    chat_generation_config(config.text_config, end_of_turn).save_pretrained(folder)
    manifest = {path.name: _sha256(path) for path in sorted(folder.iterdir()) if path.is_file()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _build(folder: Path, config) -> PreTrainedTokenizerFast:
    tokenizer = tokenizer_for_model(folder, config)
    if tokenizer is None:
        raise CheckpointError(
            f"{folder} has tokenizer_config.json but no tokenizer.model: the release's tokenizer cannot be built"
        )
    return tokenizer


def release_tokenizer_files(folder: Path, config) -> Path:
    """A folder with the converter's tokenizer files for the release's tokenizer files in `folder`: the cache entry
    (built first when absent or damaged), or a temporary folder when the cache cannot be written."""
    root = tokenizer_cache_root()
    entry = root / cache_key(folder, config)
    if _entry_is_whole(entry):
        return entry
    tokenizer = _build(folder, config)  # the converter's errors, before anything is written
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    except OSError:  # a read-only home: built on every load, as without a cache
        scratch = Path(tempfile.mkdtemp(prefix="hovle-release-tokenizer-"))
        _write_entry(tokenizer, config, scratch)
        return scratch
    try:
        _write_entry(tokenizer, config, scratch)
        if entry.exists():  # damaged: replaced
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(scratch, entry)  # atomic: readers see no entry or a whole one
    except OSError:
        if _entry_is_whole(entry):  # another process wrote it first
            shutil.rmtree(scratch, ignore_errors=True)
            return entry
        return scratch
    return entry


def _source_folder(name: str | os.PathLike, hub_kwargs: dict[str, Any]) -> Path:
    """The folder holding the release's tokenizer files (a local folder, or the Hub snapshot they are fetched into)."""
    from transformers.utils import cached_file

    # tokenizer_config.json is required (a missing one is transformers' error naming it); the others are optional
    # as in the converter, which reports a missing tokenizer.model itself.
    found = {
        file: cached_file(
            name,
            file,
            _raise_exceptions_for_missing_entries=file == "tokenizer_config.json",
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        for file in TOKENIZER_FILES
    }
    return Path(found["tokenizer_config.json"]).parent


def load_release_tokenizer(name: str | os.PathLike, config, **kwargs) -> PreTrainedTokenizerFast:
    """The fast tokenizer `hovle convert` would write for the release `name` (a folder or Hub id) with model config
    `config`, loaded from its files as from a converted folder; `kwargs`: `from_pretrained`'s."""
    hub_kwargs = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
    for internal in ("_commit_hash", "trust_remote_code", "code_revision"):
        kwargs.pop(internal, None)
    files = release_tokenizer_files(_source_folder(name, hub_kwargs), config)
    try:
        return PreTrainedTokenizerFast.from_pretrained(files, **kwargs)
    finally:
        if files.parent != tokenizer_cache_root():
            shutil.rmtree(files, ignore_errors=True)


def release_generation_config_folder(name: str | os.PathLike, config, **hub_kwargs) -> Path | None:
    """For a release `name` (folder or Hub id) without a `generation_config.json`: a folder holding the one `hovle
    convert` would write (the release tokenizer's cache entry), for engines that read stop tokens only from such a
    file (vLLM's `generation_config` option). None when the release has its own."""
    from transformers.utils import cached_file

    own = cached_file(
        name,
        "generation_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if own is not None:
        return None
    return release_tokenizer_files(_source_folder(name, hub_kwargs), config)


def _is_release(config) -> bool:
    return isinstance(config, tuple(_RELEASE_CONFIG_CLASSES))


def running_call_locals(method) -> dict[str, Any]:
    """The locals of the running call of `method` (a transformers Auto class's `from_pretrained`) further up the
    stack, or {} when there is none. transformers keeps `trust_remote_code` (and `AutoTokenizer` the loaded config)
    to itself; a release class called from there reads them here, to decide as transformers would without this
    package. Used by `HoVLEReleaseTokenizer` and `release_loading.HoVLEReleaseConfig`; tested on 5.17 and 5.2x."""
    code = method.__func__.__code__
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return dict(frame.f_locals) if frame is not None else {}


def _with_own_code(name, inputs, kwargs: dict[str, Any], call: dict[str, Any]):
    """A folder naming `InternLM2Tokenizer` that is not a HoVLE release: its own tokenizer code, under the rule
    transformers applies without this package (`trust_remote_code=True`, or asked / refused by
    `resolve_trust_remote_code`)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module, resolve_trust_remote_code
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    auto_map = get_tokenizer_config(name, **kwargs).get("auto_map")
    if isinstance(auto_map, dict):
        auto_map = auto_map.get("AutoTokenizer")
    if not auto_map:
        raise ValueError(f"{name}: {RELEASE_TOKENIZER_CLASS} is not a transformers class and the folder has no code")
    class_ref = auto_map[1] or auto_map[0]
    upstream = class_ref.split("--")[0] if "--" in class_ref else None
    if not resolve_trust_remote_code(call.get("trust_remote_code"), name, False, True, upstream_repo=upstream):
        raise ValueError(f"{name}: its {RELEASE_TOKENIZER_CLASS} is its own code, and trust_remote_code is not set")
    code_revision = call.get("code_revision", kwargs.pop("code_revision", None))
    tokenizer_class = get_class_from_dynamic_module(class_ref, name, code_revision=code_revision, **kwargs)
    tokenizer_class.register_for_auto_class()
    return tokenizer_class.from_pretrained(name, *inputs, trust_remote_code=True, **kwargs)


class HoVLEReleaseTokenizer(PreTrainedTokenizerFast):
    """What `AutoTokenizer` finds under the release's `tokenizer_class` (`InternLM2Tokenizer`); never instantiated:
    `from_pretrained` returns the converter's fast tokenizer (`load_release_tokenizer`) for a HoVLE release, and the
    folder's own tokenizer (its code, under transformers' `trust_remote_code` rule) for anything else."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        from transformers import AutoConfig, AutoTokenizer

        call = running_call_locals(AutoTokenizer.from_pretrained)
        config = kwargs.pop("config", None) or call.get("config")
        if not _is_release(config):
            # AutoTokenizer swallows the config's errors (it then falls back to a bare `PreTrainedConfig`): a HoVLE
            # release's own config error is the one to show, anything else is not a release.
            hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
            try:
                config = AutoConfig.from_pretrained(
                    pretrained_model_name_or_path, trust_remote_code=call.get("trust_remote_code"), **hub_kwargs
                )
            except HoVLEUserError:
                raise
            except (OSError, ValueError):  # no config, or one that no class of this package claims
                config = None
        if not _is_release(config):
            return _with_own_code(pretrained_model_name_or_path, inputs, kwargs, call)
        return load_release_tokenizer(pretrained_model_name_or_path, config, **kwargs)


class HoVLEReleaseProcessor(HoVLEProcessor):
    """`AutoProcessor`'s class for a release's config; never instantiated: `from_pretrained` returns the
    `HoVLEProcessor` a converted folder holds (`build_processor`), built from the release's files."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> HoVLEProcessor:
        from transformers import AutoConfig

        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        config = kwargs.pop("config", None)
        if not _is_release(config):
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        tokenizer = load_release_tokenizer(pretrained_model_name_or_path, config, **hub_kwargs)
        return build_processor(tokenizer, config)


def register_release_processing(config_class: type) -> None:
    """Make `AutoTokenizer` and `AutoProcessor` load a release whose config is a `config_class` with this module's
    classes (idempotent); see the module docstring for why the tokenizer goes by name, not by config class."""
    from transformers import AutoProcessor
    from transformers.models.auto import tokenization_auto

    if config_class not in _RELEASE_CONFIG_CLASSES:
        _RELEASE_CONFIG_CLASSES.append(config_class)
    # `AutoTokenizer.register` would also map `config_class` in TOKENIZER_MAPPING, which lets the release's own
    # code win under trust_remote_code=True: only the name lookup (`tokenizer_class_from_name`) is registered.
    tokenization_auto.REGISTERED_TOKENIZER_CLASSES[RELEASE_TOKENIZER_CLASS] = HoVLEReleaseTokenizer
    AutoProcessor.register(config_class, HoVLEReleaseProcessor, exist_ok=True)
