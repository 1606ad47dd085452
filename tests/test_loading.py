"""The installed package loads a converted folder with its own classes: the folder's copy of the code is not run."""

import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hovle.loading import load_model_and_processor, register_auto_classes
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
