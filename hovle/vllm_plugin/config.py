"""What vLLM cannot serve, refused before the engine starts; the context length vLLM derives, corrected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.logger import init_logger
from vllm.model_executor.models.config import VerifyAndUpdateConfig

if TYPE_CHECKING:
    from vllm.config import ModelConfig

logger = init_logger(__name__)

HD_REFUSAL = (
    "HoVLE-HD (embedding_config.pixel_shuffle_loc='post') cannot be served by vLLM: its embedding module runs over "
    "every patch of a tile ({patches} per tile) while the LLM reads {tokens} tokens per tile, two token streams of "
    "different lengths that one vLLM sequence (one KV-cache slot per token) cannot hold. Run it with transformers "
    "(`hovle chat`, `pipeline('image-text-to-text')`, `generate()`)."
)


def context_limit(hf_config) -> int:
    """The longest sequence vLLM serves exactly: the LLM's `max_position_embeddings`.

    InternLM2's dynamic NTK rope keeps the trained frequencies up to that length and re-scales every position's
    frequencies once a sequence passes it, a per-sequence change a shared batch cannot follow. vLLM multiplies the
    context by the rope `factor` (65,536 for the release) but its rope table has only `max_position_embeddings` rows.
    """
    return int(hf_config.text_config.max_position_embeddings)


def use_release_generation_config(model_config: ModelConfig) -> None:
    """vLLM reads a model's stop tokens from its `generation_config.json` only, and a release has none: it would stop
    at `</s>` alone and run on past `<|im_end|>`. For a release without one (and no `--generation-config` folder
    given), point vLLM at the one `hovle convert` writes for it (`hovle.release_processing`)."""
    from hovle.release_loading import RELEASE_ARCHITECTURE
    from hovle.release_processing import release_generation_config_folder

    if model_config.architecture != RELEASE_ARCHITECTURE or model_config.generation_config not in ("auto", "vllm"):
        return
    folder = release_generation_config_folder(
        model_config.model, model_config.hf_config, revision=model_config.revision
    )
    if folder is not None:
        logger.info("HoVLE: the release has no generation_config.json; replies end at <|im_end|> (%s)", folder)
        model_config.generation_config = str(folder)


class HoVLEConfigCheck(VerifyAndUpdateConfig):
    """Runs where vLLM builds the model config (`verify_and_update_model_config`), in the process the user started."""

    @staticmethod
    def verify_and_update_model_config(model_config: ModelConfig) -> None:
        hf_config = model_config.hf_config
        embedding = hf_config.embedding_config
        if embedding.pixel_shuffle_loc != "pre":
            raise ValueError(HD_REFUSAL.format(patches=embedding.patches_per_side**2, tokens=hf_config.tokens_per_tile))
        use_release_generation_config(model_config)
        limit = context_limit(hf_config)
        if model_config.max_model_len <= limit:
            return
        if model_config.original_max_model_len is not None:
            raise ValueError(
                f"max_model_len={model_config.max_model_len} is longer than HoVLE's context of {limit} tokens, the "
                "most vLLM serves exactly (InternLM2's dynamic rope re-scales every position beyond it, per "
                f"sequence): pass --max-model-len {limit} or less"
            )
        logger.info(
            "HoVLE: max_model_len %d -> %d (the LLM's context; vLLM's default multiplies it by the rope factor)",
            model_config.max_model_len,
            limit,
        )
        model_config.max_model_len = limit
