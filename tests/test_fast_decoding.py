"""Static cache and torch.compile decoding give the same greedy tokens as the default dynamic cache."""

import pytest
import torch
from conftest import build_model, image_prompt

STEPS = 12


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(5)
    return torch.tensor([image_prompt([5, 6], [2], [7, 8])]), torch.randn(2, 3, 56, 56)


def greedy(model, ids, pixels, **kwargs):
    return model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, **kwargs
    )


def test_static_cache_equals_dynamic(inputs):
    model = build_model("pre", "sdpa")
    dynamic = greedy(model, *inputs)
    static = greedy(model, *inputs, cache_implementation="static")
    assert len(set(dynamic[0, -STEPS:].tolist())) > 2
    assert torch.equal(static, dynamic)


def test_compiled_decoding_equals_dynamic(inputs):
    model = build_model("pre", "sdpa")
    dynamic = greedy(model, *inputs)
    # The decoding step compiles into one graph over a static cache; the image prefill (data-dependent
    # placeholder counting) runs eagerly through a graph break, as transformers' own VLMs do.
    model.forward = torch.compile(model.forward, dynamic=False)
    compiled = greedy(model, *inputs, cache_implementation="static")
    assert torch.equal(compiled, dynamic)


def test_static_cache_with_post_layout_is_refused_clearly(inputs):
    model = build_model("post", "sdpa")
    with pytest.raises(NotImplementedError, match="pixel_shuffle_loc='post'"):
        greedy(model, *inputs, cache_implementation="static")
