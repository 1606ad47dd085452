"""The original release's chat API: `model.chat(tokenizer, pixel_values, question, generation_config, history=None,
return_history=False, num_patches_list=None)` and `model.batch_chat(...)`, as code written for `OpenGVLab/HoVLE` calls
them. Thin wrappers: the chat template and the processor's placeholder expansion, then `generate()`; replies are cut
at `<|im_end|>` and decoded without special tokens, as the release did.

A mixin of `HoVLEForConditionalGeneration`; shipped as remote code beside the model. It imports the processor's
helpers only when called, so loading the model never loads the processor.
"""

from __future__ import annotations

import torch


class HoVLEChatMixin:
    """`chat()` and `batch_chat()` for a HoVLE generation model (uses `generate`, `config`, `device`, `dtype`)."""

    def chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict | None = None,
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        num_patches_list: list[int] | None = None,
        **legacy_kwargs,
    ):
        """`model.chat(tokenizer, pixel_values, question, generation_config)` as in `OpenGVLab/HoVLE`."""
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        replies = self._generate_replies(
            tokenizer, pixel_values, [question], [num_patches_list], generation_config, [history or []]
        )
        if return_history:
            return replies[0], [*(history or []), (question, replies[0])]
        return replies[0]

    def batch_chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        questions: list[str],
        generation_config: dict | None = None,
        num_patches_list: list[int] | None = None,
        history=None,
        return_history: bool = False,
        image_counts: list[int] | None = None,
        **legacy_kwargs,
    ) -> list[str]:
        """`model.batch_chat(tokenizer, pixel_values, questions, generation_config, num_patches_list=...)`: one
        image per question (`num_patches_list[i]` tiles), or `image_counts[i]` images per question."""
        if history is not None or return_history:
            raise NotImplementedError("batch_chat has no history (as in the original release)")
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        counts = image_counts or ([1] * len(questions) if num_patches_list else [0] * len(questions))
        if sum(counts) != len(num_patches_list):
            raise ValueError(f"{len(num_patches_list)} images (num_patches_list) for image counts {counts}")
        per_question, start = [], 0
        for count in counts:
            per_question.append(list(num_patches_list[start : start + count]))
            start += count
        return self._generate_replies(
            tokenizer, pixel_values, questions, per_question, generation_config, [[] for _ in questions]
        )

    def _generate_replies(self, tokenizer, pixel_values, questions, tiles_per_question, generation_config, histories):
        from .processing_hovle import (
            CHAT_TEMPLATE,
            END_OF_TURN,
            add_missing_placeholders,
            bos_already_in,
            decode_reply,
            expand_image_placeholders,
        )

        if pixel_values is not None and pixel_values.shape[0] != sum(map(sum, tiles_per_question)):
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} tiles but num_patches_list adds up to "
                f"{sum(map(sum, tiles_per_question))}"
            )
        template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        prompts = []
        for question, tiles, history in zip(questions, tiles_per_question, histories, strict=True):
            messages = [
                m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
            ]
            messages.append({"role": "user", "content": add_missing_placeholders(question, len(tiles))})
            prompt = tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
            prompts.append(expand_image_placeholders(prompt, tiles, self.config.tokens_per_tile))
        inputs = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=not bos_already_in(tokenizer, prompts),
        ).to(self.device)
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        settings = {"eos_token_id": end_of_turn, "pad_token_id": tokenizer.pad_token_id, **(generation_config or {})}
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.dtype)
        output = self.generate(**inputs, pixel_values=pixel_values, **settings)
        return [decode_reply(tokenizer, row) for row in output[:, inputs["input_ids"].shape[1] :].tolist()]


__all__ = ["HoVLEChatMixin"]
