"""Training stage I: distil the holistic embedding module (HoVLE paper, section 3.3).

The embedding module alone learns, on *unpaired* data, to map
* image tiles to a teacher's image features (a vision encoder + projector already in the LLM's space), and
* random text token sequences to the LLM's own input token embeddings,
with a negative-cosine-similarity loss per modality (here `1 - cos`, the same gradients, positive and falling).

Teacher: any model with `get_image_features(pixel_values)` whose features (after its projector) have the LLM's
width, e.g. transformers' native `InternVLModel`. Token counts must line up per tile: the teacher's
`(image_size / patch_size)^2 * downsample_ratio^2` must equal HoVLE's `tokens_per_tile` (both 256 for 448 px
tiles, patch 14, ratio 0.5); `check_teacher` verifies it on a dummy tile before training starts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from .compat import image_features_tensor


def teacher_image_features(teacher, pixel_values: torch.Tensor) -> torch.Tensor:
    """(tiles, tokens, hidden) from a transformers VLM/vision model's `get_image_features`."""
    config = getattr(teacher, "config", None)
    kwargs = {}
    for name in ("vision_feature_layer", "vision_feature_select_strategy"):
        if config is not None and getattr(config, name, None) is not None:
            kwargs[name] = getattr(config, name)
    output = teacher.get_image_features(pixel_values=pixel_values.to(teacher.dtype), **kwargs)
    return image_features_tensor(output)


def check_teacher(teacher, model) -> None:
    side = model.config.embedding_config.image_size
    dummy = torch.zeros(1, 3, side, side, device=next(teacher.parameters()).device)
    with torch.no_grad():
        features = teacher_image_features(teacher, dummy)
    tokens, width = features.shape[-2], features.shape[-1]
    if tokens != model.config.tokens_per_tile or width != model.config.text_config.hidden_size:
        raise ValueError(
            f"Teacher gives {tokens} tokens of width {width} per {side}px tile; HoVLE needs "
            f"{model.config.tokens_per_tile} tokens of width {model.config.text_config.hidden_size}"
        )


class DistillationCollator:
    """Unpaired samples: each is either `{"image": ...}` (one image, tiled) or `{"text_ids": [...]}` (random ids).

    Image samples become `<img><IMG_CONTEXT>*n</img>` sequences with their tiles; text samples are the ids. A sample
    with neither an image nor any id raises a `ValueError` (its text loss would average over nothing: `nan`).
    """

    def __init__(self, processor, max_tiles: int | None = None):
        self.processor = processor
        self.max_tiles = max_tiles

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, raw_ids = [], []
        for index, sample in enumerate(samples):
            if "image" in sample:
                images.append(sample["image"])
            elif sample.get("text_ids") is not None and len(sample["text_ids"]) > 0:
                raw_ids.append(list(sample["text_ids"]))
            else:  # an empty sequence has no position to average over: its loss would be nan
                name = sample.get("_source") or f"sample {index} of the batch"
                raise ValueError(f'DistillationCollator: {name} has neither "image" nor non-empty "text_ids"')
        batch: dict[str, torch.Tensor] = {}
        if images:  # the processor writes each image's block (and decides it gets no BOS)
            inputs = self.processor.encode_image_blocks(images, max_tiles=self.max_tiles)
            batch.update(image_input_ids=inputs["input_ids"], image_attention_mask=inputs["attention_mask"])
            batch["pixel_values"] = inputs["pixel_values"]
        if raw_ids:
            width = max(len(ids) for ids in raw_ids)
            pad = self.processor.tokenizer.pad_token_id
            ids = torch.full((len(raw_ids), width), pad)
            mask = torch.zeros((len(raw_ids), width), dtype=torch.long)
            for row, sample_ids in enumerate(raw_ids):
                ids[row, width - len(sample_ids) :] = torch.tensor(sample_ids)
                mask[row, width - len(sample_ids) :] = 1
            batch.update(text_input_ids=ids, text_attention_mask=mask)
        return batch


def distillation_losses(model, teacher, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`1 - cos` per modality, averaged over the image positions and over the (non-padding) text positions."""
    base = model.model if hasattr(model, "model") else model
    losses = {}
    if "image_input_ids" in batch:
        ids, mask = batch["image_input_ids"], batch["image_attention_mask"]
        student = base.embedding_model(ids, batch["pixel_values"], mask).last_hidden_state
        image_positions = ids == base.config.image_token_id
        with torch.no_grad():
            target = teacher_image_features(teacher, batch["pixel_values"]).reshape(-1, student.shape[-1])
        predicted = student[image_positions]
        losses["image"] = (1 - F.cosine_similarity(predicted.float(), target.float(), dim=-1)).mean()
    if "text_input_ids" in batch:
        ids, mask = batch["text_input_ids"], batch["text_attention_mask"]
        student = base.embedding_model(ids, None, mask).last_hidden_state
        with torch.no_grad():
            target = base.language_model.get_input_embeddings()(ids)  # the LLM's own token table
        valid = mask.bool()
        losses["text"] = (1 - F.cosine_similarity(student[valid].float(), target[valid].float(), dim=-1)).mean()
    return losses


class DistillationTrainer(Trainer):
    """A `Trainer` whose loss is the stage-I distillation loss; pass `teacher=` (kept frozen, in eval mode)."""

    def __init__(self, *args, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        if teacher is None:
            raise ValueError("DistillationTrainer needs a teacher model")
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses = distillation_losses(model, self.teacher, inputs)
        loss = sum(losses.values())
        return (loss, losses) if return_outputs else loss
