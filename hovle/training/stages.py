"""The paper's three training stages as presets of which parameters train (arXiv:2412.16158, section 3.3).

1. distillation: only the holistic embedding module trains (its data and loss differ: unpaired images and
   random text, cosine similarity to a teacher; the preset only fixes what trains).
2. alignment: the embedding module trains, the LLM (and its head) stay frozen; next-token prediction.
3. instruction tuning: everything trains.
"""

from __future__ import annotations

from torch import nn

STAGES = {1: "distillation", 2: "alignment", 3: "instruction tuning"}


def apply_stage(model: nn.Module, stage: int) -> dict[str, int]:
    """Set `requires_grad` for `stage` on a `HoVLEForConditionalGeneration`; returns trainable/frozen counts."""
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; choose one of {sorted(STAGES)} ({STAGES})")
    embedding = model.model.embedding_model
    for parameter in model.parameters():
        parameter.requires_grad = stage == 3
    for parameter in embedding.parameters():
        parameter.requires_grad = True
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}
