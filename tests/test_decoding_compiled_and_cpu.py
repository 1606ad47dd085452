"""Static cache and torch.compile decoding give the same greedy tokens as the default dynamic cache."""

import pytest
import torch
from helpers import build_model, image_prompt, output_cache
from transformers import LlamaConfig, StaticCache
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hovle.cpu_decoding import (
    FLOAT32_KV_ATTENTION,
    Float32StaticLayer,
    compiled_decoding_config,
    fast_cpu_decoding,
    use_float32_cache,
)
from hovle.modeling_hovle import HoVLEForConditionalGeneration, TraceableDynamicRotaryEmbedding

STEPS = 12


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(5)
    return torch.tensor([image_prompt([5, 6], [2], [7, 8])]), torch.randn(2, 3, 56, 56)


def greedy(model, ids, pixels, **kwargs):
    return model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, **kwargs
    )


@pytest.mark.parametrize("loc", ["pre", "post"])
def test_static_cache_equals_dynamic(inputs, loc):
    model = build_model(loc, "sdpa")
    dynamic = greedy(model, *inputs)
    static = greedy(model, *inputs, cache_implementation="static")
    assert len(set(dynamic[0, -STEPS:].tolist())) > 2
    assert torch.equal(static, dynamic)


@pytest.mark.slow
def test_compiled_decoding_equals_dynamic(inputs):
    model = build_model("pre", "sdpa")
    dynamic = greedy(model, *inputs)
    # The decoding step compiles into one graph over a static cache; the image prefill (data-dependent
    # placeholder counting) runs eagerly through a graph break, as transformers' own VLMs do.
    model.forward = torch.compile(model.forward, dynamic=False)
    compiled = greedy(model, *inputs, cache_implementation="static")
    assert torch.equal(compiled, dynamic)


def test_llm_only_static_cache_with_post_layout_is_refused_clearly(inputs):
    """A caller's StaticCache sized for the LLM alone has no room for the `post` layout's longer embedding stream
    (its length depends on the tiles): refused, pointing to generate()'s own static cache, which has it."""
    model = build_model("post", "sdpa")
    ids, pixels = inputs
    cache = StaticCache(config=model.config.text_config, max_cache_len=ids.shape[1] + STEPS)
    with pytest.raises(NotImplementedError, match=r"pixel_shuffle_loc='post'.*cache_implementation='static'"):
        model(input_ids=ids, pixel_values=pixels, cache=cache, use_cache=True)


def test_traceable_dynamic_rope_equals_transformers_dynamic_rope():
    # InternLM2's LLM uses dynamic NTK rope (x2 beyond max positions); small max so both regimes are exercised.
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=16,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    )
    ours, reference = TraceableDynamicRotaryEmbedding(config), LlamaRotaryEmbedding(config)
    x = torch.zeros(1, 1, 64)
    # A growing sequence, as generation produces: prompt below the limit, decoding past it, a long prompt.
    for positions in (torch.arange(10), torch.arange(10, 16), torch.tensor([16]), torch.tensor([17]), torch.arange(40)):
        got, expected = ours(x, positions[None]), reference(x, positions[None])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.equal(ours.inv_freq, ours.original_inv_freq), "40 positions > 16 must rescale the frequencies"


@pytest.mark.slow
def test_compiled_decoding_is_one_graph_with_dynamic_rope(inputs, tmp_path):
    """The release's LLM uses dynamic rope; its decoding step must still compile to one graph (fullgraph), after a
    save / from_pretrained round trip (which re-initialises the rope buffers by rope type)."""
    trained = build_model("pre", "sdpa")
    config = trained.config
    config.text_config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    config.text_config.max_position_embeddings = 24  # prompt (15) + 12 new tokens cross it: rescaling exercised
    HoVLEForConditionalGeneration(config).save_pretrained(tmp_path)  # config and layout of the dynamic-rope model
    model = HoVLEForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    model.load_state_dict(trained.state_dict())  # the informative weights of build_model
    assert isinstance(model.model.language_model.rotary_emb, TraceableDynamicRotaryEmbedding)
    dynamic = greedy(model, *inputs)
    compile_config = compiled_decoding_config(fullgraph=True)
    compiled = greedy(model, *inputs, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, dynamic)


def test_float32_kv_attention(inputs):
    """`sdpa_float32_kv`: a float32 cache under bf16 weights; same as sdpa in float32, close to it in bf16."""
    ids, pixels = inputs
    reference = build_model("pre", "sdpa")
    float32_kv = build_model("pre", "sdpa")
    use_float32_cache(float32_kv)
    # Float32 model: the same kernels as plain sdpa, so the same greedy tokens and logits.
    torch.testing.assert_close(
        float32_kv(input_ids=ids, pixel_values=pixels).logits, reference(input_ids=ids, pixel_values=pixels).logits
    )
    assert torch.equal(greedy(float32_kv, ids, pixels), greedy(reference, ids, pixels))
    # bf16 weights: the cache holds float32, outputs stay bf16, and decoding follows the float32 model.
    float32_kv.to(torch.bfloat16)
    with torch.inference_mode():
        out = float32_kv(input_ids=ids, pixel_values=pixels.to(torch.bfloat16), use_cache=True)
    cache = output_cache(out)
    assert {layer.keys.dtype for layer in cache.layers} == {torch.float32}
    config = float32_kv.config
    assert len(cache.layers) == config.text_config.num_hidden_layers + config.embedding_config.num_hidden_layers
    assert out.logits.dtype == torch.bfloat16
    assert torch.equal(greedy(float32_kv, ids, pixels.to(torch.bfloat16)), greedy(reference, ids, pixels))


@pytest.mark.slow
def test_fast_cpu_decoding_compiles_over_a_float32_static_cache(inputs):
    """`fast_cpu_decoding(compile=True)`: a float32 static cache (`sdpa_float32_kv` under bf16 weights) and a compiled
    decoding step, following the eager dynamic-cache path of the same attention."""
    ids, pixels = inputs
    model = build_model("pre", "sdpa").to(torch.bfloat16)
    pixels = pixels.to(torch.bfloat16)
    kwargs = fast_cpu_decoding(model, compile=True)
    assert model.config.text_config._attn_implementation == FLOAT32_KV_ATTENTION
    dynamic = greedy(model, ids, pixels)
    out = greedy(model, ids, pixels, return_dict_in_generate=True, **kwargs)
    cache = output_cache(out)
    config = model.config
    assert len(cache.layers) == config.text_config.num_hidden_layers + config.embedding_config.num_hidden_layers
    assert {type(layer) for layer in cache.layers} == {Float32StaticLayer}
    assert {layer.keys.dtype for layer in cache.layers} == {torch.float32}
    assert torch.equal(out.sequences, dynamic)


def test_fast_cpu_decoding_refuses_accelerator_models():
    model = build_model("pre", "sdpa").to("meta")  # any non-CPU device: no accelerator is needed to check the guard
    with pytest.raises(ValueError, match="on the CPU; this one is on meta"):
        fast_cpu_decoding(model)
    assert model.config.text_config._attn_implementation == "sdpa"
