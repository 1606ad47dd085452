"""The original release loads as it is: `import hovle` + transformers' Auto classes, the config built through the
converter's mapping and the weights converted while loading (`hovle.release_loading`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_expected
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForImageTextToText

import hovle
from hovle.conversion.to_transformers import convert
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.release_loading import HoVLEReleaseConfig, register_release_loading
from hovle.testing import tiny_config, write_original_checkpoint, write_tiny_tokenizer

RAISING_CODE = "raise RuntimeError('the release code ran')\n"


def load(folder, **kwargs):
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()


@pytest.fixture(scope="module", params=["pre", "post"])
def release_and_converted(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"release-{request.param}")
    release = write_original_checkpoint(folder / "release", tiny_config(request.param), seed=3)
    write_tiny_tokenizer(release)
    return release, convert(release, folder / "converted", dtype="float32", progress=False)


def test_release_folder_loads_with_weights_of_the_converted_folder(release_and_converted):
    release, converted = release_and_converted
    hovle.register_auto_classes()
    direct, reference = load(release), load(converted)
    assert type(direct.config) is HoVLEReleaseConfig and type(reference.config).__name__ == "HoVLEConfig"
    ours, theirs = direct.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []
    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_release_architecture_names_the_release_model_class():
    """The architecture a release config reports (vLLM picks the plugin's model by it) is the class that loads it."""
    from hovle.release_loading import RELEASE_ARCHITECTURE
    from hovle.release_model import HoVLEReleaseForConditionalGeneration

    assert RELEASE_ARCHITECTURE == HoVLEReleaseForConditionalGeneration.__name__


def test_golden_fixture_release_reproduces_original_logits(fixture_dir):
    model = load(fixture_dir / "original")
    cases, expected = load_expected(fixture_dir)
    for case in cases:
        name = case["name"]
        ids = expected[name + ".input_ids"]
        extra = {"pixel_values": expected[name + ".pixel_values"]} if case["tiles"] else {}
        with torch.no_grad():
            logits = model(input_ids=ids, **extra).logits
        assert (logits - expected[name + ".logits"]).abs().max().item() <= 1e-4, name
        greedy = model.generate(input_ids=ids, **extra, max_new_tokens=6, do_sample=False)
        assert greedy[0, ids.shape[1] :].tolist() == expected[name + ".greedy"][0].tolist(), name


def _with_remote_code(folder, code: str, config_class: str = "InternVLChatConfig"):
    (folder / "configuration_internvl_chat.py").write_text(code)
    (folder / "modeling_internvl_chat.py").write_text(RAISING_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": f"configuration_internvl_chat.{config_class}",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    }
    (folder / "config.json").write_text(json.dumps(config))


def test_trust_remote_code_does_not_run_the_release_code(tmp_path, fixture_dir):
    release = write_original_checkpoint(tmp_path / "release", tiny_config("pre"), seed=0)
    _with_remote_code(release, RAISING_CODE)
    model = load(release, trust_remote_code=True)
    assert isinstance(model, HoVLEForConditionalGeneration)
    assert type(AutoConfig.from_pretrained(release, trust_remote_code=True)) is HoVLEReleaseConfig


INTERNVL_CONFIG_CODE = """
from transformers import PretrainedConfig


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**kwargs)
        self.vision_config = vision_config
        self.llm_config = llm_config
"""


def test_internvl_config_is_not_claimed(tmp_path):
    folder = tmp_path / "internvl"
    folder.mkdir()
    config = {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"], "vision_config": {}}
    config["llm_config"] = {"architectures": ["InternLM2ForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))
    _with_remote_code(folder, INTERNVL_CONFIG_CODE)
    loaded = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "InternVLChatConfig" and type(loaded) is not HoVLEReleaseConfig
    assert loaded.vision_config == {}
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoConfig.from_pretrained(folder)


def test_registration_wins_over_a_builtin_conversion_entry(fixture_dir):
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    register_checkpoint_conversion_mapping("internvl_chat", [], overwrite=True)  # a built-in entry landing
    register_release_loading()
    load(fixture_dir / "original")  # missing or unknown keys would raise


IMPORT_ORDERS = {
    "hovle first, then AutoConfig": "import hovle\nfrom transformers import AutoConfig",
    "hovle first, then AutoModelForImageTextToText": "import hovle\nfrom transformers import AutoModelForImageTextToText",
    "hovle first, then pipeline": "import hovle\nfrom transformers import pipeline",
    "transformers first": "from transformers import AutoModel\nimport hovle",
    "the model module": "import hovle.modeling_hovle",
    "the release module": "import hovle.release_loading",
}


@pytest.mark.parametrize("imports", IMPORT_ORDERS.values(), ids=IMPORT_ORDERS)
def test_release_config_is_registered_whatever_the_import_order(imports):
    """`import hovle` registers through a post-import hook on transformers' auto modules (so that importing hovle
    costs no torch); the registration must happen, and not break the import, whichever comes first."""
    code = f"{imports}\nfrom transformers import AutoConfig\nprint(AutoConfig.for_model('internvl_chat').__class__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HoVLEReleaseConfig" in result.stdout


def test_import_hovle_imports_neither_torch_nor_transformers():
    code = "import sys, hovle\nprint(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_save_pretrained_writes_the_release_weight_layout_and_reloads_bit_exact(release_and_converted, tmp_path):
    release, _ = release_and_converted
    model = load(release)
    model.save_pretrained(tmp_path / "saved")
    with (
        safe_open(tmp_path / "saved" / "model.safetensors", "pt") as saved,
        safe_open(release / "model.safetensors", "pt") as original,
    ):
        assert set(saved.keys()) == set(original.keys())  # the release's names, the fused wqkv again
        assert [
            key for key in original.keys() if not torch.equal(saved.get_tensor(key), original.get_tensor(key))
        ] == []
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["model_type"] == "internvl_chat" and "embedding_config" in saved_config
    reloaded = load(tmp_path / "saved")
    assert type(reloaded.config) is HoVLEReleaseConfig
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []


def _rewrite_weights(release, form: str) -> None:
    """The release's weights as several safetensors shards with an index, or as a legacy `pytorch_model.bin`."""
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    state_dict = load_file(release / "model.safetensors")
    (release / "model.safetensors").unlink()
    if form == "sharded":
        save_torch_state_dict(state_dict, release, max_shard_size="20KB")
    else:
        torch.save(state_dict, release / "pytorch_model.bin")


@pytest.mark.parametrize("form", ["sharded", "bin"])
def test_sharded_and_bin_releases_load_with_dtype_and_device_map(release_and_converted, tmp_path, form):
    import shutil

    release, converted = release_and_converted
    copy = Path(shutil.copytree(release, tmp_path / "release"))
    _rewrite_weights(copy, form)
    assert len(list(copy.glob("*.safetensors"))) > 1 if form == "sharded" else (copy / "pytorch_model.bin").exists()
    direct = AutoModelForImageTextToText.from_pretrained(copy, dtype=torch.bfloat16, device_map="cpu")
    reference = AutoModelForImageTextToText.from_pretrained(converted, dtype=torch.bfloat16, trust_remote_code=True)
    assert direct.dtype == torch.bfloat16 and direct.device.type == "cpu"
    ours, theirs = direct.state_dict(), reference.state_dict()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []


def test_registration_wins_over_builtin_internvl_chat_classes(fixture_dir, monkeypatch):
    """If transformers lands native classes for `internvl_chat` (its InternVL port), a HoVLE release still reaches
    HoVLE's classes: simulated with built-in name entries pointing at transformers' InternVL classes."""
    from transformers.models.auto import configuration_auto, modeling_auto

    monkeypatch.setitem(configuration_auto.CONFIG_MAPPING_NAMES, "internvl_chat", "InternVLConfig")
    for names in (modeling_auto.MODEL_MAPPING_NAMES, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES):
        monkeypatch.setitem(names, "internvl_chat", "InternVLForConditionalGeneration")
    register_release_loading()
    assert type(AutoConfig.from_pretrained(fixture_dir / "original")) is HoVLEReleaseConfig
    assert isinstance(load(fixture_dir / "original"), HoVLEForConditionalGeneration)
