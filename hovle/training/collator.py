"""Chat-format samples -> padded model inputs with labels on the assistant replies only.

A sample is `{"messages": [...chat messages...], "images": [PIL images or paths, in placeholder order]}`. The
collator renders each chat with the processor's template, expands the image placeholders (any tile count per
sample), tokenizes with left padding, and supervises exactly the tokens of each assistant reply and its closing
`<|im_end|>`; everything else (system, user turns, image tokens, padding) is `-100`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

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
        encoded = self.processor.tokenizer(
            expanded, padding=True, padding_side="left", return_offsets_mapping=True, return_tensors="pt"
        )
        labels = torch.full_like(encoded["input_ids"], -100)
        for row, text in enumerate(expanded):
            spans = assistant_spans(text)
            for position, (begin, _) in enumerate(encoded["offset_mapping"][row].tolist()):
                real = bool(encoded["attention_mask"][row, position])
                # BOS has an empty (0, 0) offset; only real tokens that start inside a reply are supervised.
                if real and any(a <= begin < b for a, b in spans):
                    labels[row, position] = encoded["input_ids"][row, position]
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        if pixel_values is not None:
            batch["pixel_values"] = torch.from_numpy(pixel_values)
        return batch
