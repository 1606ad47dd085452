"""HoVLE's multimodal processing for vLLM: tiling, placeholder expansion, profiling inputs.

vLLM tokenizes the prompt itself and then replaces each `<image>` placeholder by the image's block
(`<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>`). The transformers processor loaded from the served folder
(`HoVLEProcessor`) owns everything about images and their tokens: the tiles (`tile_image`: InternVL's dynamic tiling,
thumbnail, ImageNet normalisation), how many tokens an image takes (`_get_num_multimodal_tokens`) and the block's ids
(`image_block_ids`), so both paths give the same pixels and tokens.
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
)

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
        # A tuple makes vLLM load through `AutoProcessor`, which picks by config class: a converted folder's
        # `HoVLEProcessor`, or for a release (no processor files) the one `hovle.release_processing` builds from its
        # tokenizer files and config; both are a `HoVLEProcessor`, which vLLM checks.
        return self.ctx.get_hf_processor((HoVLEProcessor,), **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "images_kwargs": {MAX_TILES}}

    @cached_property
    def exact_decoder(self):
        """The tokenizer's backend without the release's decoding clean-up (built once: it copies the vocabulary)."""
        return exact_decoding_backend(self.get_tokenizer())

    def get_num_image_tokens(self, *, image_width: int, image_height: int, max_tiles: int | None = None) -> dict:
        """The processor's count for an image of this size: `num_image_patches` (tiles, the thumbnail included) and
        `num_image_tokens` (its whole block, `<img>` and `</img>` included)."""
        options = {} if max_tiles is None else {MAX_TILES: max_tiles}
        counts = self.get_hf_processor()._get_num_multimodal_tokens([(image_height, image_width)], **options)
        return {key: counts[key][0] for key in ("num_image_patches", "num_image_tokens")}

    def get_image_size_with_most_features(self) -> ImageSize:
        """A strip of `max_patches` tiles side by side: the most tiles one image can become (plus the thumbnail).
        Profiling calls this at start-up, so a server `max_tiles` the processor refuses stops the server there."""
        self.max_tiles({})
        image_processor = self.get_hf_processor().image_processor
        side = image_processor.size["height"]
        return ImageSize(width=side * image_processor.max_patches, height=side)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        width, height = self.get_image_size_with_most_features()
        return {"image": self.get_num_image_tokens(image_width=width, image_height=height)["num_image_tokens"]}


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
                num_tiles = self.info.get_num_image_tokens(
                    image_width=size.width,
                    image_height=size.height,
                    max_tiles=self.info.max_tiles(hf_processor_mm_kwargs),
                )["num_image_patches"]
            # Only the <IMG_CONTEXT> positions take image embeddings; <img> and </img> stay text.
            return PromptUpdateDetails.select_token_id(processor.image_block_ids(num_tiles), processor.image_token_id)

        processor = self.info.get_hf_processor()
        marker = [processor.start_image_token_id, processor.end_image_token_id]
        return [PromptReplacement(modality="image", target=marker, replacement=image_block)]

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        """The tokenized prompt with each `<image>` as the pair `<img>` `</img>`, which `_get_prompt_updates` fills.

        `<image>` is plain text to InternLM2's tokenizer and merges with its neighbours ("\\n<image>\\n" ->
        `<`, `image`, `>\\n`), so vLLM cannot find it among the tokens and would fall back to its private text-space
        replacement, which decodes with the tokenizer's clean-up (" ." -> ".") and so would change the prompt. This
        is vLLM's hook for a prompt the HF processor transforms: the text is decoded exactly and encoded again with
        each placeholder written as `<img></img>`. `<img>` and `</img>` are special tokens, so the text around them
        is split there exactly as in the transformers processor's expanded text, and vLLM's token matching then
        puts the whole block between them: the ids equal the transformers processor's. A placeholder beyond the
        request's images stays as that empty pair (the transformers processor refuses such a prompt; this hook does not
        see the images)."""
        processor = self.info.get_hf_processor()
        text = self.info.exact_decoder.decode(prompt, skip_special_tokens=False)
        if IMAGE_PLACEHOLDER not in text:
            return prompt
        marker = processor.start_image_token + processor.end_image_token
        return self.info.get_tokenizer().encode(text.replace(IMAGE_PLACEHOLDER, marker), add_special_tokens=False)
