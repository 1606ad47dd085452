"""Configuration of HoVLE, the monolithic vision-language model of arXiv:2412.16158 (CVPR 2025).

A `HoVLEConfig` holds two sub-configs:

* `embedding_config` (`HoVLEEmbeddingConfig`): the holistic embedding module. Its transformer layers are plain
  Llama decoder layers, so the config *is* a `LlamaConfig` (layers, heads, rope, eps, ...) extended with the image
  side: tile size, patch size, pixel-shuffle ratio and where the shuffle happens (`pre` or `post`).
* `text_config` (`LlamaConfig`): the LLM (InternLM2-1.8B in the release, converted to Llama layout).

This file imports only the standard library, torch-free transformers pieces and nothing else of this repo, so a
converted Hub folder can ship it as remote code.
"""

from __future__ import annotations

from typing import Literal

from transformers import LlamaConfig, PretrainedConfig

PixelShuffleLocation = Literal["pre", "post"]

# The fields both stacks must agree on (the embedding module's output is the LLM's input), and the error for each.
_SHARED_FIELDS = {
    "hidden_size": "The embedding module's width ({}) must equal the LLM's ({}): its output is the LLM's input",
    "vocab_size": "The embedding module's text table ({} rows) must cover the LLM vocabulary ({})",
}


class HoVLEEmbeddingConfig(LlamaConfig):
    r"""
    The holistic embedding module: a patch embedding for image tiles, a text-token table, `num_hidden_layers`
    causal Llama decoder layers over the interleaved sequence and a pixel-shuffle projector. No final norm.

    Vision-side fields (the Llama fields keep their `LlamaConfig` meaning):
        image_size: side of one square tile in pixels (448 in the release).
        patch_size: side of one patch; `(image_size // patch_size) ** 2` patch tokens per tile.
        num_channels: image channels.
        downsample_ratio: pixel-shuffle scale; 0.5 merges 2x2 patches into one token of 4x the width.
        pixel_shuffle_loc: `pre` shuffles+projects the patches before the decoder layers (HoVLE);
            `post` runs the layers on all patches and shuffles+projects their outputs (the HD code path).
        normalize_output: L2-normalise the module's output (`normalize_encoder_output` of the original).
    """

    model_type = "hovle_embedding"
    base_config_key = "embedding_config"

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    downsample_ratio: float = 0.5
    pixel_shuffle_loc: str = "pre"
    normalize_output: bool = False

    def __post_init__(self, **kwargs):
        if self.pixel_shuffle_loc not in ("pre", "post"):
            raise ValueError(f"pixel_shuffle_loc must be 'pre' or 'post', got {self.pixel_shuffle_loc!r}")
        shuffle = self.shuffle_factor
        if abs(shuffle * self.downsample_ratio - 1) > 1e-6:
            raise ValueError(f"downsample_ratio must be 1/n for an integer n, got {self.downsample_ratio}")
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % shuffle:
            raise ValueError(
                f"image_size {self.image_size} must split into patches of {self.patch_size} whose grid is a "
                f"multiple of the pixel-shuffle factor {shuffle}"
            )
        super().__post_init__(**kwargs)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def shuffle_factor(self) -> int:
        """How many patches per side merge into one token (2 for `downsample_ratio=0.5`)."""
        return round(1 / self.downsample_ratio)

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens one tile becomes after the pixel shuffle (256 in the release)."""
        return (self.patches_per_side // self.shuffle_factor) ** 2


class HoVLEConfig(PretrainedConfig):
    r"""
    Configuration of [`HoVLEForConditionalGeneration`].

    Args:
        embedding_config: the holistic embedding module ([`HoVLEEmbeddingConfig`] or its dict).
        text_config: the LLM ([`LlamaConfig`] or its dict).
        image_token_id: id of `<IMG_CONTEXT>`, the placeholder each image token replaces.
        image_start_token_id / image_end_token_id: ids of `<img>` / `</img>` around each image.
        template, dynamic_image_size, use_thumbnail, min_dynamic_patch, max_dynamic_patch: the original release's
            prompt-template name and tiling settings; kept so a model exports back to the original layout unchanged.
    """

    model_type = "hovle"
    sub_configs = {"embedding_config": HoVLEEmbeddingConfig, "text_config": LlamaConfig}

    embedding_config: dict | HoVLEEmbeddingConfig | None = None
    text_config: dict | LlamaConfig | None = None
    image_token_id: int = 92546
    image_start_token_id: int = 92544
    image_end_token_id: int = 92545
    template: str = "internlm2-chat"
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.embedding_config, dict):
            self.embedding_config = HoVLEEmbeddingConfig(**self.embedding_config)
        elif self.embedding_config is None:
            self.embedding_config = HoVLEEmbeddingConfig()
        if isinstance(self.text_config, dict):
            text = {k: v for k, v in self.text_config.items() if k != "model_type"}
            self.text_config = LlamaConfig(**text)
        elif self.text_config is None:
            self.text_config = LlamaConfig()
        for field, message in _SHARED_FIELDS.items():
            embedding, text = getattr(self.embedding_config, field), getattr(self.text_config, field)
            if embedding != text:
                raise ValueError(message.format(embedding, text))
        super().__post_init__(**kwargs)

    @property
    def tokens_per_tile(self) -> int:
        return self.embedding_config.tokens_per_tile


__all__ = ["HoVLEConfig", "HoVLEEmbeddingConfig"]
