"""`hovle`: the package's command line.

    hovle chat [--model DIR_OR_HUB_ID] [--image PATH ...] "question"   stream a reply
    hovle demo [--model DIR_OR_HUB_ID] [--host H] [--port P] [--share]  a Gradio chat page (pip install hovle[demo])
    hovle convert --input SRC --output DST [--dtype bfloat16] ...       original checkpoint -> Hub folder
    hovle export --input DIR --output DST                               Hub folder -> original layout
    hovle train --model DIR --data train.jsonl --stage 1|2|3 --output OUT  fine-tune (see hovle.training.train)

With no `--model`, `chat` and `demo` run the embedded demo model (`hovle.embedded_release()`, shipped in the package,
offline): a tiny HoVLE trained on synthetic shapes (`hovle.shapes_task`), NOT HoVLE's weights, which answers only
that task's questions (shape, colour, a description) about such images. `--model OpenGVLab/HoVLE` runs the real model.

Models load with this installed package's code; `--trust-remote-code` runs the folder's own copy instead, as
transformers does it. Arguments are defined here, without importing torch, so `--help` answers at once; each
command's work lives in its module (`run(args)`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .commands import (
    UserError,
    add_trust_remote_code_argument,
    check_device,
    load_for_inference,
    positive_int,
    tile_budget,
    to_model,
    user_errors,
)
from .training.arguments import add_train_arguments


# -- arguments of every command (no heavy imports) ----------------------------------------------------------------
def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument(
        "--model",
        help="HoVLE release (e.g. OpenGVLab/HoVLE) or converted folder, local or Hub id (default: the embedded demo "
        "model, trained on synthetic shapes, not HoVLE's weights)",
    )
    parser.add_argument("--image", action="append", default=[], type=Path, help="image file (repeatable)")
    parser.add_argument("--system", help="system message (empty string: none)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--max-tiles", type=tile_budget, default=6, help="most tiles per image")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 weight-only linear layers (CPU; approximate, see benchmarks/README.md)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="CPU: static cache + compiled decoding step (the first reply waits ~1.5 min to compile at full size)",
    )
    add_trust_remote_code_argument(parser)


def add_checkpoint_writing_arguments(parser: argparse.ArgumentParser, input_help: str, dtype: str) -> None:
    """What `convert` and `export` share: where from, where to, in which dtype and shards."""
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--dtype", default=dtype, choices=["bfloat16", "float16", "float32"], help=f"default {dtype}")
    parser.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --output that this package wrote earlier"
    )
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write weights that are NaN/Inf in the source or that overflow to inf in --dtype (refused otherwise)",
    )


CONVERT_DESCRIPTION = (
    "Convert the original HoVLE release (OpenGVLab/HoVLE or HoVLE-HD, or a checkpoint of the original training "
    "code) into a transformers folder: the weights in Llama layout, the config, the model's code (for "
    "trust_remote_code) and, from --input or --tokenizer, the tokenizer and processor that `hovle chat`, "
    "pipeline() and AutoProcessor need. The config, the tokenizer and every tensor's name and shape are checked "
    "before anything is written, NaN/Inf values while writing, and --output appears only once complete. Load the "
    "result with --model in `hovle chat`, `hovle demo` and `hovle train`, or with transformers' from_pretrained."
)
EXPORT_DESCRIPTION = (
    "Write a transformers-format HoVLE folder (converted, or trained with `hovle train`) back in the original "
    "release layout, which the original InternVL code loads; the release's tokenizer files that `hovle convert` "
    "kept are written back too. Every tensor's name and shape is checked before anything is written, NaN/Inf "
    "values while writing, and --output appears only once complete."
)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.description is None:
        parser.description = CONVERT_DESCRIPTION
    add_checkpoint_writing_arguments(parser, "original-format folder or Hub repo id", "bfloat16")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the result to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument(
        "--tokenizer",
        metavar="DIR_OR_HUB_ID",
        help="take the release's tokenizer files (tokenizer.model, tokenizer_config.json, ...) from this folder or "
        "Hub repo instead of --input (needed when --input has none: without a tokenizer there is no processor)",
    )


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.description is None:
        parser.description = EXPORT_DESCRIPTION
    # The release stores float32.
    add_checkpoint_writing_arguments(parser, "transformers-format HoVLE folder or Hub repo id", "float32")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    # Defined beside the page (hovle.demo imports neither torch nor gradio at the top).
    from .demo import add_arguments

    add_arguments(parser)


# command -> (summary, argument definer, module whose `run(args)` does the work)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "chat": ("answer a question about images, streaming the reply", add_chat_arguments, "hovle.cli"),
    "demo": ("serve a Gradio chat page (images, multi-turn, streaming)", add_demo_arguments, "hovle.demo"),
    "convert": (
        "original checkpoint -> transformers folder",
        add_convert_arguments,
        "hovle.conversion.to_transformers",
    ),
    "export": ("transformers folder -> original layout", add_export_arguments, "hovle.conversion.to_original"),
    "train": ("fine-tune with the Trainer (stage 1, 2 or 3)", add_train_arguments, "hovle.training.train"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hovle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hovle {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, module) in COMMANDS.items():
        description = summary if module == "hovle.cli" else None
        add_arguments(commands.add_parser(name, help=summary, description=description))
    return parser


# -- hovle chat ---------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    """`hovle chat`."""
    from transformers import TextStreamer

    from .processing_hovle import open_image

    check_device(args.device)
    # Decoded before the model loads (minutes at full size), so that an unreadable image is said at once.
    try:
        images = [open_image(path) for path in args.image] or None
    except ValueError as error:  # the processor names the file that is not an image
        raise UserError(str(error)) from None
    loaded = load_for_inference(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        int8=args.int8,
        compile=args.compile,
    )
    content = [{"type": "image"} for _ in args.image] + [{"type": "text", "text": args.question}]
    messages = [{"role": "user", "content": content}]
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    processor = loaded.processor
    try:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=images, text=prompt, max_tiles=args.max_tiles, return_tensors="pt")
    except ValueError as error:  # the processor's refusal of this prompt and these images: the user's input
        raise UserError(str(error)) from None
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    loaded.model.generate(
        **to_model(inputs, loaded.model),
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        streamer=streamer,
        **loaded.generate_kwargs,
    )


def interruptions() -> type[BaseException]:
    """SIGINT/SIGTERM while a command writes a folder: printed as one line, exit status 128 + the signal."""
    from .conversion.output_folder import Interrupted

    return Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "chat":
        missing = [str(path) for path in args.image if not path.is_file()]
        if missing:
            print(f"error: --image {missing[0]}: no such file", file=sys.stderr)
            return 2
    module = importlib.import_module(COMMANDS[args.command][2])
    try:
        written = module.run(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a bug: one line and the shell's status for SIGINT, no traceback.
        print("error: interrupted", file=sys.stderr)
        return 130
    except interruptions() as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if written is not None:
        print(f"Wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
