"""HoVLE: a monolithic vision-language model with a holistic embedding module (arXiv:2412.16158, CVPR 2025).

Architecture (sizes of the 2.6B release in brackets):

    pixel tiles (n, 3, 448, 448) --Conv2d patch 14--> (n, 1024, 2048) + 32x32 position grid
    text ids --embed_tokens--> (B, S, 2048)
    holistic embedding = 8 causal Llama decoder layers over the interleaved image+text sequence, no final norm
        pre  (HoVLE):    pixel-shuffle 2x2 + projector first (1024 -> 256 tokens per tile), then the 8 layers
        post (HD path):  the 8 layers see all 1024 patches per tile, their image outputs are shuffled + projected
    LLM = InternLM2-1.8B, converted to Llama layout (24 layers) -> logits

Both stacks are transformers' own Llama blocks (`LlamaDecoderLayer`, `LlamaModel`, `LlamaRotaryEmbedding`), so
eager / sdpa / flash-attention / flex attention, gradient checkpointing and caches come from the library. The two
stacks share one `Cache`: the LLM owns cache layers `0..L-1` (so `generate`'s bookkeeping, which reads layer 0,
follows the LLM stream), the embedding module owns layers `L..L+E-1` (`SharedCacheLayout`). `HoVLEModel` embeds
(`HoVLEHolisticEmbedding`: image placement, positions, the `post` stream, its layers), then runs the LLM.

References: the original release `OpenGVLab/HoVLE` (InternVL code base); transformers' `models/llava`,
`models/internvl` and `models/llama` for the structure of this file.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticCache, StaticLayer
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    ModelOutput,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel, LlamaRotaryEmbedding
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.import_utils import torch_compilable_check

from .chat_hovle import HoVLEChatMixin
from .configuration_hovle import HoVLEConfig, HoVLEEmbeddingConfig

logger = logging.get_logger(__name__)

# -- transformers 5.17 .. 5.2x: every version difference this file handles ----------------------------------------
# The cache argument and output field were renamed `past_key_values` -> `cache` in 5.2x: speak the installed name.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
# `is_gradient_checkpointing` became `is_activation_checkpointing` in 5.2x (the old name warns there).
_ACTIVATION_CHECKPOINTING_FLAG = (
    "is_activation_checkpointing"
    if hasattr(PreTrainedModel, "is_activation_checkpointing")
    else "is_gradient_checkpointing"
)


def _accept_past_key_values(forward):
    """`forward(cache=...)` also called as `forward(past_key_values=...)`. Since 5.2x transformers' models warn when
    called so (now `cache=`): so does this one. Before, `past_key_values` is the generate() loop's own name for it,
    accepted silently."""
    if _CACHE_KWARG == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def accept(*args, past_key_values: Cache | None = None, **kwargs):
        if past_key_values is not None and kwargs.get("cache") is None:
            kwargs["cache"] = past_key_values
        return forward(*args, **kwargs)

    return accept


# The rotary forward without its decorators: transformers' `dynamic_rope_update` (and, on 5.17, `no_grad`).
_UNWRAPPED_ROPE_FORWARD = inspect.unwrap(LlamaRotaryEmbedding.forward)
try:  # transformers' load-report helper: `layers.{3, 4}.mlp.up_proj.weight` for one key per layer
    from transformers.utils.loading_report import update_key_name as _merge_layer_keys
except ImportError:  # a later version without it: list every key

    def _merge_layer_keys(keys):
        return keys


def pixel_shuffle(grid: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """InternVL's "v2" pixel shuffle (the same ordering as transformers' `InternVLModel.pixel_shuffle`, which the
    tests compare against): (tiles, h, w, C) -> (tiles, w*s, h*s, C/s^2), e.g. s=0.5 folds 2x2 patches into one."""
    tiles, height, width, channels = grid.shape
    # (tiles, h, w, C) -> (tiles, h, w*s, C/s)
    grid = grid.view(tiles, height, int(width * scale_factor), int(channels / scale_factor))
    # -> (tiles, w*s, h, C/s)
    grid = grid.permute(0, 2, 1, 3).contiguous()
    # -> (tiles, w*s, h*s, C/s^2)
    grid = grid.view(tiles, int(width * scale_factor), int(height * scale_factor), int(channels / scale_factor**2))
    return grid.permute(0, 2, 1, 3).contiguous()


def shuffle_and_project(patch_states: torch.Tensor, config: HoVLEEmbeddingConfig, projector: nn.Module) -> torch.Tensor:
    """(tiles, patches, C) -> (tiles, tokens_per_tile, C): InternVL "v2" pixel shuffle, then the projector (also the
    vLLM plugin's image path)."""
    tiles, num_patches, channels = patch_states.shape
    side = config.patches_per_side
    grid = patch_states.reshape(tiles, side, side, channels).contiguous()
    shuffled = pixel_shuffle(grid, scale_factor=config.downsample_ratio)
    shuffled = shuffled.reshape(tiles, -1, shuffled.shape[-1])  # (tiles, tokens_per_tile, C*s^2)
    return projector(shuffled)


class TraceableDynamicRotaryEmbedding(LlamaRotaryEmbedding):
    """InternLM2's dynamic NTK rope ("dynamic" in transformers) without a data-dependent branch.

    transformers updates dynamic frequencies with `if max(position_ids) + 1 > cached_length:` in Python, which breaks
    a `torch.compile` graph on every decoding step (measured: two graphs per step at full size). The frequencies are a
    pure function of the longest position, computed here with tensors by transformers' own rope function (it clamps
    the length up to `max_position_embeddings`, below which they equal the plain frequencies), then copied into the
    buffer in place so its address stays fixed for CUDA graphs. Unlike transformers' cached variant, a later shorter
    sequence gets its own frequencies back instead of those of the longest sequence seen so far.
    """

    # The inherited forward minus transformers' update wrapper, since this class does the update itself.
    _rope_forward = staticmethod(_UNWRAPPED_ROPE_FORWARD)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](self.config, x.device, seq_len=position_ids.max() + 1)
        self.inv_freq.copy_(inv_freq)
        return self._rope_forward(self, x, position_ids)


def rotary_embedding(config) -> LlamaRotaryEmbedding:
    """transformers' rotary embedding for `config`; the dynamic NTK type in its compile-friendly form."""
    if config.rope_parameters.get("rope_type") == "dynamic":
        return TraceableDynamicRotaryEmbedding(config)
    return LlamaRotaryEmbedding(config)


def positions_from_mask(
    attention_mask: torch.Tensor | None, past_length: int, query_length: int, device
) -> torch.Tensor:
    """1-D positions of the last `query_length` tokens: `cumsum(mask) - 1` (left-padding aware), else a range."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + query_length, device=device).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    return positions[:, -query_length:]


class HoVLEVisionEmbeddings(nn.Module):
    """Conv2d patch embedding plus a learned position grid; one row of tokens per tile, no class token."""

    def __init__(self, config: HoVLEEmbeddingConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        num_patches = config.patches_per_side**2
        # Slot 0 of the position table and the class embedding belong to the InternViT layout HoVLE was trained
        # from; they are never used at inference but are kept so checkpoints convert back bit-exactly.
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))

    def check_shape(self, pixel_values: torch.Tensor) -> None:
        """Tiles of this model's size only: every tile becomes `tokens_per_tile` tokens, which the prompt's
        `<IMG_CONTEXT>` count and the pixel shuffle rely on (the processor makes such tiles)."""
        channels, side = self.config.num_channels, self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have shape (tiles, {channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        if tuple(pixel_values.shape[2:]) != (side, side):
            raise ValueError(
                f"pixel_values tiles are {pixel_values.shape[2]}x{pixel_values.shape[3]} pixels but this model's tiles "
                f"are {side}x{side}: make them with its processor"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_shape(pixel_values)
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (n, C, side, side)
        patches = patches.flatten(2).transpose(1, 2)  # (n, side*side, C), row-major
        return patches + self.position_embedding[:, 1:]  # slot 0 is the unused class position


class HoVLEProjector(nn.Module):
    """The pixel-shuffle projector: Linear(C*s^2 -> C), GELU, Linear(C -> C)."""

    def __init__(self, config: HoVLEEmbeddingConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.hidden_size * config.shuffle_factor**2, config.hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class WeightsMismatchError(ValueError, RuntimeError):
    """A checkpoint whose tensors do not fit its config (missing, of another shape or left over), said in one line.
    Also a `RuntimeError`, what transformers raises for tensors of another shape."""


def _key_list(keys, shown: int = 6) -> str:
    """Tensor names in short: a decoder layer's tensors by the layer's name (`...layers.3`), layers merged
    (`...layers.{3, 4}`, with transformers' report helper), the first `shown` entries, counts of the rest and of
    all tensors."""
    entries = {re.sub(r"^(.*\.layers\.\d+)\..*$", r"\1", key) for key in keys}
    merged = sorted(_merge_layer_keys(entries))
    more = f" and {len(merged) - shown} more" if len(merged) > shown else ""
    return ", ".join(merged[:shown]) + more + f" ({len(keys)} tensor{'s' * (len(keys) != 1)})"


class HoVLEPreTrainedModel(PreTrainedModel):
    config_class = HoVLEConfig
    config: HoVLEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = [_CACHE_KWARG]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, refusing weights that do not fit the folder's config.json.

        transformers fills a tensor the weights lack (a config claiming more layers) with random values and only logs
        a table, and a tensor of another shape (another vocabulary size) raises a RuntimeError that points at that
        table: either way the model is not the one saved. Here both, and tensors of the weights that have no place
        in a model of the class they were saved from (a config claiming fewer layers), raise a `WeightsMismatchError`
        naming them. As in transformers, `output_loading_info=True` hands the report to the caller instead,
        `ignore_mismatched_sizes=True` re-initialises tensors of another shape, and weights passed as `state_dict=`
        load as they are.
        """
        # Weights handed over (`state_dict=`, e.g. empty to initialise every tensor) are the caller's to judge.
        if (
            kwargs.get("output_loading_info")
            or kwargs.get("state_dict") is not None
            or pretrained_model_name_or_path is None
        ):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        tolerate_shapes = kwargs.pop("ignore_mismatched_sizes", False)
        # Shape mismatches come back in the report (to be named below) instead of transformers' RuntimeError.
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
        problems = []
        if info["missing_keys"]:
            problems.append(f"missing from the weights: {_key_list(info['missing_keys'])}")
        if info["mismatched_keys"] and not tolerate_shapes:
            shapes = sorted(
                f"{key} {list(saved)} (config: {list(wanted)})" for key, saved, wanted in info["mismatched_keys"]
            )
            more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
            problems.append(f"of another shape in the weights: {', '.join(shapes[:3])}{more}")
        # Loading a part (e.g. `HoVLEModel` from a folder saved with its LM head) leaves tensors out on purpose.
        if info["unexpected_keys"] and cls.__name__ in (model.config.architectures or [cls.__name__]):
            problems.append(f"in the weights but not in the config's model: {_key_list(info['unexpected_keys'])}")
        if problems:
            raise WeightsMismatchError(
                f"{pretrained_model_name_or_path}: the weights do not match its config.json (edited, or from another "
                f"model?): tensors {'; '.join(problems)}"
            )
        return model

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HoVLEVisionEmbeddings):
            std = module.config.initializer_range
            init.normal_(module.position_embedding, mean=0.0, std=std)
            init.normal_(module.class_embedding, mean=0.0, std=std)


# -- the shared cache: both stacks' layout in one `Cache` -----------------------------------------------------------
def _empty_layer_like(layer: DynamicLayer | StaticLayer, layer_class: type | None = None) -> DynamicLayer | StaticLayer:
    """A fresh, empty cache layer of `layer_class` (default: `layer`'s own type), as long as `layer` if static."""
    layer_class = layer_class or type(layer)
    if issubclass(layer_class, StaticLayer):
        return layer_class(max_cache_len=layer.max_cache_len)
    return layer_class()


class SharedCacheLayout:
    """How the two stacks share one transformers `Cache`; every decoding path (dynamic, `generate()`'s static cache
    and its compiled step, the float32 CPU layers) goes through it.

    * Layers `0..L-1` are the LLM's, `L..L+E-1` the embedding module's: `generate()`'s bookkeeping reads layer 0, so it
      follows the LLM stream. A dynamic cache (or a caller's static cache sized for the LLM, `pre` layout) gets the
      embedding layers in `prepare`; `generate()`'s static cache gets them before the first forward
      (`add_static_layers`), so the compiled decoding step finds every layer in place.
    * The `pre` stream is the LLM stream. The `post` stream holds every patch of every tile (`stream_length`) and keeps
      its own padding mask across decoding steps: the one piece of state the cache has no slot for, kept on the cache
      object under `_STREAM_MASK_ATTRIBUTE` and gone with it (transformers marks its caches the same way, e.g.
      `_is_user_defined`). Over a dynamic cache the mask grows with the stream; over a static cache it spans the
      layers' whole length, is made and written by eager forwards (prompts) only, and the compiled decoding step
      reads it as a graph input reached through the cache argument.
    * `layer_types`: cache-layer types to put in place of transformers' stock ones in a fresh cache, e.g. float32
      layers for CPUs without native bf16 (`hovle.cpu_decoding.use_float32_cache`). Empty: the stock layers.
    """

    _STREAM_MASK_ATTRIBUTE = "_hovle_embedding_stream_mask"

    def __init__(self, config: HoVLEEmbeddingConfig, embedding_offset: int):
        self.config = config
        self.embedding_offset = embedding_offset  # the LLM's layer count: the embedding module's first cache layer
        self.layer_types: dict[type, type] = {}
        # The longest `post` stream a static cache was made for: later caches keep it, as transformers keeps the
        # longest LLM length, so later calls reuse the compiled graph.
        self._longest_static_stream = -1

    @property
    def total_layers(self) -> int:
        return self.embedding_offset + self.config.num_hidden_layers

    def past_length(self, cache: Cache | None) -> int | torch.Tensor:
        """Positions of the LLM stream already in `cache` (a tensor over a static cache holding states)."""
        return cache.get_seq_length() if cache is not None else 0

    def stream_length(self, llm_length: int, pixel_values: torch.Tensor | None = None) -> int:
        """The embedding stream's length for `llm_length` LLM positions holding the tiles of `pixel_values`: the same
        in the `pre` layout; in `post` each tile's `tokens_per_tile` image tokens are all its patches there. With the
        tiles of a whole batch this bounds every row (a row's stream is at most the longest row's)."""
        if self.config.pixel_shuffle_loc == "pre" or pixel_values is None:
            return llm_length
        return llm_length + pixel_values.shape[0] * (self.config.patches_per_side**2 - self.config.tokens_per_tile)

    def prepare(self, cache: Cache | None) -> Cache | None:
        """`cache` with room for the embedding module's layers after the LLM's (`layer_types` swapped in)."""
        if cache is None:
            return None
        if self.layer_types:
            self._swap_layer_types(cache)
        if getattr(cache, "layer_class_to_replicate", None) is not None or len(cache.layers) >= self.total_layers:
            return cache  # lazily growing caches add layers on first use
        template = cache.layers[0]
        stock = {DynamicLayer} | ({StaticLayer} if self.config.pixel_shuffle_loc == "pre" else set())
        supported = stock | {self.layer_types[t] for t in stock if t in self.layer_types}
        if type(template) not in supported:
            raise NotImplementedError(
                f"A {type(cache).__name__} with {type(template).__name__} layers and no room for the embedding "
                f"module's layers is not supported for pixel_shuffle_loc={self.config.pixel_shuffle_loc!r}: use the "
                "default dynamic cache, or generate(cache_implementation='static'), whose static cache holds every layer"
            )
        cache.layers.extend(_empty_layer_like(template) for _ in range(self.total_layers - len(cache.layers)))
        return cache

    def _swap_layer_types(self, cache: Cache) -> None:
        """Put `layer_types` in place of a fresh cache's stock layers; layers already holding states, and other layer
        types (sliding, quantized, offloaded), stay as they are."""
        replacement = self.layer_types.get(getattr(cache, "layer_class_to_replicate", None))
        if replacement is not None:
            cache.layer_class_to_replicate = replacement
        for index, layer in enumerate(cache.layers):
            replacement = self.layer_types.get(type(layer))
            if replacement is not None and not layer.is_initialized:
                cache.layers[index] = _empty_layer_like(layer, replacement)

    def add_static_layers(self, cache: StaticCache, pixel_values: torch.Tensor | None) -> StaticCache:
        """Append the embedding module's layers to `generate()`'s static cache for the LLM (transformers' own static
        layers for the embedding config, allocated by the eager prefill). In the `post` layout they are longer, by
        the patches of every tile of the batch, and keep the longest length asked for so far."""
        if len(cache.layers) != self.embedding_offset:
            return cache  # not the plain decoder cache this extends
        length = self.stream_length(cache.layers[0].max_cache_len, pixel_values)  # after transformers' own rule
        # The `pre` stream shares the LLM's 4-D decoding mask, so it takes the LLM's length exactly.
        if self.config.pixel_shuffle_loc == "post":
            length = self._longest_static_stream = max(length, self._longest_static_stream)
        cache.layers.extend(StaticCache(config=self.config, max_cache_len=length).layers)
        return cache

    def stream_mask(
        self, cache: Cache | None, new_mask: torch.Tensor | None, stream_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `post` stream's padding mask over its past and new slots (kept in `cache` for the next step) and the
        new slots' positions; `new_mask` is the new slots' 2-D padding mask, None when they are all real."""
        if cache is not None and isinstance(cache.layers[self.embedding_offset], StaticLayer):
            return self._static_stream_mask(cache, new_mask, stream_embeds)
        return self._growing_stream_mask(cache, new_mask, stream_embeds)

    def _growing_stream_mask(
        self, cache: Cache | None, new_mask: torch.Tensor | None, stream_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Over a dynamic cache (or none): the (batch, past + new) mask."""
        batch, query_length = stream_embeds.shape[:2]
        if new_mask is None:
            new_mask = torch.ones(batch, query_length, dtype=torch.long, device=stream_embeds.device)
        past_mask = getattr(cache, self._STREAM_MASK_ATTRIBUTE, None)
        if past_mask is not None:
            past_mask = past_mask[:, : cache.get_seq_length(self.embedding_offset)]  # survives `crop()`
        stream_mask = new_mask if past_mask is None else torch.cat([past_mask, new_mask], dim=-1)
        if cache is not None:
            setattr(cache, self._STREAM_MASK_ATTRIBUTE, stream_mask)
        positions = positions_from_mask(stream_mask, stream_mask.shape[1] - query_length, query_length, new_mask.device)
        return stream_mask, positions

    def _static_stream_mask(
        self, cache: Cache, new_mask: torch.Tensor | None, stream_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Over a static cache: the (batch, max_cache_len) mask.

        The mask is one tensor for the cache's lifetime, its slots past the written ones set to 1 (causality hides
        them until they are written): a decoding step, given no 2-D mask, only reads it, so the compiled step keeps
        no state of its own and allocates nothing that outlives it (under CUDA graphs, an output kept for the next
        step would be overwritten by the next replay). Steps given a 2-D mask (prompts, eager) write their slots in
        place; all of it with tensor offsets, no host synchronisation.
        """
        batch, query_length = stream_embeds.shape[:2]
        device = stream_embeds.device
        max_cache_len = cache.layers[self.embedding_offset].max_cache_len
        mask = getattr(cache, self._STREAM_MASK_ATTRIBUTE, None)
        if mask is None or mask.shape != (batch, max_cache_len):
            mask = torch.ones(batch, max_cache_len, dtype=torch.long, device=device)
            if not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(mask)  # a fixed address, as transformers' static cache tensors
            setattr(cache, self._STREAM_MASK_ATTRIBUTE, mask)
        past_length = cache.get_seq_length(self.embedding_offset)  # a tensor once the layer holds states
        slots = torch.arange(query_length, device=device) + past_length
        if new_mask is not None:
            mask.index_copy_(1, slots, new_mask.to(mask.dtype))
            # A reused cache (reset, or cropped) may hold an older prompt's padding after the new slots.
            later = torch.arange(mask.shape[1], device=device) >= past_length + query_length
            mask.masked_fill_(later, 1)
        positions = (mask.cumsum(-1) - 1).index_select(1, slots)
        return mask, positions.masked_fill(mask.index_select(1, slots) == 0, 1)


@dataclasses.dataclass
class HoVLEEmbeddingOutput(ModelOutput):
    """What the holistic embedding module hands the LLM.

    last_hidden_state: (batch, seq, hidden) the LLM's `inputs_embeds`, on the LLM stream.
    position_ids: (batch, seq) the positions of the LLM stream (given, or derived from the mask and the cache).
    is_prompt: the call started from an empty cache outside torch.compile, so the prompt checks ran.
    """

    last_hidden_state: torch.FloatTensor | None = None
    position_ids: torch.LongTensor | None = None
    is_prompt: bool | None = None


class HoVLEHolisticEmbedding(HoVLEPreTrainedModel):
    """Image patches and text tokens -> one embedding space: the LLM's `inputs_embeds` at every position.

    Owns the patch embedding, the projector, the token table, the image placement (`<IMG_CONTEXT>` positions), the
    positions, the `post` stream and its decoder layers, and the two stacks' cache layout (`cache_layout`). A
    `PreTrainedModel` of its own (like the `LlamaModel` beside it) so the attention implementation reaches it and it
    can be saved or loaded alone (training stage I trains nothing else); loaded alone it needs the arguments
    `HoVLEModel` gives it: `cache_layer_offset` (the LLM's layer count) and `image_token_id`.
    """

    config_class = HoVLEEmbeddingConfig
    config: HoVLEEmbeddingConfig
    base_model_prefix = "embedding_model"

    def __init__(self, config: HoVLEEmbeddingConfig, cache_layer_offset: int = 0, image_token_id: int | None = None):
        super().__init__(config)
        self.vision_embeddings = HoVLEVisionEmbeddings(config)
        self.projector = HoVLEProjector(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.image_token_id = image_token_id
        self.cache_layout = SharedCacheLayout(config, embedding_offset=cache_layer_offset)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, layer_idx=cache_layer_offset + i) for i in range(config.num_hidden_layers)]
        )
        self.rotary_emb = rotary_embedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        check_image_tokens: bool = True,
        **kwargs,
    ) -> HoVLEEmbeddingOutput:
        """The LLM's inputs for a step; `cache` laid out by `cache_layout.prepare` (see `HoVLEModel.forward` for the
        arguments). Training stage I distils its output: image positions towards a teacher's image features, text
        positions towards the LLM's own token embeddings."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        past_length = self.cache_layout.past_length(cache)
        is_prompt = not torch.compiler.is_compiling() and past_length == 0
        if is_prompt:
            self._check_prompt(input_ids if input_ids is not None else inputs_embeds[..., 0])
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(
                attention_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device
            )
        if pixel_values is None and check_image_tokens and is_prompt:
            self._check_no_orphan_image_tokens(input_ids)
        patches = image_mask = None
        if pixel_values is not None:
            patches = self.vision_embeddings(pixel_values)  # (tiles, patches, C); checks the tiles' shape
            # Pixels come only with the prompt (never in the compiled decoding step), so this sync is one per call;
            # NaN/Inf pixels would otherwise turn every state into NaN and greedy decoding into token 0.
            if not torch.compiler.is_compiling() and not bool(torch.isfinite(pixel_values).all()):
                raise ValueError("pixel_values holds NaN or infinite values: make them with the model's processor")
            image_mask = self.image_token_mask(input_ids, inputs_embeds, pixel_values.shape[0])  # (B, S)

        if self.config.pixel_shuffle_loc == "pre":
            if patches is not None:
                image_tokens = shuffle_and_project(patches, self.config, self.projector)
                inputs_embeds = inputs_embeds.masked_scatter(
                    image_mask.unsqueeze(-1).to(inputs_embeds.device),
                    image_tokens.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype),
                )
            llm_inputs = self._run_layers(inputs_embeds, attention_mask, position_ids, cache, **kwargs)
        else:
            llm_inputs = self._post_layout(inputs_embeds, patches, image_mask, attention_mask, cache)
        if self.config.normalize_output:
            llm_inputs = F.normalize(llm_inputs, dim=-1)
        return HoVLEEmbeddingOutput(last_hidden_state=llm_inputs, position_ids=position_ids, is_prompt=is_prompt)

    # -- checks and image placement --------------------------------------------------------------------------------
    def _check_prompt(self, tokens: torch.Tensor) -> None:
        """A prompt (checked once, before decoding: never inside a compiled step) must be a non-empty batch of ids in
        the vocabulary; an out-of-range id would otherwise surface as an indexing error deep inside the embedding."""
        if tokens.ndim != 2 or 0 in tokens.shape:
            raise ValueError(f"The prompt must be a non-empty (batch, sequence) batch; got shape {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point:
            return  # inputs_embeds: nothing to range-check
        vocab = self.embed_tokens.num_embeddings  # the LLM's vocabulary too (`HoVLEConfig` checks it)
        outside = (tokens < 0) | (tokens >= vocab)
        if outside.any():
            raise ValueError(
                f"input_ids holds {int(outside.sum())} id(s) outside the vocabulary 0..{vocab - 1}, e.g. "
                f"{int(tokens[outside][0])}"
            )

    def _check_no_orphan_image_tokens(self, input_ids: torch.Tensor | None) -> None:
        # While decoding, a generated <IMG_CONTEXT> is ordinary text (as in the original); in a prompt it means the
        # caller forgot the images. Prompts only, outside torch.compile, as transformers' own VLMs skip their count
        # checks there: with a static cache the past length is a tensor, so the test would break the decoding graph.
        if input_ids is None or self.image_token_id is None:
            return
        found = int((input_ids == self.image_token_id).sum())
        if found:
            raise ValueError(
                f"The prompt has {found} image tokens (<IMG_CONTEXT>, id {self.image_token_id}) but no "
                "pixel_values were given (0 image features)"
            )

    def image_token_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, num_tiles: int
    ) -> torch.Tensor:
        """(batch, seq) True at the `<IMG_CONTEXT>` positions: from `input_ids`, or, given only `inputs_embeds`, where
        they equal the embedding of `<IMG_CONTEXT>` (as transformers' VLMs locate placeholders). The count must match
        the tiles (checked in a compile- and export-friendly way)."""
        if self.image_token_id is None:
            raise ValueError(
                "This embedding module was built without image_token_id (loaded alone?): pass "
                "image_token_id=config.image_token_id of the full model to place images"
            )
        if input_ids is not None:
            image_mask = input_ids == self.image_token_id
        else:
            placeholder = self.embed_tokens(
                torch.full((), self.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            image_mask = (inputs_embeds == placeholder.to(inputs_embeds.dtype)).all(-1)
        tokens_per_tile = self.config.tokens_per_tile
        expected = num_tiles * tokens_per_tile
        torch_compilable_check(
            image_mask.sum() == expected,
            lambda: (
                f"The prompt has {int(image_mask.sum())} image tokens (<IMG_CONTEXT>, id {self.image_token_id}) "
                f"but the {num_tiles} image tiles give {expected} image features ({tokens_per_tile} per tile)"
            ),
        )
        return image_mask

    # -- the decoder layers ----------------------------------------------------------------------------------------
    def _post_layout(
        self,
        inputs_embeds: torch.Tensor,
        patches: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """`post` layout: the embedding stream holds every patch of every tile, so it is longer than the LLM stream
        (by `patches - tokens_per_tile` per tile) and keeps its own padding mask and positions (`cache_layout`)."""
        length, hidden = inputs_embeds.shape[1:]
        # Only a 2-D mask tells padding; a 4-D one is the LLM's own (a static cache's decoding step, prepared by
        # generate()): the step's new token is real, so its stream slot is too.
        new_mask = attention_mask[:, -length:] if attention_mask is not None and attention_mask.ndim == 2 else None
        if patches is None:
            # Text only (decode steps, text prompts): both streams advance one slot per token.
            stream_embeds, stream_new_mask = inputs_embeds, new_mask
        else:
            stream_embeds, stream_new_mask, llm_slots, image_slots = self._patch_stream(
                inputs_embeds, new_mask, image_mask
            )
            stream_embeds = stream_embeds.masked_scatter(
                image_slots.unsqueeze(-1), patches.reshape(-1, hidden).to(stream_embeds.dtype)
            )

        stream_mask, stream_positions = self.cache_layout.stream_mask(cache, stream_new_mask, stream_embeds)
        stream_out = self._run_layers(stream_embeds, stream_mask, stream_positions, cache)
        if patches is None:
            return stream_out

        llm_inputs = torch.gather(stream_out, 1, llm_slots.unsqueeze(-1).expand(-1, -1, hidden))
        image_states = stream_out[image_slots].reshape(patches.shape)  # (tiles, patches, C)
        image_tokens = shuffle_and_project(image_states, self.config, self.projector).reshape(-1, hidden)
        return llm_inputs.masked_scatter(image_mask.unsqueeze(-1), image_tokens.to(llm_inputs.dtype))

    def _patch_stream(
        self, inputs_embeds: torch.Tensor, new_mask: torch.Tensor | None, image_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `post` stream of a step with images: each image token of the LLM stream stands for `ratio` patch slots.
        Returns the stream's embeddings (patch slots still empty), its new slots' padding mask, for each LLM position
        its (last) stream slot, and the patch slots."""
        batch, length, hidden = inputs_embeds.shape
        device = inputs_embeds.device
        if new_mask is None:
            new_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        ratio = self.config.patches_per_side**2 // self.config.tokens_per_tile
        repeats = 1 + (ratio - 1) * image_mask.long()  # (B, S)
        stream_lengths = repeats.sum(-1)
        stream_length = int(stream_lengths.max())
        stream_embeds = inputs_embeds.new_zeros(batch, stream_length, hidden)
        stream_new_mask = new_mask.new_zeros(batch, stream_length)
        image_slots = torch.zeros(batch, stream_length, dtype=torch.bool, device=device)
        llm_slots = torch.empty(batch, length, dtype=torch.long, device=device)
        for row in range(batch):
            pad = stream_length - int(stream_lengths[row])  # extra left padding for rows with fewer tiles
            source = torch.repeat_interleave(torch.arange(length, device=device), repeats[row])
            stream_embeds[row, pad:] = inputs_embeds[row, source]
            stream_new_mask[row, pad:] = new_mask[row, source]
            image_slots[row, pad:] = image_mask[row, source]
            llm_slots[row] = pad + repeats[row].cumsum(0) - 1  # LLM position -> its (last) stream slot
        return stream_embeds, stream_new_mask, llm_slots, image_slots

    def _run_layers(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
        **kwargs,
    ) -> torch.Tensor:
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **{_CACHE_KWARG: cache},
            position_ids=position_ids,
            layer_idx=self.cache_layout.embedding_offset,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids=position_ids)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                use_cache=cache is not None,
                **{_CACHE_KWARG: cache},
                **kwargs,
            )
        return hidden_states  # no final norm: this is the LLM's input


class HoVLEModel(HoVLEPreTrainedModel):
    """The holistic embedding module followed by the LLM body; returns the LLM's last hidden states."""

    def __init__(self, config: HoVLEConfig):
        super().__init__(config)
        self.num_text_layers = config.text_config.num_hidden_layers
        self.embedding_model = HoVLEHolisticEmbedding(
            config.embedding_config, cache_layer_offset=self.num_text_layers, image_token_id=config.image_token_id
        )
        # `language_model.embed_tokens` is InternLM2's own table: unused here (inputs come from the embedding
        # module) but kept, as the text teacher of training stage I.
        self.language_model = LlamaModel(config.text_config)
        self.language_model.rotary_emb = rotary_embedding(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding_model.embed_tokens = value

    def _activation_checkpointing(self) -> bool:
        return bool(getattr(self, _ACTIVATION_CHECKPOINTING_FLAG))

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """The image tokens as the `pre` layout inserts them, `pooler_output` (tiles, tokens_per_tile, hidden), and
        the patch embeddings they come from, `last_hidden_state` (tiles, patches, hidden). HoVLE has no vision
        encoder: there are no per-layer hidden states or attentions of an image alone."""
        embedding = self.embedding_model
        patches = embedding.vision_embeddings(pixel_values)
        pooled = shuffle_and_project(patches, embedding.config, embedding.projector)
        return BaseModelOutputWithPooling(last_hidden_state=patches, pooler_output=pooled)

    def _warn_beyond_context(self, seq_length: int) -> None:
        context = self.config.text_config.max_position_embeddings
        if seq_length > context:
            logger.warning_once(
                f"The prompt has {seq_length} tokens, more than the model's context of {context}: quality degrades "
                "beyond it (InternLM2's dynamic rope scaling stretches the positions)"
            )

    @can_return_tuple
    @_accept_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        check_image_tokens: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        input_ids: (batch, seq) LLM-stream ids; each tile occupies `tokens_per_tile` `<IMG_CONTEXT>` positions.
        pixel_values: (tiles, 3, H, W), the tiles of every image of every row, in order.
        inputs_embeds: (batch, seq, hidden) text embeddings to use instead of `embed_tokens(input_ids)`.
        attention_mask: (batch, past + seq) 2-D padding mask (left padding supported).
        check_image_tokens: raise when a prompt holds image tokens but no `pixel_values` come with it (off for a
            drafting assistant, which transformers' assisted generation runs on the text alone).
        """
        kwargs.pop("cache_position", None)  # older generate() versions may still send it; positions are ours
        use_cache = use_cache if use_cache is not None else self.config.text_config.use_cache
        if self.training and self._activation_checkpointing():
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.text_config)  # the LLM's own default
        cache = self.embedding_model.cache_layout.prepare(cache)

        embedded = self.embedding_model(
            input_ids,
            pixel_values,
            attention_mask,
            position_ids,
            cache,
            inputs_embeds=inputs_embeds,
            check_image_tokens=check_image_tokens,
            **kwargs,
        )
        if embedded.is_prompt:
            self._warn_beyond_context(embedded.last_hidden_state.shape[1])
        outputs = self.language_model(
            inputs_embeds=embedded.last_hidden_state,
            attention_mask=attention_mask,
            position_ids=embedded.position_ids,
            use_cache=use_cache,
            return_dict=True,
            **{_CACHE_KWARG: cache},
            **kwargs,
        )
        return BaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_CACHE_FIELD: cache},
        )


class HoVLEForConditionalGeneration(HoVLEChatMixin, HoVLEPreTrainedModel, GenerationMixin):
    """HoVLE with its LM head: what `AutoModel` and `AutoModelForImageTextToText` load; with the original
    release's `chat()`/`batch_chat()` (`chat_hovle`)."""

    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: HoVLEConfig):
        super().__init__(config)
        self.model = HoVLEModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' resize of the input table (the embedding module's) and the LM head, plus what it does not
        know of: the embedding module's config and the LLM's own token table (stage I's text teacher, kept for the
        export) follow, so the resized model saves, reloads and exports consistently."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        language_model = self.model.language_model
        language_model.embed_tokens = self._get_resized_embeddings(
            language_model.embed_tokens, size, mean_resizing=mean_resizing
        )
        self.config.embedding_config.vocab_size = size
        self.config.text_config.vocab_size = size
        return embeddings

    def tiles_per_row(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, num_tiles: int):
        """How many of the `num_tiles` tiles of `pixel_values` belong to each row of the batch (their image tokens
        counted per row); `pixel_values` holds them row after row."""
        if input_ids is not None and input_ids.shape[-1] == 0:  # generate() given only inputs_embeds
            input_ids = None
        mask = self.model.embedding_model.image_token_mask(input_ids, inputs_embeds, num_tiles)
        return (mask.sum(-1) // self.config.tokens_per_tile).tolist()

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration:
            # transformers runs a drafting assistant's prefill as a later iteration, on the prompt's text alone (no
            # pixel_values): its image tokens are then text, not an error; the main model verifies every draft.
            model_inputs["check_image_tokens"] = False
        elif self._needs_2d_prompt_mask(kwargs.get("attention_mask")):
            # Over a static cache transformers turns the mask 4-D, the LLM stream's; the `post` layout's longer
            # embedding stream builds its own from the 2-D padding mask. The prefill runs eagerly either way.
            model_inputs["attention_mask"] = kwargs["attention_mask"]
        return model_inputs

    def _needs_2d_prompt_mask(self, attention_mask: torch.Tensor | None) -> bool:
        return (
            self.config.embedding_config.pixel_shuffle_loc == "post"
            and attention_mask is not None
            and attention_mask.ndim == 2
        )

    # generate() checks its keyword arguments against this signature; the cache argument's name differs by version.
    prepare_inputs_for_generation.__signature__ = inspect.signature(GenerationMixin.prepare_inputs_for_generation)

    def _prepare_generated_length(self, generation_config, *args, **kwargs):
        """transformers' lengths, with the prompt plus the new tokens capped at the LLM's context (a warning says so):
        the caches are laid out for that many positions, and a static cache of `max_new_tokens=10**9` would
        otherwise be allocated whole. A prompt already at the context still gets one new token."""
        generation_config = super()._prepare_generated_length(generation_config, *args, **kwargs)
        prompt_length = kwargs.get("input_ids_length")
        context = self.config.text_config.max_position_embeddings
        if prompt_length is None or generation_config.max_length is None:
            return generation_config
        capped = max(context, prompt_length + 1)
        if generation_config.max_length > capped:
            logger.warning(
                f"Generating at most {capped - prompt_length} new tokens instead of "
                f"{generation_config.max_length - prompt_length}: the prompt ({prompt_length} tokens) and the reply must "
                f"fit the model's context of {context} tokens"
            )
            generation_config.max_length = capped
            if generation_config.max_new_tokens is not None:
                generation_config.max_new_tokens = capped - prompt_length
        return generation_config

    def _prepare_static_cache(
        self,
        cache_implementation: str,
        batch_size: int,
        max_cache_len: int,
        prefill_chunk_size: int | None,
        model_kwargs: dict,
    ) -> Cache:
        """transformers' static cache for `generate()` (sized from `text_config`: the LLM's layers), with the embedding
        module's layers appended from the start (`SharedCacheLayout.add_static_layers`)."""
        cache = super()._prepare_static_cache(
            cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs
        )
        return self.model.embedding_model.cache_layout.add_static_layers(cache, model_kwargs.get("pixel_values"))

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs
    ):
        """transformers repeats every model input row-wise (`repeat_interleave` on dim 0) for beams and
        `num_return_sequences`; HoVLE's `pixel_values` are tiles, not rows: repeat each row's block of tiles instead,
        so every copy of a row gets that row's images."""
        pixel_values = model_kwargs.pop("pixel_values", None)
        if pixel_values is not None and expand_size > 1:
            counts = self.tiles_per_row(input_ids, model_kwargs.get("inputs_embeds"), pixel_values.shape[0])
            blocks = torch.split(pixel_values, counts)
            pixel_values = torch.cat([block for block in blocks for _ in range(expand_size)])
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids, model_kwargs

    @can_return_tuple
    @_accept_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels: (batch, seq) next-token targets, `-100` where nothing is supervised; the shift happens inside the
            loss, which goes through `self.loss_function` so the Trainer's `num_items_in_batch` is honoured.
        logits_to_keep: compute logits for the last N positions only (0 = all), as in transformers' LMs.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )


__all__ = ["HoVLEForConditionalGeneration", "HoVLEModel", "HoVLEPreTrainedModel"]
