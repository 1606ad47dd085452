"""HoVLE as a native vLLM model, built from vLLM's own layers.

    pixel tiles --HoVLE's patch embedding + pixel-shuffle projector--> image tokens (`embed_multimodal`)
    prompt ids  --the embedding module's token table, image tokens scattered at <IMG_CONTEXT>--> (`embed_input_ids`)
    holistic embedding: vLLM `LlamaModel` with E decoder layers (prefix `embedding_model.layers.N`), no final norm
    LLM: vLLM `LlamaForCausalLM` (prefix `language_model.model.layers.N`) -> logits

Both stacks are vLLM Llama decoder layers (tensor-parallel linears, paged `Attention`, rotary), so all E + L
attention layers get their own paged KV cache, continuous batching and tensor parallelism come from vLLM, and every
token of the sequence has one KV slot in each stack. That last fact is why only the `pre` layout is served: HoVLE-HD's
embedding stream is longer than the LLM stream (see `hovle.vllm_plugin.config`).

The vision side is HoVLE's own code (`hovle.modeling_hovle`), replicated on every tensor-parallel rank: a Conv2d and
two Linear layers, a few MB at full size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.backends import set_model_tag
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    _merge_multimodal_embeddings,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ..conversion import layout
from ..modeling_hovle import HoVLEProjector, HoVLEVisionEmbeddings, shuffle_and_project
from ..processing_hovle import IMAGE_PLACEHOLDER
from .config import HD_REFUSAL
from .processing import HoVLEDummyInputsBuilder, HoVLEMultiModalProcessor, HoVLEProcessingInfo


class _NoFinalNorm(nn.Module):
    """Stands where `LlamaModel` keeps its final norm: the embedding module has none, its output is the residual
    stream itself (vLLM's decoder layers hand it over as `hidden_states + residual`)."""

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, None]:
        return hidden_states + residual, None


class HoVLEEmbeddingStack(LlamaModel):
    """The holistic embedding module's text table and decoder layers: vLLM's `LlamaModel` (its weight loading, its
    compile support) without the final norm."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.norm = _NoFinalNorm()


@MULTIMODAL_REGISTRY.register_processor(
    HoVLEMultiModalProcessor, info=HoVLEProcessingInfo, dummy_inputs=HoVLEDummyInputsBuilder
)
class HoVLEForConditionalGeneration(nn.Module, SupportsMultiModal):
    # Converted-folder names -> this module's. The LLM keeps transformers' `model.*` / `lm_head` layout inside
    # `language_model`; vLLM's Llama loaders fuse q/k/v and gate/up.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.embedding_model.vision_embeddings.": "vision_embeddings.",
            "model.embedding_model.projector.": "projector.",
            "model.embedding_model.": "embedding_model.",
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return IMAGE_PLACEHOLDER if modality.startswith("image") else None

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        embedding_config = config.embedding_config
        if embedding_config.pixel_shuffle_loc != "pre":  # also refused earlier, by the config check
            raise ValueError(
                HD_REFUSAL.format(patches=embedding_config.patches_per_side**2, tokens=config.tokens_per_tile)
            )
        self.config = config
        self.image_token_id = config.image_token_id

        with self._mark_tower_model(vllm_config, "image"):
            self.vision_embeddings = HoVLEVisionEmbeddings(embedding_config)
            self.projector = HoVLEProjector(embedding_config)

        # The embedding module's rope is the plain one: vLLM tabulates it up to `max_position_embeddings` rows, so
        # the table must cover the served context (transformers computes any position on the fly).
        stack_config = copy.deepcopy(embedding_config)
        stack_config.max_position_embeddings = max(
            stack_config.max_position_embeddings, vllm_config.model_config.max_model_len
        )
        # Both stacks are vLLM `LlamaModel`s, each compiled by vLLM as a unit: a tag of its own keeps their compiled
        # graphs and compile caches apart (as vLLM's own two-decoder models do).
        with set_model_tag("hovle_embedding"):
            self.embedding_model = HoVLEEmbeddingStack(
                vllm_config=vllm_config.with_hf_config(stack_config), prefix=maybe_prefix(prefix, "embedding_model")
            )
        with self._mark_language_model(vllm_config), set_model_tag("hovle_llm"):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["LlamaForCausalLM"],
            )

    # -- images ------------------------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One (tiles x tokens_per_tile, hidden) tensor per image, in prompt order."""
        pixel_values = kwargs.get("pixel_values_flat")
        if pixel_values is None:
            return []
        tiles_per_image = [int(n) for n in kwargs["image_num_patches"]]
        patches = self.vision_embeddings(pixel_values)  # (tiles, patches, hidden)
        image_tokens = shuffle_and_project(patches, self.config.embedding_config, self.projector)
        tokens_per_tile = image_tokens.shape[1]
        return image_tokens.reshape(-1, image_tokens.shape[-1]).split([n * tokens_per_tile for n in tiles_per_image])

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # The embedding module's own token table, not the LLM's (vLLM's default takes the language model's).
        inputs_embeds = self._embed_text_input_ids(
            input_ids, self.embedding_model.embed_input_ids, is_multimodal=is_multimodal
        )
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return inputs_embeds
        return _merge_multimodal_embeddings(
            inputs_embeds=inputs_embeds, multimodal_embeddings=multimodal_embeddings, is_multimodal=is_multimodal
        )

    # -- the two stacks ----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        llm_inputs = self.embedding_model(input_ids, positions, None, inputs_embeds=inputs_embeds)
        if self.config.embedding_config.normalize_output:
            llm_inputs = F.normalize(llm_inputs, dim=-1)
        return self.language_model.model(None, positions, intermediate_tensors, inputs_embeds=llm_inputs)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        converted = as_converted_weights(weights, layout.geometries_from_config(self.config))
        return AutoWeightsLoader(self).load_weights(converted, mapper=self.hf_to_vllm_mapper)


def as_converted_weights(
    weights: Iterable[tuple[str, torch.Tensor]], geometries: dict[str, layout.AttentionGeometry]
) -> Iterable[tuple[str, torch.Tensor]]:
    """A release folder's tensors (InternLM2 names, fused `wqkv`) as a converted folder's, one tensor at a time, by the
    key table of `hovle.conversion.layout` (each grouped `wqkv` split per stack into q, k, v, which vLLM's Llama
    loader fuses into its `qkv_proj`); a converted folder's tensors pass through as they are. The two layouts share
    no name (ours start with `model.` or `lm_head.`)."""
    for name, tensor in weights:
        mapping = layout.map_original_key(name)
        if mapping is None:
            yield name, tensor
        else:
            yield from layout.original_to_ours(mapping, tensor, geometries)
