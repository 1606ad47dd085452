"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against HoVLE, for both layouts.

The tests come from the sdist of the installed transformers version; fetch them first with
`scripts/fetch_transformers_tests.sh [VENV_DIR]` (into `.transformers-tests/<version>`, or point the environment
variable `HOVLE_TRANSFORMERS_TESTS` at a folder holding that sdist's `tests/*.py`). Without them this module skips.

The tester mirrors transformers' per-model testers for VLMs (`tests/models/llava/test_modeling_llava.py`): a tiny
config, and rows of `BOS text <img> <IMG_CONTEXT>*4 </img> text` with one 56 px tile each. Every override below
names the design fact that makes the common test inapplicable.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from hovle.configuration_hovle import HoVLEConfig
from hovle.modeling_hovle import HoVLEForConditionalGeneration, HoVLEModel
from hovle.testing import tiny_config

REPO = Path(__file__).resolve().parent.parent
TRANSFORMERS_TESTS = Path(
    os.environ.get("HOVLE_TRANSFORMERS_TESTS", REPO / ".transformers-tests" / transformers.__version__)
)
if not (TRANSFORMERS_TESTS / "test_modeling_common.py").is_file():
    pytest.skip(
        f"transformers {transformers.__version__}'s common tests are not in {TRANSFORMERS_TESTS}: fetch them with "
        f"`scripts/fetch_transformers_tests.sh {Path(sys.prefix).name}` (or set HOVLE_TRANSFORMERS_TESTS)",
        allow_module_level=True,
    )
parameterized = pytest.importorskip(
    "parameterized", reason="transformers' common tests need `parameterized` (pip install it)"
).parameterized

# The sdist's tests/ folder is not a package, and three of the modules its common files import (`.generation`,
# `.exporters`, `.utils`) are not in the sdist. Lay it out as a package `transformers_tests` in a temporary folder:
# links to the extracted files, an `__init__.py` (also read by `direct_transformers_import`), and stand-ins for the
# three missing modules. This repo's own `tests/` is no package, so nothing here shadows it.
_STANDINS = {
    # Export tests (torch.export, ONNX, ...) are not shipped: the mixin contributes no test here.
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # Generation tests are not shipped: HoVLE's generation is covered by this repo's own tests.
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # Only `ConfigTester.check_config_arguments_init` reads it, and it returns early for composite configs.
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def _import_transformers_tests(source: Path):
    root = Path(tempfile.mkdtemp(prefix="hovle-transformers-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    package = root / "transformers_tests"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path in source.glob("*.py"):
        (package / path.name).symlink_to(path.resolve())
    for name, text in _STANDINS.items():
        (package / name).parent.mkdir(exist_ok=True)
        (package / name).parent.joinpath("__init__.py").write_text("")
        (package / name).write_text(text)
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():  # transformers' own pytest marks (flash_attn_test, ...) are not registered here
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        from transformers_tests import test_configuration_common, test_modeling_common

    return test_modeling_common, test_configuration_common


_modeling_common, _configuration_common = _import_transformers_tests(TRANSFORMERS_TESTS)
ModelTesterMixin = _modeling_common.ModelTesterMixin
SDPA_PARAMETERIZATION = _modeling_common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION
ConfigTester = _configuration_common.ConfigTester
floats_tensor = _modeling_common.floats_tensor
ids_tensor = _modeling_common.ids_tensor


# <img>, </img>, <IMG_CONTEXT>: above the ids the common tests draw small random prompts from (below 10).
IMAGE_TOKEN_IDS = (10, 11, 12)


def text_ids_tensor(shape, vocab_size, rng=None, name=None):
    """transformers' `ids_tensor` without <IMG_CONTEXT>: HoVLE rejects a prompt holding image tokens but no
    `pixel_values` (a forgotten image), where other VLMs read them as text; random text prompts must not hold one."""
    ids = ids_tensor(shape, vocab_size, rng, name)
    return ids.masked_fill(ids == IMAGE_TOKEN_IDS[-1], (IMAGE_TOKEN_IDS[-1] + 1) % vocab_size)


# Kept although no forward uses them: the InternViT class token (for a bit-exact export back to the original layout)
# and InternLM2's own token table (training stage I's text teacher; the LLM's inputs come from the embedding module).
UNUSED_PARAMETERS = {
    "model.embedding_model.vision_embeddings.class_embedding",
    "model.language_model.embed_tokens.weight",
}


class HoVLEModelTester:
    """Tiny HoVLE configs and inputs in the shape transformers' common tests expect."""

    def __init__(self, parent, pixel_shuffle_loc: str = "pre", batch_size: int = 3, is_training: bool = True):
        self.parent = parent
        self.pixel_shuffle_loc = pixel_shuffle_loc
        self.batch_size = batch_size
        self.is_training = is_training
        # The common tests want at most 2 layers per stack (`test_num_layers_is_small`); a 512-position context as
        # in their Llama tester (the rope tests run 1.5x the context, where float32 positions lose precision).
        self.text_config = {"num_hidden_layers": 2, "max_position_embeddings": 512}
        self.embedding_config = {"num_hidden_layers": 2}
        config = self.get_config()
        self.num_hidden_layers = config.text_config.num_hidden_layers  # hidden states / attentions are the LLM's
        self.hidden_size = config.text_config.hidden_size
        self.num_attention_heads = config.text_config.num_attention_heads
        self.vocab_size = config.text_config.vocab_size
        self.image_size = config.embedding_config.image_size
        self.patch_size = config.embedding_config.patch_size
        self.num_channels = config.embedding_config.num_channels
        self.tokens_per_tile = config.tokens_per_tile
        self.text_before, self.text_after = 3, 2
        # BOS + text + <img> + <IMG_CONTEXT>*4 + </img> + text
        self.seq_length = 1 + self.text_before + self.tokens_per_tile + 2 + self.text_after
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> HoVLEConfig:
        config = tiny_config(self.pixel_shuffle_loc, text=self.text_config, embedding=self.embedding_config)
        # Image tokens at low ids, as transformers' VLM testers place them: the resize tests shrink the vocabulary
        # and clamp the ids, which must leave the image tokens in place (the tiny release-like ids are 1020-1022).
        config.image_start_token_id, config.image_end_token_id, config.image_token_id = IMAGE_TOKEN_IDS
        return config

    def prepare_config_and_inputs(self):
        config = self.get_config()
        # One tile per row (pixel_values holds tiles, row after row).
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        image_start, image_end = config.image_start_token_id, config.image_end_token_id
        # Text ids 13 .. 99: above BOS/EOS and the image tokens, below any vocabulary the resize tests shrink to.
        before = ids_tensor([self.batch_size, self.text_before], 87) + 13
        after = ids_tensor([self.batch_size, self.text_after], 87) + 13
        column = lambda value, width=1: torch.full((self.batch_size, width), value, dtype=torch.long)  # noqa: E731
        input_ids = torch.cat(
            [
                column(config.bos_token_id),
                before.cpu(),
                column(image_start),
                column(config.image_token_id, self.tokens_per_tile),
                column(image_end),
                after.cpu(),
            ],
            dim=1,
        ).to(pixel_values.device)
        assert input_ids.shape[1] == self.seq_length
        attention_mask = torch.ones_like(input_ids)
        return config, {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


class HoVLECommonTests(ModelTesterMixin):
    """The common tests with HoVLE's overrides; the two `unittest.TestCase` classes below pick the layout."""

    all_model_classes = (HoVLEModel, HoVLEForConditionalGeneration)
    pixel_shuffle_loc = "pre"
    _is_composite = True
    # A prompt's image tokens need their tiles: the tests that build inputs from the main input alone pass these too.
    additional_model_inputs = ["pixel_values"]
    # The tiles' width lives in `embedding_config` (HoVLE has no `vision_config`), where the test does not look.
    skip_test_image_features_output_shape = True
    # Two parameters get no gradient by design (see `UNUSED_PARAMETERS`): `test_every_used_parameter_gets_a_gradient`
    # below makes the gradient-checkpointing tests' every-parameter check with those two left out.
    test_all_params_have_gradient = False
    # Opt in: the test skips models whose files carry no "# Copyright <year>" line of 2023 or later, as HoVLE's.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        # One thread: these models are tiny, and two OpenMP threads on shared cores spin against other processes
        # (measured: the `post` eager/sdpa tests took 70 s with two threads, 10 s with one, on a loaded 2-core box).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)
        self.model_tester = HoVLEModelTester(self, self.pixel_shuffle_loc)
        self.config_tester = ConfigTester(
            self,
            config_class=HoVLEConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "image_start_token_id", "image_end_token_id", "tokens_per_tile"],
        )
        # The common tests tell heads from base models by transformers' built-in class-name tables, which list no
        # out-of-tree model: name HoVLE's two classes there (for this test only) in the roles they have.
        for names, model_class in (
            (modeling_auto.MODEL_MAPPING_NAMES, HoVLEModel),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, HoVLEForConditionalGeneration),
        ):
            patcher = mock.patch.dict(names, {HoVLEConfig.model_type: model_class.__name__})
            patcher.start()
            self.addCleanup(patcher.stop)
        patcher = mock.patch.object(_modeling_common, "ids_tensor", text_ids_tensor)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_config(self):
        self.config_tester.run_common_tests()

    @parameterized.expand(SDPA_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        # pixel_values are tiles, not batch rows: the common test pads a batch to 7 rows with image-free rows but
        # keeps 7 tiles, so the tester builds the 7 rows (one tile each) itself.
        self.model_tester.batch_size = 7
        _modeling_common._test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
        )

    def test_every_used_parameter_gets_a_gradient(self):
        for activation_checkpointing in (False, True):
            with self.subTest(activation_checkpointing=activation_checkpointing):
                config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
                config.use_cache = False
                model = HoVLEForConditionalGeneration(config).train()
                if activation_checkpointing:  # the method's name since transformers 5.2x, and before
                    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
                inputs = self._prepare_for_class(inputs_dict, HoVLEForConditionalGeneration, return_labels=True)
                model(**inputs).loss.backward()
                no_gradient = {name for name, p in model.named_parameters() if p.grad is None}
                self.assertEqual(no_gradient, UNUSED_PARAMETERS)

    def test_resized_vocabulary_survives_save_and_reload(self):
        # Beyond the common resize tests, which stop at a forward pass: a resized model must also save and reload.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = HoVLEForConditionalGeneration(config).eval()
        new_size = config.text_config.vocab_size + 8
        model.resize_token_embeddings(new_size)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            reloaded = HoVLEForConditionalGeneration.from_pretrained(folder).eval()
        self.assertEqual(reloaded.config.text_config.vocab_size, new_size)
        self.assertEqual(reloaded.config.embedding_config.vocab_size, new_size)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**inputs_dict).logits, model(**inputs_dict).logits)

    @unittest.skip("the transformers sdist ships no tests/generation; this repo's own tests cover generate()")
    def test_generation_tester_mixin_inheritance(self):
        pass

    @unittest.skip("HoVLE has no vision encoder: get_image_features is patch embedding + projector, with no layers")
    def test_get_image_features_hidden_states(self):
        pass

    @unittest.skip("HoVLE has no vision encoder: get_image_features is patch embedding + projector, with no layers")
    def test_get_image_features_attentions(self):
        pass


class HoVLEPreModelTest(HoVLECommonTests, unittest.TestCase):
    pixel_shuffle_loc = "pre"


class HoVLEPostModelTest(HoVLECommonTests, unittest.TestCase):
    pixel_shuffle_loc = "post"
