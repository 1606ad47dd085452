"""Chat-format samples -> padded model inputs with labels on the assistant replies only.

A sample is `{"messages": [...chat messages...], "images": [PIL images or paths, in placeholder order]}`. The
collator renders each chat with the processor's template, expands the image placeholders (any tile count per
sample), tokenizes with left padding, and supervises exactly the tokens of each assistant reply and its closing
`<|im_end|>`; everything else (system, user turns, image tokens, padding) is `-100`.

A sample with nothing to supervise (no assistant reply) raises a `ValueError` naming it (by its `_source`,
`file:line`, when it came from `JsonLinesDataset`, else by its place in the batch), even when other samples of the
batch have labels. It is not skipped: a batch whose labels are all `-100` gives a loss of 0/0 = `nan` (the mean over
no tokens, or the sum divided by the Trainer's `num_items_in_batch` of 0), which the Trainer would fold silently
into its running loss and the gradients; and a chat without a reply is a mistake in the data, which the error
should point at rather than hide. `hovle train` refuses such lines before training starts (`checks.check_data`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..processing_hovle import bos_already_in

ASSISTANT_OPENING = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of every assistant reply, its `<|im_end|>` included."""
    spans = []
    for match in re.finditer(re.escape(ASSISTANT_OPENING), text):
        end = text.find(END_OF_TURN, match.end())
        if end != -1:
            spans.append((match.end(), end + len(END_OF_TURN)))
    return spans


class HoVLEChatCollator:
    def __init__(self, processor, max_tiles: int | None = None):
        self.processor = processor
        self.max_tiles = max_tiles

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [self.processor.apply_chat_template(s["messages"], tokenize=False) for s in samples]
        images = [list(s.get("images") or []) for s in samples]
        expanded, pixel_values = self.processor.expand_texts(prompts, images, max_tiles=self.max_tiles)
        tokenizer = self.processor.tokenizer
        encoded = tokenizer(
            expanded,
            padding=True,
            padding_side="left",
            return_offsets_mapping=True,
            return_tensors="pt",
            # The rendered chat starts with the BOS the template writes: no second one.
            add_special_tokens=not bos_already_in(tokenizer, expanded),
        )
        labels = torch.full_like(encoded["input_ids"], -100)
        for row, text in enumerate(expanded):
            spans = assistant_spans(text)
            for position, (begin, _) in enumerate(encoded["offset_mapping"][row].tolist()):
                real = bool(encoded["attention_mask"][row, position])
                # BOS has an empty (0, 0) offset; only real tokens that start inside a reply are supervised.
                if real and any(a <= begin < b for a, b in spans):
                    labels[row, position] = encoded["input_ids"][row, position]
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
            batch["pixel_values"] = torch.from_numpy(pixel_values)
        return batch
