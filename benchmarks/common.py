"""Helpers shared by the benchmark scripts: timers and decoding-step clocks, fixed-length greedy generation, prompts
with image blocks and random pixels, the release's full-size config, the plain `LlamaForCausalLM` baseline of
HoVLE's size, the CUDA environment record, and JSON result files.

The scripts import it as `common`: Python puts a script's own folder first on `sys.path`, so every benchmark runs
as `python benchmarks/NAME.py` from any working directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from hovle.configuration_hovle import HoVLEConfig
from hovle.conversion.config_map import hovle_config_from_original
from hovle.testing import release_original_config

BENCHMARKS_DIR = Path(__file__).resolve().parent


# -- command line and results ----------------------------------------------------------------------------------


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose `--help` shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def write_json(path: str | Path | None, data: Any) -> None:
    """Write `data` as indented JSON to `path`; nothing when no path is given."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2))


def attempt(function: Callable[[], Any]) -> Any:
    """`function()`, or the line `FAILED: <error type>: <message>` where it raises: a failing measurement is
    recorded and the next one still runs."""
    try:
        return function()
    except Exception as error:
        return f"FAILED: {type(error).__name__}: {error}"


def cuda_environment() -> dict[str, Any]:
    """The GPU and library versions a CUDA result was measured with."""
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
    }


def cpu_environment() -> dict[str, Any]:
    """The CPU and library versions a CPU result was measured with (the model name as `lscpu` shows it, Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# -- the memory-bandwidth bound --------------------------------------------------------------------------------


def rated_memory_bandwidth(device: int = 0) -> float | None:
    """The card's rated DRAM bandwidth in bytes/s from `torch.cuda.get_device_properties` (memory clock x bus width,
    double data rate); `None` where this torch does not report them."""
    properties = torch.cuda.get_device_properties(device)
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


def measured_copy_bandwidth(gigabytes: float = 2.0, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written per second, best of `repeats`): what
    streaming weights through the GPU can reach in practice, the denominator of every bound in the reports."""
    source = torch.empty(int(gigabytes * 1e9) // 2, dtype=torch.bfloat16, device="cuda")
    target = torch.empty_like(source)

    def copy() -> None:
        target.copy_(source)

    copy()  # warm-up
    seconds = best_of(copy, repeats, torch.cuda.synchronize)
    return 2 * source.numel() * source.element_size() / seconds


def bytes_of(modules) -> int:
    """Bytes of the parameters of `modules` (an iterable of `nn.Module`)."""
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def kv_cache_bytes_read(config, layers: int, batch: int, positions: float, dtype: torch.dtype) -> float:
    """Bytes of keys and values one decoding step reads from `layers` layers of `positions` cached positions each."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    return layers * batch * positions * per_position


def bound_report(measured_ms: float, bytes_per_step: float, bandwidth: float) -> dict[str, float]:
    """A decoding step against its memory-bandwidth bound: the time `bytes_per_step` take at `bandwidth`, and the
    fraction of that bound reached (1.0 = at the bound)."""
    bound_ms = bytes_per_step / bandwidth * 1e3
    return {"bound_ms": bound_ms, "fraction_of_bound": bound_ms / measured_ms}


# -- timing ----------------------------------------------------------------------------------------------------


def timed(function: Callable[[], Any], synchronize: Callable[[], None] | None = None) -> float:
    """Wall seconds of one call. With `synchronize` (e.g. `torch.cuda.synchronize`), pending device work is waited
    for before the clock starts and before it stops."""
    if synchronize is not None:
        synchronize()
    start = time.perf_counter()
    function()
    if synchronize is not None:
        synchronize()
    return time.perf_counter() - start


def repeated(function: Callable[[], Any], repeats: int, synchronize: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of each of `repeats` calls."""
    return [timed(function, synchronize) for _ in range(repeats)]


def best_of(function: Callable[[], Any], repeats: int, synchronize: Callable[[], None] | None = None) -> float:
    """The fastest of `repeats` calls, in seconds."""
    return min(repeated(function, repeats, synchronize))


class StepClock:
    """Timestamps of the decoding steps of one `generate()` call.

    Pass it either as the streamer (`streamer=clock`: `generate()` hands it the prompt, then each new token) or as a
    logits processor (`logits_processor=LogitsProcessorList([clock])`: called once a step, before the token is
    chosen). With `synchronize`, pending device work is waited for before each stamp.
    """

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.synchronize = synchronize
        self.stamps: list[float] = []
        self._prompt_seen = False

    def _stamp(self) -> None:
        if self.synchronize is not None:
            self.synchronize()
        self.stamps.append(time.perf_counter())

    def put(self, value) -> None:
        """Streamer side: the first call carries the prompt, not a decoding step."""
        if self._prompt_seen:
            self._stamp()
        self._prompt_seen = True

    def end(self) -> None:
        pass

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Logits-processor side: leaves the scores as they are."""
        self._stamp()
        return scores

    def step_seconds(self) -> list[float]:
        """Seconds between consecutive steps. The first stamp comes after the prefill, so it is excluded."""
        return [later - earlier for earlier, later in itertools.pairwise(self.stamps)]


# -- model inputs and runs -------------------------------------------------------------------------------------


def image_prompt(
    config: HoVLEConfig,
    tiles: int,
    text_tokens: int = 30,
    first_text_id: int = 1000,
    before: tuple[int, ...] = (),
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Token ids (1, length): BOS, the ids `before`, one image block `<img>` + `<IMG_CONTEXT>` x (tiles x tokens per
    tile) + `</img>`, then `text_tokens` consecutive ids from `first_text_id`."""
    image = [config.image_start_token_id] + [config.image_token_id] * (tiles * config.tokens_per_tile)
    text = range(first_text_id, first_text_id + text_tokens)
    return torch.tensor([[1, *before, *image, config.image_end_token_id, *text]], device=device)


def left_padded_image_batch(
    config: HoVLEConfig, rows: int, device: str | torch.device | None = None, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rows` prompts of 1 to 3 tiles and 10 to 40 text tokens, left-padded with id 2: (ids, attention mask, pixel
    values of every row's tiles in row order)."""
    prompts, tiles = [], []
    for row in range(rows):
        tiles.append(1 + row % 3)
        prompts.append(image_prompt(config, tiles[-1], text_tokens=10 + (7 * row) % 31, first_text_id=100)[0])
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((rows, width), 2, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device), random_pixels(config, sum(tiles), dtype, device=device)


def text_prompt_like(ids: torch.Tensor) -> torch.Tensor:
    """Random text ids (100-999) of the shape and device of `ids`: a text-only model's prompt of the same length."""
    return torch.randint(100, 1000, ids.shape, device=ids.device)


def random_pixels(
    config: HoVLEConfig, tiles: int, dtype: torch.dtype, device: str | torch.device | None = None
) -> torch.Tensor:
    """Random pixel values for `tiles` tiles of the model's tile size."""
    side = config.embedding_config.image_size
    return torch.randn(tiles, 3, side, side, dtype=dtype, device=device)


def greedy_generate(model, new_tokens: int, **kwargs):
    """`model.generate(**kwargs)` in inference mode, greedy, exactly `new_tokens` new tokens (EOS does not stop it)."""
    with torch.inference_mode():
        return model.generate(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=2, **kwargs
        )


def median_step_seconds(model, new_tokens: int, synchronize: Callable[[], None] | None = None, **kwargs) -> float:
    """The median gap between consecutive decoding steps of one greedy `generate()` of `new_tokens` (at least 2)
    tokens, stamped by a `StepClock` logits processor: a step's time measured directly, prefill excluded. Subtracting
    two whole-`generate()` timings instead mixes two calls' noise (on a busy machine: negative per-token times)."""
    if new_tokens < 2:
        raise ValueError(f"a step gap needs at least 2 new tokens, got {new_tokens}")
    clock = StepClock(synchronize)
    greedy_generate(model, new_tokens, logits_processor=LogitsProcessorList([clock]), **kwargs)
    return statistics.median(clock.step_seconds())


def prefill(model, **inputs) -> None:
    """One forward pass over the whole prompt without a cache, computing only the last position's logits."""
    with torch.inference_mode():
        model(**inputs, logits_to_keep=1, use_cache=False)


# -- models ----------------------------------------------------------------------------------------------------


def full_size_config(pixel_shuffle_loc: str = "pre", attn_implementation: str | None = None) -> HoVLEConfig:
    """The release's full-size config (`OpenGVLab/HoVLE`: 8 embedding + 24 LLM layers of width 2048, 2.6 B
    parameters), mapped from its original `config.json` as `hovle.testing` holds it: no download."""
    config = hovle_config_from_original(release_original_config(pixel_shuffle_loc))
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def llama_config_like(config: HoVLEConfig) -> LlamaConfig:
    """The structural baseline: a plain transformers `LlamaConfig` with HoVLE's LLM width, heads, vocabulary, RoPE
    and context length, as many layers as HoVLE's two stacks together (8 + 24 = 32 for the release) and the same
    attention implementation."""
    text = config.text_config
    llama = LlamaConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers + config.embedding_config.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        rope_parameters=dict(text.rope_parameters),
        max_position_embeddings=text.max_position_embeddings,
    )
    llama._attn_implementation = config._attn_implementation
    return llama


def llama_like(config: HoVLEConfig, dtype: torch.dtype, device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """`LlamaForCausalLM(llama_config_like(config))` in `dtype` on `device`, weights N(0, 0.02): built on the meta
    device and filled in place, so a full-size model takes no default initialisation pass."""
    llama_config = llama_config_like(config)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
    model = model.to_empty(device=device).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    # `to_empty` leaves buffers uninitialised: rebuild the rotary embedding's frequencies on the device.
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=llama_config)
    return model
