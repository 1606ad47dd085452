"""The original release's chat API: `model.chat(tokenizer, pixel_values, question, generation_config, history=None,
return_history=False, num_patches_list=None)` and `model.batch_chat(...)`, as code written for `OpenGVLab/HoVLE` calls
them. Thin wrappers: the chat template and the processor's placeholder expansion, then `generate()`; replies are cut
at `<|im_end|>` and decoded without special tokens, as the release did.

Turn for turn as the release: `chat()` adds `<image>\\n` to a question only on the first turn (`history is None`)
and keeps the question with it in the history; the images of a call fill the first `<image>` placeholders of the
whole conversation, in order, and a placeholder left over stays plain text (so a text-only follow-up after an
image turn works); the history list passed in is extended in place and returned. `batch_chat()` gives each
question one image of `num_patches_list[i]` tiles (`image_counts` is the release's old name for it).

A mixin of `HoVLEForConditionalGeneration`; shipped as remote code beside the model. It imports the processor's
helpers only when called, so loading the model never loads the processor.
"""

from __future__ import annotations

import copy
import numbers

import torch
from transformers import GenerationConfig

# The release's keyword arguments for its token names; the processor owns these tokens, so only their values work.
RELEASE_IMAGE_TOKENS = {"IMG_START_TOKEN": "<img>", "IMG_END_TOKEN": "</img>", "IMG_CONTEXT_TOKEN": "<IMG_CONTEXT>"}
# generate() checks few settings' types itself (a string max_new_tokens fails deep inside with a TypeError, a
# negative top_k only once sampling starts): the common ones are checked here, naming the setting.
WHOLE_NUMBER_SETTINGS = {
    "max_new_tokens": 1,
    "max_length": 1,
    "min_new_tokens": 0,
    "min_length": 0,
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "top_k": 0,
    "no_repeat_ngram_size": 0,
}
POSITIVE_SETTINGS = ("temperature", "repetition_penalty")
PROBABILITY_SETTINGS = ("top_p", "min_p", "typical_p")
FLAG_SETTINGS = ("do_sample", "use_cache")


def check_generation_settings(settings: dict) -> None:
    """A `ValueError` naming the first setting of a wrong type or out of range (None means "not set")."""

    def refuse(name, wanted):
        raise ValueError(f"generation_config: {name} must be {wanted}, got {settings[name]!r}")

    for name, least in WHOLE_NUMBER_SETTINGS.items():
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least):
            refuse(name, f"a whole number of at least {least}")
    for name in (*POSITIVE_SETTINGS, *PROBABILITY_SETTINGS):
        value = settings.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
            refuse(name, "a number")
        if name in POSITIVE_SETTINGS and value <= 0:
            refuse(name, "greater than 0")
        if name in PROBABILITY_SETTINGS and not 0 <= value <= 1:
            refuse(name, "between 0 and 1")
    for name in FLAG_SETTINGS:
        if settings.get(name) is not None and not isinstance(settings[name], bool):
            refuse(name, "True or False")


def generate_settings(generation_config, end_of_turn: int, pad_token_id) -> dict:
    """`generate()` keyword arguments from the release's `generation_config` (a dict of `generate()` settings, as the
    release takes it, or a `GenerationConfig`); generation stops at `<|im_end|>` unless the settings name an eos.
    The caller's object is not modified (the release wrote `eos_token_id` into the dict it was given)."""
    if generation_config is None:
        generation_config = {}
    if isinstance(generation_config, GenerationConfig):
        config = copy.deepcopy(generation_config)
        check_generation_settings(vars(config))
        if config.eos_token_id is None:
            config.eos_token_id = end_of_turn
        if config.pad_token_id is None:
            config.pad_token_id = pad_token_id
        return {"generation_config": config}
    if not isinstance(generation_config, dict):
        raise ValueError(
            "generation_config must be a dict of generate() settings (e.g. {'max_new_tokens': 64}) or a "
            f"GenerationConfig, got {type(generation_config).__name__}"
        )
    check_generation_settings(generation_config)
    return {"eos_token_id": end_of_turn, "pad_token_id": pad_token_id, **generation_config}


def check_release_keywords(image_tokens: dict) -> None:
    for name, value in image_tokens.items():
        if value != RELEASE_IMAGE_TOKENS[name]:
            raise ValueError(f"{name}={value!r} is not supported: the processor writes {RELEASE_IMAGE_TOKENS[name]!r}")


def fill_image_placeholders(processor, prompt: str, tiles: list[int]) -> str:
    """The release's `query.replace('<image>', image_tokens, 1)` per image: the images fill the first placeholders of
    the whole conversation in order (the processor's `expand_placeholders`); placeholders left over stay plain text."""
    found = prompt.count(processor.image_placeholder)
    if found < len(tiles):
        raise ValueError(
            f"The conversation has {found} {processor.image_placeholder} placeholders for {len(tiles)} images: with a "
            f"history, write {processor.image_placeholder} where the image goes (the release adds it only on the "
            "first turn)"
        )
    return processor.expand_placeholders(prompt, tiles, keep_extra=True)


def check_history(history) -> list:
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not all(
        isinstance(turn, (tuple, list)) and len(turn) == 2 and all(isinstance(text, str) for text in turn)
        for turn in history
    ):
        raise ValueError("history must be a list of (question, answer) pairs of strings, as chat() returns it")
    return history


class HoVLEChatMixin:
    """`chat()` and `batch_chat()` for a HoVLE generation model (uses `generate`, `config`, `device`, `dtype`)."""

    def chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict | GenerationConfig | None = None,
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        num_patches_list: list[int] | None = None,
        IMG_START_TOKEN: str = "<img>",  # noqa: N803 - the release's keyword names
        IMG_END_TOKEN: str = "</img>",  # noqa: N803
        IMG_CONTEXT_TOKEN: str = "<IMG_CONTEXT>",  # noqa: N803
        verbose: bool = False,
    ):
        """`model.chat(tokenizer, pixel_values, question, generation_config)` as in `OpenGVLab/HoVLE`: the reply, or
        `(reply, history)` with `return_history=True`."""
        from .processing_hovle import add_missing_placeholders

        check_release_keywords(
            {"IMG_START_TOKEN": IMG_START_TOKEN, "IMG_END_TOKEN": IMG_END_TOKEN, "IMG_CONTEXT_TOKEN": IMG_CONTEXT_TOKEN}
        )
        if not isinstance(question, str):
            raise ValueError(f"question must be a string, got {type(question).__name__}")
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if history is None and pixel_values is not None:
            question = add_missing_placeholders(question, len(num_patches_list))
        turns = check_history(history)
        replies = self._generate_replies(
            tokenizer, pixel_values, [turns], [question], [list(num_patches_list)], generation_config, verbose
        )
        history = turns if isinstance(turns, list) else list(turns)
        history.append((question, replies[0]))
        return (replies[0], history) if return_history else replies[0]

    def batch_chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        questions: list[str],
        generation_config: dict | GenerationConfig | None = None,
        num_patches_list: list[int] | None = None,
        history=None,
        return_history: bool = False,
        IMG_START_TOKEN: str = "<img>",  # noqa: N803 - the release's keyword names
        IMG_END_TOKEN: str = "</img>",  # noqa: N803
        IMG_CONTEXT_TOKEN: str = "<IMG_CONTEXT>",  # noqa: N803
        verbose: bool = False,
        image_counts: list[int] | None = None,
    ) -> list[str]:
        """`model.batch_chat(tokenizer, pixel_values, questions, generation_config, num_patches_list=...)`: question
        `i` gets one image of `num_patches_list[i]` tiles (`<image>\\n` prepended unless it has one), or none when
        `pixel_values` is None."""
        from .processing_hovle import add_missing_placeholders

        if history is not None or return_history:
            raise NotImplementedError("batch_chat has no history (as in the original release): use chat()")
        check_release_keywords(
            {"IMG_START_TOKEN": IMG_START_TOKEN, "IMG_END_TOKEN": IMG_END_TOKEN, "IMG_CONTEXT_TOKEN": IMG_CONTEXT_TOKEN}
        )
        if isinstance(questions, str) or not questions or not all(isinstance(q, str) for q in questions):
            raise ValueError("batch_chat needs a non-empty list of question strings")
        if image_counts is not None:  # the release's deprecated name for num_patches_list
            num_patches_list = image_counts
        if pixel_values is not None and num_patches_list is None and len(questions) == 1:
            num_patches_list = [pixel_values.shape[0]]
        if pixel_values is None and num_patches_list is None:
            tiles = [[] for _ in questions]  # a text-only batch (the release needed a num_patches_list even here)
        else:
            if num_patches_list is None or len(num_patches_list) != len(questions):
                raise ValueError(
                    f"batch_chat got {len(questions)} questions but num_patches_list "
                    f"{'is missing' if num_patches_list is None else f'has {len(num_patches_list)} entries'}: give "
                    "the tile count of each question's image"
                )
            # Without pixel_values the release's num_patches_list only drove its loop: no image goes in.
            tiles = [[count] if pixel_values is not None else [] for count in num_patches_list]
            if pixel_values is not None:
                questions = [add_missing_placeholders(q, 1) for q in questions]
        return self._generate_replies(
            tokenizer, pixel_values, [[] for _ in questions], questions, tiles, generation_config, verbose
        )

    def _generate_replies(
        self, tokenizer, pixel_values, histories, questions, tiles_per_question, generation_config, verbose
    ):
        from .processing_hovle import END_OF_TURN, HoVLEProcessor, decode_reply

        counts = [count for tiles in tiles_per_question for count in tiles]
        if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in counts):
            raise ValueError(f"num_patches_list must hold whole numbers of tiles of at least 1, got {counts}")
        total = pixel_values.shape[0] if pixel_values is not None else 0
        if total != sum(counts):
            raise ValueError(f"pixel_values has {total} tiles but num_patches_list adds up to {sum(counts)}")
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        settings = generate_settings(generation_config, end_of_turn, tokenizer.pad_token_id)
        system = getattr(self, "system_message", None)  # the release's `model.system_message`, when a caller sets it
        conversations = []
        for history, question in zip(histories, questions, strict=True):
            messages = [{"role": "system", "content": system}] if system is not None else []
            for old_question, old_answer in history:
                messages += [{"role": "user", "content": old_question}, {"role": "assistant", "content": old_answer}]
            conversations.append(messages + [{"role": "user", "content": question}])
        # The processor owns the prompt: the release's template (whatever template the tokenizer carries), control
        # tokens typed in questions, answers or the system message kept as text, `<image>` a placeholder as in the
        # release, the image blocks and the BOS.
        processor = HoVLEProcessor.from_model_config(tokenizer, self.config)
        prompts, _ = processor.render_chats(conversations, typed_placeholders=True, add_generation_prompt=True)
        prompts = [fill_image_placeholders(processor, p, t) for p, t in zip(prompts, tiles_per_question, strict=True)]
        inputs = processor.tokenize_prompts(prompts, return_tensors="pt", padding=True, padding_side="left")
        inputs = inputs.to(self.device)
        if pixel_values is not None:
            if verbose:
                print(f"dynamic ViT batch size: {pixel_values.shape[0]}")
            pixel_values = pixel_values.to(self.device, self.dtype)
        output = self.generate(**inputs, pixel_values=pixel_values, **settings)
        replies = [decode_reply(tokenizer, row) for row in output[:, inputs["input_ids"].shape[1] :].tolist()]
        if verbose:
            for question, reply in zip(questions, replies, strict=False):
                print(question, reply)
        return replies


__all__ = ["HoVLEChatMixin"]
