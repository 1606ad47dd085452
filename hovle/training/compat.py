"""transformers 5.17 .. 5.2x: every version difference the training code handles, in one place."""

from __future__ import annotations

from transformers import TrainingArguments

# `TrainingArguments.gradient_checkpointing` became `activation_checkpointing` in 5.2x (the old name warns there).
CHECKPOINTING_FIELD = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def image_features_tensor(output):
    """`get_image_features` returns a model output (`pooler_output`) in 5.2x, a bare tensor before."""
    return getattr(output, "pooler_output", output)
