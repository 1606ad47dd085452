"""`hovle demo`: a Gradio chat UI for HoVLE, also what `app.py` (a Hugging Face Space) runs.

    hovle demo [--model DIR_OR_HUB_ID] [--host 127.0.0.1] [--port 7860] [--share]

Upload one or several images, ask, and the reply streams in; the conversation keeps its turns (and their images)
until "New conversation". With no `--model` it runs `hovle chat`'s default, the embedded demo model
(`hovle.embedded_release()`: a tiny HoVLE trained on synthetic shapes, not HoVLE's weights), and the page says so.
The model runs on CUDA when there is one, otherwise on the CPU through `fast_cpu_decoding`.

The model side (`ChatEngine`) needs no gradio: it turns turns into the chat template's messages, checks them
(`DemoError`: a bad image, too many images, a conversation longer than the model's context) and streams the reply
with transformers' `TextIteratorStreamer`. Temperature 0 is greedy decoding, so a reply equals the pipeline's
greedy reply for the same model and `max_new_tokens`. Gradio is imported only when the page is built.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .commands import (
    EMBEDDED_MODEL_DESCRIPTION,
    UserError,
    add_trust_remote_code_argument,
    load_for_inference,
    positive_int,
    status,
    to_model,
)
from .errors import HoVLEUserError
from .shapes_task import COLORS, QUESTIONS, SHAPES

DEFAULT_MAX_IMAGES = 4
DEFAULT_MAX_TILES = 6
SLIDER_MAX_TILES = 12
MAX_NEW_TOKENS_LIMIT = 2048
# A CPU streams a few tokens a second at full size: keep its first reply short.
CPU_MAX_NEW_TOKENS = 64
CUDA_MAX_NEW_TOKENS = 512

_TASK_QUESTIONS = ", ".join(f'"{question}"' for question in QUESTIONS.values())
EMBEDDED_MODEL_LABEL = (
    f"**This is {EMBEDDED_MODEL_DESCRIPTION}.** It knows one task: one shape ({', '.join(SHAPES)}) of one colour "
    f"({', '.join(COLORS)}) on a plain background, and the questions {_TASK_QUESTIONS}. For the real model start the "
    "demo with `--model OpenGVLab/HoVLE` (or set `HOVLE_MODEL` for `app.py`)."
)


class DemoError(HoVLEUserError):
    """A problem with what the user sent (image, number of images, length), shown in the page."""


@dataclass
class GenerationSettings:
    """The page's generation controls."""

    max_new_tokens: int = CPU_MAX_NEW_TOKENS
    temperature: float = 0.0
    max_tiles: int = DEFAULT_MAX_TILES

    def generate_kwargs(self) -> dict[str, Any]:
        # Temperature 0 means greedy, not sampling at a tiny temperature: the reply is then reproducible.
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature}


@dataclass
class Turn:
    """One question (with the images sent with it) and the reply to it."""

    question: str
    images: list[str] = field(default_factory=list)
    reply: str = ""


class ChatEngine:
    """A loaded HoVLE and its processor, answering multi-turn conversations with streamed replies."""

    def __init__(
        self,
        model,
        processor,
        *,
        source: str,
        embedded: bool = False,
        max_images: int = DEFAULT_MAX_IMAGES,
        generate_kwargs: dict[str, Any] | None = None,
    ):
        self.model = model
        self.processor = processor
        self.source = source
        self.embedded = embedded
        self.max_images = max_images
        # Device-specific generate() arguments (the CPU fast path's); the page's settings come on top.
        self.generate_kwargs = dict(generate_kwargs or {})
        # One generation at a time: the model and its compiled/static caches are shared by every visitor.
        self._lock = threading.Lock()

    @property
    def context_limit(self) -> int:
        """The most tokens (prompt + reply) the language model was built for."""
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def default_max_new_tokens(self) -> int:
        return CPU_MAX_NEW_TOKENS if self.model.device.type == "cpu" else CUDA_MAX_NEW_TOKENS

    @staticmethod
    def messages(turns: list[Turn]) -> list[dict[str, Any]]:
        """The chat template's messages: each user turn's images, then its text; earlier replies as assistant turns."""
        messages = []
        for turn in turns:
            content = [{"type": "image"} for _ in turn.images] + [{"type": "text", "text": turn.question}]
            messages.append({"role": "user", "content": content})
            if turn.reply:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.reply}]})
        return messages

    def prepare(self, turns: list[Turn], settings: GenerationSettings):
        """The model inputs for the conversation, or a `DemoError` saying what is wrong with it."""
        images = [image for turn in turns for image in turn.images]
        if len(images) > self.max_images:
            raise DemoError(
                f"Too many images: {len(images)} in this conversation, at most {self.max_images}. "
                "Start a new conversation or send fewer images."
            )
        prompt = self.processor.apply_chat_template(self.messages(turns), add_generation_prompt=True, tokenize=False)
        try:
            inputs = self.processor(
                images=images or None, text=prompt, max_tiles=settings.max_tiles, return_tensors="pt"
            )
        except ValueError as error:  # the processor names an unreadable image file
            raise DemoError(self._readable(str(error), turns)) from None
        length = inputs["input_ids"].shape[1]
        if length + settings.max_new_tokens > self.context_limit:
            raise DemoError(
                f"Too long: the conversation is {length} tokens and {settings.max_new_tokens} new tokens would pass "
                f"the model's {self.context_limit}-token context. Start a new conversation, or use fewer images, "
                "fewer tiles or fewer new tokens."
            )
        return to_model(inputs, self.model)

    @staticmethod
    def _readable(message: str, turns: list[Turn]) -> str:
        """Gradio keeps uploads under long cache paths: name the file as the user knows it."""
        for turn in turns:
            for image in turn.images:
                message = message.replace(image, os.path.basename(image))
        return message

    def stream(self, turns: list[Turn], settings: GenerationSettings) -> Iterator[str]:
        """The reply to the conversation's last turn, growing as tokens arrive (each item is the text so far)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self.prepare(turns, settings)  # DemoError before any generation starts
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        cancelled = threading.Event()

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancelled.is_set()

        def generate() -> None:
            try:
                self.model.generate(
                    **inputs,
                    **settings.generate_kwargs(),
                    **self.generate_kwargs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
                )
            except BaseException as error:  # re-raised in the caller's thread, where the page shows it
                failure.append(error)
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=generate, daemon=True)
            worker.start()
            text = ""
            try:
                for piece in streamer:
                    text += piece
                    if piece:
                        yield text
            finally:
                # The page may close this generator mid-reply (a closed tab, a new question): stop the generation
                # and wait for it, so the next visitor never shares the model with a running one.
                cancelled.set()
                worker.join()
        if failure:
            raise failure[0]
        if not text:
            yield text


def load_engine(
    model: str | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> ChatEngine:
    """A `ChatEngine` for a HoVLE release or converted folder (local or Hub id), or for the embedded demo model
    (`hovle.embedded_release()`) when `model` is None."""
    loaded = load_for_inference(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return ChatEngine(
        loaded.model,
        loaded.processor,
        source=model or "embedded demo model (hovle.embedded_release())",
        embedded=model is None,
        max_images=max_images,
        generate_kwargs=loaded.generate_kwargs,
    )


# -- the page -----------------------------------------------------------------------------------------------------
def import_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("gradio is not installed: pip install 'hovle[demo]'") from None
    return gradio


def chat_view(turns: list[Turn]) -> list[dict[str, Any]]:
    """The chatbot's messages: the images of a turn, its question, its reply."""
    view: list[dict[str, Any]] = []
    for turn in turns:
        view += [{"role": "user", "content": {"path": image}} for image in turn.images]
        view.append({"role": "user", "content": turn.question})
        if turn.reply:
            view.append({"role": "assistant", "content": turn.reply})
    return view


def build_app(engine: ChatEngine, max_new_tokens: int | None = None):
    """The Gradio page for `engine` (a `gradio.Blocks`; `.launch()` serves it)."""
    gr = import_gradio()
    default_tokens = max_new_tokens or engine.default_max_new_tokens

    def respond(question, files, turns, new_tokens, temperature, max_tiles):
        """Stream the reply: yields (chatbot, turns, status, raw reply, question box, images box)."""
        keep = gr.update()
        question = (question or "").strip()
        if not question:
            yield chat_view(turns), turns, "**Error:** type a question first.", "", keep, keep
            return
        settings = GenerationSettings(int(new_tokens), float(temperature), int(max_tiles))
        turn = Turn(question, [str(f) for f in files or []])
        started = time.perf_counter()
        try:
            for text in engine.stream([*turns, turn], settings):
                turn.reply = text
                yield chat_view([*turns, turn]), turns, "Generating ...", text, keep, keep
        except DemoError as error:
            yield chat_view(turns), turns, f"**Error:** {error}", "", keep, keep
            return
        except Exception as error:  # noqa: BLE001 - a failure must reach the page, not end the server
            traceback.print_exc()
            yield chat_view(turns), turns, f"**Error:** {type(error).__name__}: {error}", "", keep, keep
            return
        seconds = time.perf_counter() - started
        done = [*turns, turn]
        yield chat_view(done), done, f"Done in {seconds:.1f} s.", turn.reply, "", None

    with gr.Blocks(title="HoVLE demo") as app:
        gr.Markdown(
            f"# HoVLE\nA monolithic vision-language model. Model: `{engine.source}` on `{engine.model.device}`."
        )
        if engine.embedded:
            gr.Markdown(EMBEDDED_MODEL_LABEL, elem_id="hovle-demo-model")
        chatbot = gr.Chatbot(label="Conversation", elem_id="hovle-chatbot", height=420)
        with gr.Row():
            files = gr.File(
                label=f"Images (up to {engine.max_images} per conversation)",
                file_count="multiple",
                file_types=["image"],
                type="filepath",
                elem_id="hovle-images",
                scale=1,
            )
            with gr.Column(scale=2):
                question = gr.Textbox(label="Question", lines=2, elem_id="hovle-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="hovle-send")
                    clear = gr.Button("New conversation", elem_id="hovle-clear")
        status_box = gr.Markdown("", elem_id="hovle-status")
        with gr.Accordion("Generation settings", open=False):
            new_tokens = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=default_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0: greedy)")
            max_tiles = gr.Slider(1, SLIDER_MAX_TILES, value=DEFAULT_MAX_TILES, step=1, label="Max tiles per image")
        # The reply as plain text (the chatbot renders markdown), for copying.
        raw_reply = gr.Textbox(label="Last reply (plain text)", interactive=False, elem_id="hovle-reply")
        turns = gr.State([])

        inputs = [question, files, turns, new_tokens, temperature, max_tiles]
        outputs = [chatbot, turns, status_box, raw_reply, question, files]
        send.click(respond, inputs, outputs)
        question.submit(respond, inputs, outputs)
        clear.click(lambda: ([], [], "", "", None), None, [chatbot, turns, status_box, raw_reply, files])
    return app


# -- `hovle demo` -------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`hovle demo`'s options (no heavy imports: `--help` answers at once)."""
    parser.description = (
        "Serve a Gradio chat page for a HoVLE release or converted folder (default: the embedded demo model, a tiny "
        "HoVLE trained on synthetic shapes, not HoVLE's weights)."
    )
    parser.add_argument(
        "--model",
        help="HoVLE release (e.g. OpenGVLab/HoVLE) or converted folder, local or Hub id (default: the embedded demo "
        "model, trained on synthetic shapes, not HoVLE's weights)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--max-images", type=positive_int, default=DEFAULT_MAX_IMAGES, help="per conversation")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help=f"the page's default (CPU {CPU_MAX_NEW_TOKENS}, CUDA {CUDA_MAX_NEW_TOKENS})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=positive_int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    add_trust_remote_code_argument(parser)


def run(args: argparse.Namespace) -> None:
    """`hovle demo`: load, build the page, serve until interrupted."""
    import_gradio()  # before loading a model: a missing gradio is a one-line error
    engine = load_engine(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        max_images=args.max_images,
    )
    app = build_app(engine, max_new_tokens=args.max_new_tokens)
    status(f"Serving on http://{args.host}:{args.port} (Ctrl+C stops)")
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
