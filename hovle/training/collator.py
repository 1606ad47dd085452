"""Chat-format samples -> padded model inputs with labels on the assistant replies only.

A sample is `{"messages": [...chat messages...], "images": [PIL images or paths, in placeholder order]}`. The
collator has the processor render each chat with its template, expand the image placeholders (any tile count per
sample) and tokenize with left padding, and supervises exactly the tokens the processor marks as assistant replies
(the template's `{% generation %}` blocks: each reply and its closing `<|im_end|>`, never chat markup a user quoted);
everything else (system, user turns, image tokens, padding) is `-100`.

A sample with nothing to supervise (no assistant reply) raises a `ValueError` naming it (by its `_source`,
`file:line`, when it came from `JsonLinesDataset`, else by its place in the batch), even when other samples of the
batch have labels. It is not skipped: a batch whose labels are all `-100` gives a loss of 0/0 = `nan` (the mean over
no tokens, or the sum divided by the Trainer's `num_items_in_batch` of 0), which the Trainer would fold silently
into its running loss and the gradients; and a chat without a reply is a mistake in the data, which the error
should point at rather than hide. `hovle train` refuses such lines before training starts (`checks.check_data`).
"""

from __future__ import annotations

from typing import Any

import torch


class HoVLEChatCollator:
    def __init__(self, processor, max_tiles: int | None = None):
        self.processor = processor
        self.max_tiles = max_tiles

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # The processor owns the reply spans: the chat template's `{% generation %}` blocks, never a text search.
        encoded = self.processor.encode_chats_with_reply_mask(
            [s["messages"] for s in samples],
            [list(s.get("images") or []) for s in samples],
            max_tiles=self.max_tiles,
            typed_placeholders=True,  # the data format: `<image>` in a message is a placeholder (see checks.py)
        )
        labels = torch.where(encoded["assistant_masks"].bool(), encoded["input_ids"], -100)
        pixel_values = encoded.get("pixel_values")
        # The loss predicts token t from the tokens before it, so a label on the first position counts for nothing.
        unsupervised = [row for row in range(len(samples)) if not (labels[row, 1:] != -100).any()]
        if unsupervised:
            names = ", ".join(samples[row].get("_source") or f"sample {row} of the batch" for row in unsupervised)
            raise ValueError(
                f"HoVLEChatCollator: nothing to supervise in {names}: no assistant reply, so every label would be "
                "-100 and the loss nan; give each chat at least one assistant message"
            )
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        return batch
