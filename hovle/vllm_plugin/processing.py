"""HoVLE's multimodal processing for vLLM: tiling, placeholder expansion, profiling inputs.

vLLM tokenizes the prompt itself and then replaces each `<image>` placeholder by
`<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>`, the block HoVLE's transformers processor writes into the text
before tokenizing. Images are tiled by that same processor (`HoVLEProcessor.tile_image`: InternVL's dynamic tiling,
thumbnail, ImageNet normalisation) loaded from the served folder, so both paths give the same pixels and tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
    cached_encode,
)
from vllm.multimodal.processing.processor import UpdateMode, _plan_prompt_updates_with

from ..conversion.tokenizer import exact_decoding_backend
from ..processing_hovle import IMAGE_PLACEHOLDER, HoVLEProcessor, check_max_tiles

# Per-request processor option (`mm_processor_kwargs={"max_tiles": 12}`, `--mm-processor-kwargs`), as in
# `hovle chat --max-tiles` and the transformers processor.
MAX_TILES = "max_tiles"


class HoVLEProcessingInfo(BaseProcessingInfo):
    def max_tiles(self, request_kwargs: Mapping[str, object]) -> int | None:
        """`max_tiles` of a request merged over the server's `--mm-processor-kwargs` (flat, or under
        `images_kwargs`); None: the folder's own limit (`max_dynamic_patch`). A value the processor refuses (not a
        whole number, above `MAX_TILES_LIMIT`) is a `ValueError`: the request is refused before any tiling."""
        merged = self.ctx.get_merged_mm_kwargs(request_kwargs)
        images_kwargs = merged.get("images_kwargs") or {}
        max_tiles = merged.get(MAX_TILES, images_kwargs.get(MAX_TILES))
        if max_tiles is not None:
            check_max_tiles(max_tiles)
        return max_tiles

    def get_hf_processor(self, **kwargs: object) -> HoVLEProcessor:
        return self.ctx.get_hf_processor(HoVLEProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "images_kwargs": {MAX_TILES}}

    @cached_property
    def exact_decoder(self):
        """The tokenizer's backend without the release's decoding clean-up (built once: it copies the vocabulary)."""
        return exact_decoding_backend(self.get_tokenizer())

    @property
    def tokens_per_tile(self) -> int:
        return self.get_hf_config().tokens_per_tile

    def get_num_tiles(self, *, image_width: int, image_height: int, max_tiles: int | None = None) -> int:
        """Tiles the processor makes of an image of this size (the thumbnail included)."""
        return self.get_hf_processor().num_tiles(image_width, image_height, max_tiles)

    def image_token_ids(self, num_tiles: int) -> list[int]:
        config = self.get_hf_config()
        context = [config.image_token_id] * (num_tiles * self.tokens_per_tile)
        return [config.image_start_token_id, *context, config.image_end_token_id]

    def get_image_size_with_most_features(self) -> ImageSize:
        """A strip of `max_patches` tiles side by side: the most tiles one image can become (plus the thumbnail).
        Profiling calls this at start-up, so a server `max_tiles` the processor refuses stops the server there."""
        self.max_tiles({})
        image_processor = self.get_hf_processor().image_processor
        side = image_processor.size["height"]
        return ImageSize(width=side * image_processor.max_patches, height=side)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        width, height = self.get_image_size_with_most_features()
        return {"image": len(self.image_token_ids(self.get_num_tiles(image_width=width, image_height=height)))}


class HoVLEDummyInputsBuilder(BaseDummyInputsBuilder[HoVLEProcessingInfo]):
    """Profiling inputs: the placeholders and images of the largest token blocks."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        width, height = self.info.get_image_size_with_most_features()
        overrides = (mm_options or {}).get("image")
        images = self._get_dummy_images(
            width=width, height=height, num_images=mm_counts.get("image", 0), overrides=overrides
        )
        return {"image": images}


class HoVLEMultiModalProcessor(BaseMultiModalProcessor[HoVLEProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.get_hf_processor()
        images = hf_data.get("images") or []
        if not isinstance(images, (list, tuple)):
            images = [images]
        max_tiles = self.info.max_tiles(hf_kwargs)
        tiles = [processor.tile_image(image, max_tiles=max_tiles) for image in images]
        return BatchFeature(
            {
                "pixel_values_flat": torch.from_numpy(np.concatenate(tiles)),
                "image_num_patches": torch.tensor([len(t) for t in tiles]),
            }
        )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        tiles_per_image = hf_inputs.get("image_num_patches", torch.empty(0))
        return {
            "pixel_values_flat": MultiModalFieldConfig.flat_from_sizes("image", tiles_per_image),
            "image_num_patches": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        tiles_per_image = out_mm_kwargs.get_data().get("image_num_patches")

        def image_block(item_idx: int) -> PromptUpdateDetails:
            if tiles_per_image is not None:
                num_tiles = int(tiles_per_image[item_idx])
            else:  # items served from vLLM's processor cache: recount from the image's size
                size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
                num_tiles = self.info.get_num_tiles(
                    image_width=size.width,
                    image_height=size.height,
                    max_tiles=self.info.max_tiles(hf_processor_mm_kwargs),
                )
            # Only the <IMG_CONTEXT> positions take image embeddings; <img> and </img> stay text.
            ids = self.info.image_token_ids(num_tiles)
            return PromptUpdateDetails.select_token_id(ids, self.info.get_hf_config().image_token_id)

        placeholder = cached_encode(self.info.get_tokenizer(), IMAGE_PLACEHOLDER, add_special_tokens=False)
        return [PromptReplacement(modality="image", target=placeholder, replacement=image_block)]

    def _apply_prompt_updates_via_text(
        self,
        token_ids: list[int],
        mm_prompt_updates,
        *,
        encode_segments_separately: bool = False,
    ):
        """vLLM's text-space placeholder replacement with an exact decode.

        `<image>` is plain text to InternLM2's tokenizer and merges with its neighbours ("\\n<image>\\n" ->
        `<`, `image`, `>\\n`), so vLLM's token matching misses it and it falls back to decoding the prompt, editing
        the text and encoding it again. The tokenizer's own decoder applies the release's clean-up (" ." -> "."),
        which would change the prompt; this is the same procedure with a decoder that returns the encoded text
        exactly (vLLM 0.32's `BaseMultiModalProcessor._apply_prompt_updates_via_text`, otherwise unchanged).
        """
        tokenizer = self.info.get_tokenizer()
        exact = self.info.exact_decoder
        prompt_text = exact.decode(token_ids, skip_special_tokens=False)
        matched_updates, result = _plan_prompt_updates_with(
            mm_prompt_updates,
            lambda update, start_idx: self._iter_text_matches(update, prompt_text, tokenizer, start_idx=start_idx),
        )
        pieces, previous_end = [], 0
        for matched in matched_updates:
            update, match = matched.update, matched.match
            insert_at = match.end_idx if update.mode == UpdateMode.INSERT else match.start_idx
            pieces.append(prompt_text[previous_end:insert_at])
            pieces.append(exact.decode(update.content.full, skip_special_tokens=False))
            previous_end = match.end_idx
        pieces.append(prompt_text[previous_end:])
        if encode_segments_separately:
            new_token_ids = [i for text in pieces for i in tokenizer.encode(text, add_special_tokens=False)]
        else:
            new_token_ids = tokenizer.encode("".join(pieces), add_special_tokens=False)
        return new_token_ids, result
