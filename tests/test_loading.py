"""The installed package loads a converted folder with its own classes: the folder's copy of the code is not run."""

import re
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hovle.loading import LoadError, load_model_and_processor, register_auto_classes
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.processing_hovle import HoVLEProcessor


def folder_code_modules() -> list[str]:
    return [name for name in sys.modules if name.startswith("transformers_modules") and "hovle" in name]


def test_installed_package_loads_a_converted_folder_without_its_code(tiny_hub_folder):
    before = folder_code_modules()
    model, processor = load_model_and_processor(tiny_hub_folder)
    assert type(model) is HoVLEForConditionalGeneration and type(processor) is HoVLEProcessor
    # After registration, transformers' Auto classes take the package's classes too, with no trust_remote_code.
    register_auto_classes()
    auto_model = AutoModelForImageTextToText.from_pretrained(tiny_hub_folder)
    auto_processor = AutoProcessor.from_pretrained(tiny_hub_folder)
    assert type(auto_model) is HoVLEForConditionalGeneration and type(auto_processor) is HoVLEProcessor
    assert folder_code_modules() == before, "the folder's own modeling code was imported"
    inputs = processor(text="Hello", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(auto_model(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_trust_remote_code_runs_the_folders_code(tiny_hub_folder):
    model, _ = load_model_and_processor(tiny_hub_folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")


def test_a_resized_vocabulary_saves_reloads_and_exports(tmp_path):
    """`resize_token_embeddings` keeps both stacks' tables and configs in step (added tokens for fine-tuning)."""
    from helpers import build_model

    from hovle.conversion.to_original import export

    model = build_model("pre", "sdpa")
    model.resize_token_embeddings(1032)
    assert model.config.embedding_config.vocab_size == model.config.text_config.vocab_size == 1032
    assert model.model.language_model.embed_tokens.num_embeddings == model.lm_head.out_features == 1032
    model.save_pretrained(tmp_path / "resized")
    reloaded = HoVLEForConditionalGeneration.from_pretrained(tmp_path / "resized")
    ids = torch.tensor([[1, 5, 1031]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    export(tmp_path / "resized", tmp_path / "original", progress=False)
    assert (tmp_path / "original" / "model.safetensors").exists()


# -- a folder whose config.json does not match its weights ----------------------------------------------------------
def edited_copy(folder, tmp_path, change):
    """A copy of the converted `folder` whose config.json `change(config)` edited."""
    import json
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def layer_tensors(prefix: str) -> int:
    """Tensors of one decoder layer of the stack `prefix` in the tiny model."""
    from hovle.testing import tiny_config

    names = HoVLEForConditionalGeneration(tiny_config()).state_dict()
    return sum(name.startswith(f"{prefix}.layers.0.") for name in names)


@pytest.mark.parametrize(
    "stack, section, extra_layers",
    [("model.language_model", "text_config", 2), ("model.embedding_model", "embedding_config", 1)],
)
def test_a_config_claiming_more_layers_than_the_weights_is_refused(
    tiny_hub_folder, tmp_path, stack, section, extra_layers
):
    import json

    layers = json.loads((tiny_hub_folder / "config.json").read_text())[section]["num_hidden_layers"]
    folder = edited_copy(
        tiny_hub_folder, tmp_path, lambda c: c[section].update(num_hidden_layers=layers + extra_layers)
    )
    added = list(range(layers, layers + extra_layers))
    names = f"{stack}.layers.{{{', '.join(map(str, added))}}}" if extra_layers > 1 else f"{stack}.layers.{added[0]}"
    count = extra_layers * layer_tensors(stack)
    message = (
        rf"the weights do not match its config.json.*missing from the weights: {re.escape(names)} \({count} tensors\)"
    )
    with pytest.raises(ValueError, match=message):
        HoVLEForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):  # the command line's path
        load_model_and_processor(folder)
    with pytest.raises(ValueError, match=message):  # the folder's own copy of the code (trust_remote_code)
        load_model_and_processor(folder, trust_remote_code=True)
    # As in transformers, a caller asking for the loading report gets it and judges for itself.
    _, info = HoVLEForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert len(info["missing_keys"]) == count


def test_a_config_claiming_fewer_layers_than_the_weights_is_refused(tiny_hub_folder, tmp_path):
    import json

    layers = json.loads((tiny_hub_folder / "config.json").read_text())["text_config"]["num_hidden_layers"]
    folder = edited_copy(tiny_hub_folder, tmp_path, lambda c: c["text_config"].update(num_hidden_layers=layers - 1))
    left_over = f"model.language_model.layers.{layers - 1} ({layer_tensors('model.language_model')} tensors)"
    with pytest.raises(ValueError, match=rf"in the weights but not in the config's model: {re.escape(left_over)}"):
        HoVLEForConditionalGeneration.from_pretrained(folder)


def test_a_config_with_another_vocabulary_size_is_refused_naming_the_tensors(tiny_hub_folder, tmp_path):
    import json

    config = json.loads((tiny_hub_folder / "config.json").read_text())
    vocab, hidden = config["text_config"]["vocab_size"], config["text_config"]["hidden_size"]

    def double_vocabulary(c):
        c["text_config"]["vocab_size"] = c["embedding_config"]["vocab_size"] = 2 * vocab

    folder = edited_copy(tiny_hub_folder, tmp_path, double_vocabulary)
    shapes = f"[{vocab}, {hidden}] (config: [{2 * vocab}, {hidden}])"
    # A ValueError (a RuntimeError too, as transformers' own) naming each table and both shapes, on one line.
    with pytest.raises(ValueError) as error:
        HoVLEForConditionalGeneration.from_pretrained(folder)
    assert isinstance(error.value, RuntimeError) and "\n" not in str(error.value)
    for name in (
        "lm_head.weight",
        "model.embedding_model.embed_tokens.weight",
        "model.language_model.embed_tokens.weight",
    ):
        assert f"{name} {shapes}" in str(error.value), str(error.value)
    # transformers' opt-in to re-initialise them still works.
    model = HoVLEForConditionalGeneration.from_pretrained(folder, ignore_mismatched_sizes=True)
    assert model.lm_head.out_features == 2 * vocab


# -- a folder that is not a converted HoVLE, or has no processor -----------------------------------------------------
def test_an_empty_folder_is_said_to_be_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"empty is an empty folder, not a HoVLE model"):
        load_model_and_processor(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    with pytest.raises(LoadError, match=r"notes is a folder without config.json, not a HoVLE model"):
        load_model_and_processor(tmp_path / "notes")


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_a_folder_converted_without_a_tokenizer_names_the_cause_and_the_fix(converted_fixture, trust_remote_code):
    message = (
        r"has no tokenizer/processor \(processor_config.json and tokenizer_config.json missing\): it was converted "
        r"without a tokenizer; convert again with `hovle convert --tokenizer DIR`"
    )
    with pytest.raises(LoadError, match=message):
        load_model_and_processor(converted_fixture, trust_remote_code=trust_remote_code)
