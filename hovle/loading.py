"""Loading a converted HoVLE folder, an original release or a Hub id of either, for the command line and the trainer.

By default the classes of this installed package load it: the folder's own copy of the model code is not executed
(transformers would need `trust_remote_code=True` for that). `trust_remote_code=True` loads through transformers'
Auto classes with the folder's code instead, as transformers does it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import HoVLEUserError


def register_auto_classes() -> None:
    """Make transformers' Auto classes know HoVLE locally (idempotent): a converted folder then loads with this
    package's classes, without `trust_remote_code`, and transformers asks nothing about the folder's code."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .configuration_hovle import HoVLEConfig, HoVLEEmbeddingConfig
    from .modeling_hovle import HoVLEForConditionalGeneration
    from .processing_hovle import HoVLEProcessor

    if HoVLEConfig.model_type in CONFIG_MAPPING:
        return
    AutoConfig.register(HoVLEConfig.model_type, HoVLEConfig)
    AutoConfig.register(HoVLEEmbeddingConfig.model_type, HoVLEEmbeddingConfig)
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        auto_class.register(HoVLEConfig, HoVLEForConditionalGeneration)
    AutoProcessor.register(HoVLEConfig, HoVLEProcessor)


class LoadError(HoVLEUserError):
    """A model path or Hub id that cannot be loaded, said in one line."""


def _folder_class(name: str, file_name: str, auto_class: str):
    """The class `file_name`'s `auto_map` names for `auto_class`, imported from the folder's (or Hub repo's) code."""
    import json

    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.utils import cached_file

    settings = json.loads(Path(cached_file(name, file_name)).read_text())
    reference = (settings.get("auto_map") or {}).get(auto_class)
    if reference is None:
        raise LoadError(f"{name}/{file_name} names no {auto_class} in its auto_map: there is no code of its own to run")
    return get_class_from_dynamic_module(reference, name)


def check_folder_has_config(folder: Path) -> None:
    """A `LoadError` for a local folder with no config.json (transformers' own message names another file)."""
    if not (folder / "config.json").is_file():
        what = "an empty folder" if not any(folder.iterdir()) else "a folder without config.json"
        raise LoadError(f"{folder} is {what}, not a HoVLE model (a converted folder or an original release)")


# A converted folder's processor: its own settings and the tokenizer's (`hovle convert` writes them all, or none
# when the source had no tokenizer).
PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")


def check_folder_has_processor(folder: Path) -> None:
    """A `LoadError` naming the real cause and the fix when a local folder has no processor: transformers would
    report the first file it tried under another name (`preprocessor_config.json`, or that the Hub is offline)."""
    missing = [file for file in PROCESSOR_FILES if not (folder / file).is_file()]
    if missing:
        raise LoadError(
            f"{folder} has no tokenizer/processor ({' and '.join(missing)} missing): it was converted without a "
            f"tokenizer; convert again with `hovle convert --tokenizer DIR` (DIR: a folder or Hub repo with the "
            f"release's tokenizer.model and tokenizer_config.json, e.g. OpenGVLab/HoVLE)"
        )


def _load_model(model_class, name: str, model_kwargs: dict):
    """`model_class.from_pretrained`, with weights that do not fit the folder's config.json (the model file's
    `WeightsMismatchError`, from the folder's own copy of that file under `trust_remote_code`) as a `LoadError`:
    the folder is the user's input, the model file cannot import this package's error classes."""
    mismatch = next(
        (
            error
            for base in model_class.__mro__  # a subclass (the release's model class) defined in another module
            if (error := getattr(sys.modules.get(base.__module__), "WeightsMismatchError", None)) is not None
        ),
        (),
    )
    try:
        return model_class.from_pretrained(name, **model_kwargs)
    except mismatch as error:
        raise LoadError(str(error)) from error


def is_missing_source(name: str) -> bool:
    """Whether a `--model`-style name is neither an existing path nor shaped like a Hub id (`owner/name`): the one
    rule every command checks a model source by, before anything is downloaded or loaded."""
    return not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1)


def is_hovle_release(config_dict: dict) -> bool:
    """Whether a config.json is an original HoVLE release's (`internvl_chat` with `embedding_config`)."""
    return config_dict.get("model_type") == "internvl_chat" and "embedding_config" in config_dict


# What a release's processor is built from (`hovle.release_processing`); the other tokenizer files are optional.
RELEASE_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")


def _load_release(name: str, model_kwargs: dict):
    """(model, processor) for an original release, loaded as it is (`hovle.release_loading`) and then held as a
    converted folder's model, so that what a command saves (`hovle train`) is a converted folder."""
    from transformers import AutoConfig, AutoProcessor

    missing = [file for file in RELEASE_TOKENIZER_FILES if Path(name).is_dir() and not (Path(name) / file).is_file()]
    if missing:
        raise LoadError(
            f"{name} is a HoVLE release without its tokenizer ({' and '.join(missing)} missing): copy the release's "
            "tokenizer files (tokenizer.model, tokenizer_config.json, added_tokens.json, special_tokens_map.json) "
            "into it"
        )

    from .release_loading import as_converted_model
    from .release_model import HoVLEReleaseForConditionalGeneration

    config = AutoConfig.from_pretrained(name)  # registers the release classes
    model = _load_model(HoVLEReleaseForConditionalGeneration, name, {**model_kwargs, "config": config})
    return as_converted_model(model), AutoProcessor.from_pretrained(name)


def check_model_source(name: str, option: str = "", error: type[HoVLEUserError] | None = None) -> None:
    """Refuse a model source by `is_missing_source`, in one wording for every command: `option` (e.g. "--teacher")
    is named before it, `error` is the command's user-error type (default `LoadError`)."""
    if is_missing_source(name):
        prefix = f"{option} " if option else ""
        raise (error or LoadError)(f"{prefix}{name}: no such folder (and not a Hub id of the form owner/name)")


def load_model_and_processor(path: str | os.PathLike, trust_remote_code: bool = False, **model_kwargs):
    """(model, processor) for a converted HoVLE folder, an original HoVLE release (loaded as it is) or a Hub id of
    either; `model_kwargs` go to `from_pretrained`."""
    from huggingface_hub.errors import HFValidationError

    from .configuration_hovle import HoVLEConfig
    from .modeling_hovle import HoVLEForConditionalGeneration
    from .processing_hovle import HoVLEProcessor

    name = str(path)
    check_model_source(name)
    local = Path(name) if Path(name).is_dir() else None
    if local:
        check_folder_has_config(local)
    try:
        if trust_remote_code:
            if is_hovle_release(HoVLEConfig.get_config_dict(name)[0]):
                raise LoadError(
                    f"{name} is an original HoVLE release: its own code runs only on transformers 4.37-4.44; drop "
                    "--trust-remote-code to load it with this package, or convert it (`hovle convert`)"
                )
            if local:
                check_folder_has_processor(local)
            # The classes the folder's `auto_map` names, from its own files: transformers' Auto classes would prefer
            # this package's classes once they are registered, even with trust_remote_code=True.
            model_class = _folder_class(name, "config.json", "AutoModelForImageTextToText")
            processor_class = _folder_class(name, "processor_config.json", "AutoProcessor")
            return _load_model(model_class, name, model_kwargs), processor_class.from_pretrained(name)
        register_auto_classes()
        config_dict = HoVLEConfig.get_config_dict(name)[0]
        if is_hovle_release(config_dict):
            return _load_release(name, model_kwargs)
        model_type = config_dict.get("model_type")
        if model_type != HoVLEConfig.model_type:
            raise LoadError(f"{name} holds a {model_type!r} model, not a HoVLE model (converted, or a HoVLE release)")
        if local:
            check_folder_has_processor(local)
        processor = HoVLEProcessor.from_pretrained(name)
        model = _load_model(HoVLEForConditionalGeneration, name, model_kwargs)
    except (OSError, HFValidationError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        raise LoadError(f"Cannot load {name}{offline}: {first_line}") from error
    return model, processor
