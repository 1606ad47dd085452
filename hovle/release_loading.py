"""Loading the original release (`OpenGVLab/HoVLE`, model type `internvl_chat`) as it is, with no conversion step.

`register_release_loading()` (run by `import hovle`) teaches transformers' Auto classes two things:

* the config: `internvl_chat` maps to `HoVLEReleaseConfig`, which builds the `HoVLEConfig` through the converter's
  one mapping (`conversion.config_map.hovle_config_from_original`). It claims only HoVLE releases (configs with
  `embedding_config`); an InternVL config (`vision_config`) is handed to its own remote code when the caller passed
  `trust_remote_code=True`, as transformers does without this package, and refused otherwise. A registered class
  is preferred over a folder's `auto_map` even with `trust_remote_code=True`, so the release's own code never runs.
* the weights: a load-time conversion registered for `internvl_chat` with
  `transformers.conversion_mapping.register_checkpoint_conversion_mapping`, generated from the key table in
  `conversion/layout.py` (`WeightRenaming`s for the renames, one `WeightConverter` with `SplitGroupedQKV` for the
  fused, grouped `wqkv` of both stacks). Converted folders (`model_type` `hovle`) are not touched by it.
"""

from __future__ import annotations

from typing import Any

from .configuration_hovle import HoVLEConfig

RELEASE_MODEL_TYPE = "internvl_chat"
# What a release config reports as its `architectures`: the class transformers loads it with
# (`release_model.HoVLEReleaseForConditionalGeneration`). vLLM reads the config through AutoConfig and resolves
# this name to the plugin's model (`hovle.vllm_plugin`) instead of its own `InternVLChatModel`.
RELEASE_ARCHITECTURE = "HoVLEReleaseForConditionalGeneration"


class HoVLEReleaseConfig(HoVLEConfig):
    """`HoVLEConfig` under the release's model type: what `AutoConfig` builds from a release's `config.json`."""

    model_type = RELEASE_MODEL_TYPE

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Every Auto path builds the config first, so the model classes, the weight conversion, the tokenizer and
        # the processor are registered here, once: `import hovle` itself stays light (see `hovle.after_import`).
        _register_release_classes_once()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        if "llm_config" in config_dict and "embedding_config" in config_dict:  # the release's own config.json
            config_dict = _release_dict(config_dict)
        elif "embedding_config" not in config_dict:  # InternVL (or any other internvl_chat): not ours
            return _not_claimed(config_dict, kwargs)
        return super().from_dict(config_dict, **kwargs)


def _release_dict(original: dict[str, Any]) -> dict[str, Any]:
    """The release's config.json as this class's dict, through the converter's mapping."""
    from .conversion.config_map import hovle_config_from_original  # imports the processor: only when needed

    converted = hovle_config_from_original(original).to_dict()
    converted["model_type"] = RELEASE_MODEL_TYPE
    converted["architectures"] = [RELEASE_ARCHITECTURE]
    if original.get("torch_dtype") is not None:
        converted["dtype"] = original["torch_dtype"]
    return converted


def _not_claimed(config_dict: dict[str, Any], kwargs: dict[str, Any]):
    """An `internvl_chat` config that is not a HoVLE release: what `AutoConfig` does without this package, i.e. the
    folder's own config class when the caller trusts its code (`AutoConfig.from_pretrained` does not pass
    `trust_remote_code` on to `from_dict`, so it is read from that call, `running_call_locals`), an error
    otherwise."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from .release_processing import running_call_locals

    call = running_call_locals(AutoConfig.from_pretrained)
    class_ref = (config_dict.get("auto_map") or {}).get("AutoConfig")
    name = call.get("pretrained_model_name_or_path", kwargs.get("name_or_path"))
    if class_ref is None or call.get("trust_remote_code") is not True:
        raise ValueError(
            f"{name} holds an {RELEASE_MODEL_TYPE!r} config without 'embedding_config' (InternVL, not HoVLE): hovle "
            "does not claim it, and transformers has no class for it; it loads with its own code "
            "(`trust_remote_code=True`)"
        )
    auto_kwargs = dict(call["kwargs"])
    config_class = get_class_from_dynamic_module(
        class_ref, name, code_revision=call.get("code_revision"), **auto_kwargs
    )
    config_class.register_for_auto_class()
    return config_class.from_pretrained(name, **auto_kwargs)


def as_converted_model(model):
    """A release-loaded model as `hovle convert` + `from_pretrained` would give it: its config a `HoVLEConfig`
    (model type `hovle`; the classes differ only in the model type) and its weight conversions a converted folder's,
    so that `save_pretrained` writes a converted folder (our key layout, `model_type: hovle`)."""
    from .modeling_hovle import HoVLEForConditionalGeneration

    model.__class__ = HoVLEForConditionalGeneration  # the release class adds only a load-time step
    model.config.__class__ = HoVLEConfig  # every sub-module shares this one config object
    model.config.model_type = HoVLEConfig.model_type  # `from_dict` keeps the dict's model type on the instance too
    model.config.architectures = [HoVLEForConditionalGeneration.__name__]
    model._weight_conversions = []  # a converted folder's keys are the model's own: nothing to revert on saving
    return model


_registered = False


def register_release_config() -> None:
    """`internvl_chat` -> `HoVLEReleaseConfig` in `AutoConfig` (run when transformers' auto-config module is
    imported, see `hovle/__init__.py`); the rest is registered when a release config is first built."""
    from transformers import AutoConfig

    AutoConfig.register(RELEASE_MODEL_TYPE, HoVLEReleaseConfig, exist_ok=True)


def _register_release_classes_once() -> None:
    global _registered
    if not _registered:
        _registered = True
        register_release_loading()


def register_release_loading() -> None:
    """Make transformers' Auto classes load HoVLE releases as they are: the config, the model classes, the load-time
    weight conversion (which overrides an entry transformers may have for `internvl_chat`), the tokenizer and the
    processor. Idempotent; run again after another registration for `internvl_chat` to take it back."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    from .release_model import HoVLEReleaseForConditionalGeneration
    from .release_processing import register_release_processing
    from .release_weights import release_weight_conversions

    register_release_config()
    HoVLEReleaseForConditionalGeneration.config_class = HoVLEReleaseConfig
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        auto_class.register(HoVLEReleaseConfig, HoVLEReleaseForConditionalGeneration, exist_ok=True)
    register_checkpoint_conversion_mapping(RELEASE_MODEL_TYPE, release_weight_conversions(), overwrite=True)
    register_release_processing(HoVLEReleaseConfig)


# Importing this module (which imports transformers' auto config through `configuration_hovle`) registers the config.
register_release_config()
