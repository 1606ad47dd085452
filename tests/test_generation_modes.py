"""Every generation mode with tiled images: each beam, each returned sequence and each row of a left-padded batch
sees its own row's tiles; assisted decoding, `inputs_embeds`, `return_dict=False`, `get_image_features` and
`torch.export` work with images."""

import pytest
import torch
from helpers import build_model, image_prompt
from transformers.modeling_outputs import BaseModelOutputWithPooling

TILE_SIDE = 56  # the tiny model's tiles: 4 tokens each


def tiles(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, TILE_SIDE, TILE_SIDE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    model = build_model("pre", "sdpa")
    # No end-of-sequence: every beam runs the full length, so an independent beam search is easy to write.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompt(num_tiles: int) -> torch.Tensor:
    return torch.tensor([image_prompt([5, 6], [num_tiles], [7, 8, 9])])


def reference_beam_search(model, ids: torch.Tensor, pixel_values: torch.Tensor, beams: int, steps: int) -> list[int]:
    """Beam search from plain forwards (no cache, no generate()): keep the `beams` best sums of log-probabilities."""
    hypotheses = [(ids[0].tolist(), 0.0)]
    for _ in range(steps):
        candidates = []
        for sequence, score in hypotheses:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([sequence]), pixel_values=pixel_values).logits[0, -1]
            best = logits.float().log_softmax(-1).topk(beams)
            candidates += [
                (sequence + [t], score + v) for v, t in zip(best.values.tolist(), best.indices.tolist(), strict=True)
            ]
        hypotheses = sorted(candidates, key=lambda candidate: -candidate[1])[:beams]
    return hypotheses[0][0]


@pytest.mark.parametrize("num_tiles", [1, 2, 7])
def test_each_beam_and_each_returned_sequence_sees_its_rows_tiles(model, num_tiles):
    ids, pixel_values = prompt(num_tiles), tiles(num_tiles)
    with torch.no_grad():
        plain = model(input_ids=ids, pixel_values=pixel_values).logits[0, -1]
        beams = model.generate(
            input_ids=ids,
            pixel_values=pixel_values,
            num_beams=3,
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
        sampled = model.generate(
            input_ids=ids,
            pixel_values=pixel_values,
            do_sample=True,
            num_return_sequences=3,
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    for first_step in (beams.logits[0], sampled.logits[0]):
        assert first_step.shape[0] == 3
        for row in first_step:
            torch.testing.assert_close(row, plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_tiles", [1, 2, 7])
def test_beam_search_equals_an_independent_beam_search(model, num_tiles):
    ids, pixel_values = prompt(num_tiles), tiles(num_tiles, seed=1)
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=pixel_values, num_beams=3, max_new_tokens=4, do_sample=False)
    assert out[0].tolist() == reference_beam_search(model, ids, pixel_values, beams=3, steps=4)


def test_left_padded_batch_with_different_tile_counts_under_beams(model):
    rows = [image_prompt([5], [1], [7, 8]), image_prompt([5, 6, 7], [2], [9])]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pixel_values = torch.cat([tiles(1, seed=2), tiles(2, seed=3)])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits[:, -1]
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            num_beams=3,
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    first_step = out.logits[0].reshape(2, 3, -1)  # (rows, beams, vocab)
    for row in range(2):
        for beam in range(3):
            torch.testing.assert_close(first_step[row, beam], plain[row], atol=1e-4, rtol=0)


def test_assisted_decoding_with_images_equals_greedy(model):
    ids, pixel_values = prompt(2), tiles(2, seed=4)
    assistant = build_model("pre", "sdpa", seed=1)  # a different (draft) model: it drafts from the text alone
    assistant.generation_config.eos_token_id = None
    with torch.no_grad():
        greedy = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=8, do_sample=False)
        assisted = model.generate(
            input_ids=ids, pixel_values=pixel_values, max_new_tokens=8, do_sample=False, assistant_model=assistant
        )
    assert torch.equal(assisted, greedy)


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_inputs_embeds_with_images_equal_input_ids(layout):
    model = build_model(layout, "sdpa")
    ids, pixel_values = prompt(2), tiles(2, seed=5)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        from_ids = model(input_ids=ids, pixel_values=pixel_values).logits
        from_embeds = model(inputs_embeds=embeds, pixel_values=pixel_values).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=0)


def test_return_dict_false_gives_the_same_tensors_as_a_tuple(model):
    ids, pixel_values = prompt(1), tiles(1)
    with torch.no_grad():
        as_dict = model(input_ids=ids, pixel_values=pixel_values, use_cache=False)
        as_tuple = model(input_ids=ids, pixel_values=pixel_values, use_cache=False, return_dict=False)
        base_tuple = model.model(input_ids=ids, pixel_values=pixel_values, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits, atol=0, rtol=0)
    assert base_tuple[0].shape == (*ids.shape, model.config.text_config.hidden_size)


def test_get_image_features_follows_the_model_output_contract(model):
    pixel_values = tiles(3)
    with torch.no_grad():
        features = model.get_image_features(pixel_values)
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(features, BaseModelOutputWithPooling)
    embedding = model.config.embedding_config
    assert features.pooler_output.shape == (3, model.config.tokens_per_tile, embedding.hidden_size)
    assert features.last_hidden_state.shape == (3, embedding.patches_per_side**2, embedding.hidden_size)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], features.pooler_output)
    # The image tokens are what the prompt's <IMG_CONTEXT> positions receive: the model's own forward uses them.
    assert torch.equal(features.pooler_output, model.model.get_image_features(pixel_values).pooler_output)


def test_torch_export_of_an_image_prompt(model):
    ids, pixel_values = prompt(2), tiles(2, seed=6)
    exported = torch.export.export(
        model, args=(), kwargs={"input_ids": ids, "pixel_values": pixel_values, "use_cache": False}, strict=False
    )
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits
    got = exported.module()(input_ids=ids, pixel_values=pixel_values, use_cache=False)
    got = got.logits if hasattr(got, "logits") else got[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_past_key_values_keyword_warns_like_transformers_models(model):
    """Where transformers renamed `past_key_values` to `cache` (5.2x), the old keyword still works and warns, as it
    does for transformers' own models; where `past_key_values` is still the name, it is accepted silently."""
    import inspect
    import warnings

    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    renamed = "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    with torch.no_grad():
        prefix = model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True)
        cache = prefix["cache"] if "cache" in prefix else prefix["past_key_values"]
        expected = model(input_ids=torch.tensor([[1, 5, 6, 7]]), use_cache=False).logits[:, -1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = model(input_ids=torch.tensor([[7]]), past_key_values=cache).logits[:, -1]
    torch.testing.assert_close(step, expected, atol=1e-4, rtol=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert any("past_key_values" in m and "cache" in m for m in messages) == renamed, messages


@pytest.mark.parametrize("side", [4, 32])
def test_pixel_shuffle_has_internvls_ordering(side):
    """HoVLE's pixel shuffle equals transformers' `InternVLModel.pixel_shuffle` (InternVL's "v2" ordering); that
    method reads nothing from its instance, so the oracle is called without one."""
    from transformers.models.internvl.modeling_internvl import InternVLModel

    from hovle.modeling_hovle import pixel_shuffle

    grid = torch.randn(3, side, side, 16, generator=torch.Generator().manual_seed(side))
    expected = InternVLModel.pixel_shuffle(None, grid, scale_factor=0.5)
    assert torch.equal(pixel_shuffle(grid, 0.5), expected)
