"""How vLLM finds HoVLE in a release folder as it is: vLLM reads config.json through transformers' AutoConfig, where
`hovle` builds a HoVLE release's config (`internvl_chat` with `embedding_config`) and reports the architecture the
plugin registers. The name in the release's config.json, `InternVLChatModel`, stays vLLM's own InternVL: an
`internvl_chat` config without `embedding_config` (InternVL's) reaches vLLM as it does without `hovle`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# An InternVL release's config class, as its folder ships it (remote code): the config as it is, nothing HoVLE's.
INTERNVL_CONFIG_CODE = """
from transformers import PretrainedConfig


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**kwargs)
        self.vision_config = vision_config or {}
        self.llm_config = llm_config or {}
"""


def engine_model_config(folder: Path):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(folder), dtype="float32").create_engine_config().model_config


def registered_module(architecture: str) -> str:
    from vllm import ModelRegistry

    return ModelRegistry.models[architecture].module_name


@pytest.fixture(scope="module")
def internvl_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("internvl")
    (folder / "configuration_internvl_chat.py").write_text(INTERNVL_CONFIG_CODE)
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"},
        "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": 64},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 64},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_release_resolves_to_the_plugins_model(served_folders):
    from hovle.release_loading import RELEASE_ARCHITECTURE
    from hovle.release_model import HoVLEReleaseForConditionalGeneration

    release = served_folders["release"]
    assert json.loads((release / "config.json").read_text())["architectures"] == ["InternVLChatModel"]
    model_config = engine_model_config(release)
    # The name a release config reports is the transformers class that loads it, and the plugin serves it.
    assert model_config.architectures == [RELEASE_ARCHITECTURE] == [HoVLEReleaseForConditionalGeneration.__name__]
    assert model_config.architecture == RELEASE_ARCHITECTURE
    assert registered_module(RELEASE_ARCHITECTURE) == "hovle.vllm_plugin.model"
    assert model_config.hf_config.embedding_config.pixel_shuffle_loc == "pre"


def test_internvl_config_stays_vllms(internvl_folder):
    from vllm.plugins import load_general_plugins
    from vllm.transformers_utils.config import get_config

    load_general_plugins()  # the plugin's registrations, as in every process vLLM starts
    config = get_config(str(internvl_folder), trust_remote_code=True)
    assert type(config).__name__ == "InternVLChatConfig"  # the folder's own class, not HoVLE's
    assert type(config).__module__.endswith("configuration_internvl_chat")
    assert config.architectures == ["InternVLChatModel"]
    assert config.vision_config == {"architectures": ["InternVisionModel"], "hidden_size": 64}
    assert registered_module("InternVLChatModel") == "vllm.model_executor.models.internvl"


def test_internvl_config_without_trusted_code_is_not_claimed(internvl_folder):
    from vllm.plugins import load_general_plugins
    from vllm.transformers_utils.config import get_config

    load_general_plugins()
    with pytest.raises(ValueError, match="embedding_config"):
        get_config(str(internvl_folder), trust_remote_code=False)


def test_hf_overrides_name_the_plugins_model_too(served_folders):
    """The documented explicit way (`--hf-overrides '{"architectures": ["HoVLEForConditionalGeneration"]}'`)."""
    from vllm.engine.arg_utils import EngineArgs

    from hovle.vllm_plugin import ARCHITECTURE

    overrides = {"architectures": [ARCHITECTURE]}
    args = EngineArgs(model=str(served_folders["release"]), dtype="float32", hf_overrides=overrides)
    model_config = args.create_engine_config().model_config
    assert model_config.architecture == ARCHITECTURE
    assert registered_module(ARCHITECTURE) == "hovle.vllm_plugin.model"
    assert model_config.max_model_len == model_config.hf_config.text_config.max_position_embeddings  # the config check
