"""generate()'s static cache for both layouts: it holds the LLM's and the embedding module's layers from the start,
decodes as the dynamic cache does (greedy tokens, float32 logits within 1e-4) for single prompts and left-padded
image batches, and its decoding step compiles into one graph with no host synchronisation (what CUDA graphs need)."""

import pytest
import torch
from functorch.compile import make_boxed_func
from helpers import build_model, image_prompt, output_cache
from torch._dynamo.backends.common import aot_autograd

from hovle.cpu_decoding import compiled_decoding_config
from hovle.modeling_hovle import _CACHE_KWARG

STEPS = 10
PAD = 2
LAYOUTS = ["pre", "post"]


def single_prompt():
    torch.manual_seed(5)
    return torch.tensor([image_prompt([5, 6], [2], [7, 8])]), None, torch.randn(2, 3, 56, 56)


def padded_batch():
    """8 left-padded rows of different lengths with 0 to 3 tiles in 0 to 2 images (tiles in row order)."""
    torch.manual_seed(3)
    layouts = [([1, 2], 1), ([], 4), ([1], 2), ([3], 0), ([2], 1), ([], 7), ([1, 1], 3), ([2], 5)]
    prompts = [
        image_prompt([5 + row, 6], tiles, list(range(9, 9 + extra))) for row, (tiles, extra) in enumerate(layouts)
    ]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    tiles = sum(sum(t) for t, _ in layouts)
    return ids, mask, torch.randn(tiles, 3, 56, 56)


def greedy(model, ids, mask, pixels, steps=STEPS, **kwargs):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        pad_token_id=PAD,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )


def assert_same_decoding(static, dynamic):
    assert torch.equal(static.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.logits, 1), torch.stack(dynamic.logits, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("loc", LAYOUTS)
def test_generate_static_cache_holds_every_layer_before_the_first_forward(loc):
    """No extending inside forward: the cache reaching the prefill already has L + E static layers, the embedding
    module's as long as its stream (in `post` longer, by the patches of every tile), none of them allocated yet."""
    model = build_model(loc, "sdpa")
    ids, mask, pixels = padded_batch()
    seen = []

    def record(module, args, kwargs):
        if not seen:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            seen.extend((type(layer).__name__, layer.max_cache_len, layer.is_initialized) for layer in cache.layers)

    handle = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        greedy(model, ids, mask, pixels, steps=2, cache_implementation="static")
    finally:
        handle.remove()
    text_layers, embedding_layers = model.model.num_text_layers, model.config.embedding_config.num_hidden_layers
    llm_length = ids.shape[1] + 2 - 1  # generate()'s own size: max_length - 1
    extra = 0 if loc == "pre" else pixels.shape[0] * (16 - model.config.tokens_per_tile)  # 16 patches per 56 px tile
    assert (
        seen
        == [("StaticLayer", llm_length, False)] * text_layers
        + [("StaticLayer", llm_length + extra, False)] * embedding_layers
    )


@pytest.mark.parametrize("loc", LAYOUTS)
def test_static_cache_equals_dynamic(loc):
    model = build_model(loc, "sdpa")
    dynamic = greedy(model, *single_prompt())
    static = greedy(model, *single_prompt(), cache_implementation="static")
    assert len(set(dynamic.sequences[0, -STEPS:].tolist())) > 2, "a meaningful greedy path"
    assert_same_decoding(static, dynamic)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("loc", LAYOUTS)
def test_static_cache_equals_dynamic_on_a_left_padded_image_batch(loc, attn):
    model = build_model(loc, attn)
    dynamic = greedy(model, *padded_batch())
    static = greedy(model, *padded_batch(), cache_implementation="static")
    assert_same_decoding(static, dynamic)


def test_reused_static_cache_grows_for_more_tiles_in_post():
    """In `post` a later call with more tiles (and less text) needs a longer embedding stream within the same LLM
    length (transformers' longest-so-far rule keeps that length): its static cache's embedding layers are sized from
    its own tiles, long enough for its stream."""
    model = build_model("post", "sdpa")
    torch.manual_seed(7)
    calls = [
        (torch.tensor([image_prompt(list(range(5, 25)), [1], [7, 8])]), torch.randn(1, 3, 56, 56)),
        (torch.tensor([image_prompt([5, 6], [4], [7, 8])]), torch.randn(4, 3, 56, 56)),
    ]
    assert calls[1][0].shape[1] <= calls[0][0].shape[1]  # the LLM length does not grow ...
    for ids, pixels in calls:  # ... the stream does (3 more tiles of 12 extra patch slots each)
        dynamic = greedy(model, ids, None, pixels)
        static = greedy(model, ids, None, pixels, cache_implementation="static")
        assert_same_decoding(static, dynamic)
        stream_layer = output_cache(static).layers[model.model.num_text_layers]
        assert stream_layer.max_cache_len >= model.model.embedding_model.cache_layout.stream_length(
            ids.shape[1] + STEPS - 1, pixels
        )


# -- the compiled decoding step ---------------------------------------------------------------------------------


# aten ops that read a device value back to the host: `.item()`, `int(t)`, `bool(t)`, `.tolist()` all dispatch to
# `_local_scalar_dense`; the others size their output by the data. A decoding step meant for CUDA graphs has none.
HOST_SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique", "_unique2"}


def compiled_with_aten_graphs(fn):
    """`fn` compiled with `fullgraph=True`, and the aten graphs it compiles to (as AOTAutograd hands them to a
    backend), where host synchronisation shows. Scalar reads and data-dependent shapes are captured into the graph
    instead of breaking it, so that they are found there rather than hidden in eager code between graphs."""
    graphs = []

    def keep(graph, example_inputs):
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=keep)
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend), graphs


def host_syncs(graphs) -> list[str]:
    ops = (str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function")
    return [op for op in ops if op.removeprefix("aten.").split(".")[0] in HOST_SYNC_OPS]


def tensors_held(cache) -> dict[str, int]:
    """The identity of every tensor the cache and its layers hold: a CUDA-graph step may update them in place but
    must not replace them by its outputs, which the next replay overwrites."""
    held = {}
    for owner, obj in [("cache", cache), *((f"layer{i}", layer) for i, layer in enumerate(cache.layers))]:
        held.update({f"{owner}.{k}": id(v) for k, v in vars(obj).items() if isinstance(v, torch.Tensor)})
    return held


def decoding_step_inputs(model, ids, mask, pixels, static=False):
    """The inputs of the first decoding step as generate() makes them, after its eager prefill (one new token)."""
    # A static cache sized as for a longer generation, so that it has room for the step.
    cache_kwargs = {"cache_implementation": "static", "max_cache_len": ids.shape[1] + STEPS} if static else {}
    prefill = greedy(model, ids, mask, pixels, steps=1, **cache_kwargs)
    sequences = prefill.sequences
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return model.prepare_inputs_for_generation(
        sequences,
        next_sequence_length=1,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        is_first_iteration=False,
        **{_CACHE_KWARG: output_cache(prefill)},
    )


@pytest.mark.slow
@pytest.mark.parametrize("loc", LAYOUTS)
def test_compiled_decoding_step_is_one_graph_without_host_sync(loc):
    """The decoding step over generate()'s static cache (left-padded image batch, after the eager prefill): one graph
    with no break (`torch._dynamo.explain`), compiled with `fullgraph=True` it reads nothing back to the host, keeps
    no output of its own in the cache (every tensor there is the one the eager prefill made), and its logits are
    those of the dynamic cache's eager step."""
    torch._dynamo.reset()
    model = build_model(loc, "sdpa")
    batch = padded_batch()
    with torch.no_grad():
        expected = model(**decoding_step_inputs(model, *batch)).logits

        explained = torch._dynamo.explain(model.forward)(**decoding_step_inputs(model, *batch, static=True))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

        step, graphs = compiled_with_aten_graphs(model.forward)
        inputs = decoding_step_inputs(model, *batch, static=True)
        before = tensors_held(inputs[_CACHE_KWARG])
        with torch._dynamo.config.patch(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True):
            logits = step(**inputs).logits
    assert graphs and host_syncs(graphs) == []
    assert tensors_held(inputs[_CACHE_KWARG]) == before
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("loc", LAYOUTS)
def test_generate_compiled_static_decoding_equals_dynamic_on_a_padded_batch(loc):
    """transformers' own compile path (the one CUDA takes by itself, opted in on the CPU), `fullgraph=True`."""
    torch._dynamo.reset()
    model = build_model(loc, "sdpa")
    dynamic = greedy(model, *padded_batch())
    config = compiled_decoding_config(fullgraph=True)
    compiled = greedy(model, *padded_batch(), cache_implementation="static", compile_config=config)
    assert_same_decoding(compiled, dynamic)
