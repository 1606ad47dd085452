"""lmms-eval's `--model hovle`: HoVLE through its processor and batched `generate()`.

    lmms-eval --model hovle --model_args pretrained=./HoVLE-hf,batch_size=8 --tasks mmbench_en_dev,pope

Registered by the `lmms_eval.models` entry point (`hovle.evaluation.lmms_eval_manifest`). Each request's prompt is
the task's text as one user turn of the model's chat template (the release's `internlm2-chat` prompt, default
system message) with the document's images before it, as the original `chat()` placed them; `<image>` written in the
task's text marks the places instead. Replies are greedy unless the task asks for sampling, stop at `<|im_end|>` or
at the task's `until` strings, and are stripped, as the release's `chat()` returned them.

model_args: pretrained (folder or Hub id, required), batch_size (default 1), device (auto: CUDA when present), dtype
(auto|bfloat16|float16|float32), max_tiles (default 6), max_new_tokens (when the task gives none; default 1024),
system_prompt, trust_remote_code. Several GPUs: `accelerate launch -m lmms_eval ...` splits the documents.
Generation tasks only (`generate_until`); log-likelihood (multiple-choice scoring) is not implemented.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from ..commands import load_for_inference, to_model, torch_dtype
from ..processing_hovle import add_missing_placeholders, decode_reply

# Task generation settings that generate() takes as they are (others, e.g. `image_aspect_ratio`, are for other
# models and are ignored).
GENERATE_KEYS = ("max_new_tokens", "top_p", "top_k", "num_beams", "repetition_penalty", "length_penalty")
DEFAULT_MAX_NEW_TOKENS = 1024


def cut_at_stop_strings(text: str, until: list[str]) -> str:
    """The text before the first of the task's stop strings, as lmms-eval's own models cut their replies."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def generate_settings(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """`generate()` arguments for a task's `generation_kwargs`: greedy unless a temperature above 0 asks for
    sampling."""
    settings = {key: gen_kwargs[key] for key in GENERATE_KEYS if gen_kwargs.get(key) is not None}
    settings.setdefault("max_new_tokens", default_max_new_tokens)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if temperature > 0 and gen_kwargs.get("do_sample", True):
        settings.update(do_sample=True, temperature=temperature)
    else:
        settings["do_sample"] = False
    return settings


class HoVLE(lmms):
    """HoVLE for lmms-eval (a "simple" model: the task renders the question text, the model applies its template)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str = "auto",
        max_tiles: int = 6,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
        **unused,
    ) -> None:
        super().__init__()
        if unused:
            utils.eval_logger.warning(f"hovle: ignoring model_args {sorted(unused)}")
        torch_dtype(dtype)  # a wrong name is refused before the accelerator starts
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:  # data parallel: one model per process, documents split by rank
            device = f"cuda:{self.accelerator.local_process_index}"
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        loaded = load_for_inference(
            pretrained, device=device or "auto", dtype=dtype, trust_remote_code=trust_remote_code, announce=False
        )
        self._device = loaded.model.device
        self._model, self.processor = loaded.model, loaded.processor
        self.generate_kwargs: dict[str, Any] = loaded.generate_kwargs
        self.batch_size_per_device = int(batch_size)
        self.max_tiles = int(max_tiles)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self) -> torch.device:
        return self._device

    def prompt(self, context: str, num_images: int) -> str:
        """The chat-template prompt for one request, as the original `chat()` built it: the text as one user turn,
        the images where it writes `<image>`, else before it (the processor's `add_missing_placeholders`)."""
        messages = [{"role": "user", "content": add_missing_placeholders(context, num_images)}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        # Other control tokens in the task's text stay text; `<image>` is a placeholder when there are images.
        prompts, _ = self.processor.render_chats(
            [messages], typed_placeholders=num_images > 0, add_generation_prompt=True
        )
        return prompts[0]

    def images_of(self, doc_to_visual, doc_id: int, task: str, split: str) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [visual for visual in visuals or [] if visual is not None]
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise ValueError(f"hovle takes images; task {task} gave a {type(visual).__name__} (video or audio?)")
        return visuals

    @torch.inference_mode()
    def generate_batch(self, contexts: list[str], images: list[list[Image.Image]], gen_kwargs: dict) -> list[str]:
        """Greedy (or the task's) replies for a batch of requests that share their generation settings."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        prompts = [self.prompt(context, len(sample)) for context, sample in zip(contexts, images, strict=True)]
        inputs = self.processor(
            images=images if any(images) else None,
            text=prompts,
            max_tiles=self.max_tiles,
            padding=True,
            return_tensors="pt",
        )
        inputs = to_model(inputs, self._model)
        output = self._model.generate(
            **inputs,
            **generate_settings(gen_kwargs, self.max_new_tokens),
            **self.generate_kwargs,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [cut_at_stop_strings(decode_reply(self.tokenizer, row), until) for row in new_tokens]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # Longest prompts first (an out-of-memory shows at once); requests grouped by their generation settings so
        # that a batch shares them.
        collator = utils.Collator(
            [request.args for request in requests], lambda args: (-len(args[0]), args[0]), grouping=True
        )
        replies: list[str] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="hovle generating")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk, strict=True)
            images = [self.images_of(*args) for args in zip(doc_to_visuals, doc_ids, tasks, splits, strict=True)]
            batch = self.generate_batch(list(contexts), images, dict(all_gen_kwargs[0]))
            for context, gen_kwargs, reply in zip(contexts, all_gen_kwargs, batch, strict=True):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), reply)
            replies += batch
            progress.update(len(batch))
        progress.close()
        return collator.get_original(replies)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("hovle runs generation tasks (output_type: generate_until) only")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("hovle runs single-round generation tasks only")
