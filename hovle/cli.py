"""`hovle`: the package's command line.

    hovle chat [--model DIR_OR_HUB_ID] [--image PATH ...] "question"   stream a reply
    hovle demo [--model DIR_OR_HUB_ID] [--host H] [--port P] [--share]  a Gradio chat page (pip install hovle[demo])
    hovle convert --input SRC --output DST [--dtype bfloat16] ...       original checkpoint -> Hub folder
    hovle export --input DIR --output DST                               Hub folder -> original layout
    hovle train --model DIR --data train.jsonl --stage 1|2|3 --output OUT  fine-tune (see hovle.training.train)

With no `--model`, `chat` builds a tiny RANDOM, UNTRAINED HoVLE offline (original layout -> conversion -> load),
so the whole path runs anywhere; its replies are noise by construction.

Models load with this installed package's code; `--trust-remote-code` runs the folder's own copy instead, as
transformers does it. Arguments are defined here, without importing torch, so `--help` answers at once; each
command's work lives in its module (`run(args)`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__

UNTRAINED_BANNER = (
    "[hovle] No --model given: using a tiny RANDOM, UNTRAINED model built offline. Its replies are noise.\n"
    "[hovle] For the real model, convert the release once (hovle convert --input OpenGVLab/HoVLE --output "
    "./HoVLE-hf) and pass --model ./HoVLE-hf, or the Hub id of a converted copy you pushed."
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def status(message: str) -> None:
    print(f"[hovle] {message}", file=sys.stderr, flush=True)


# -- arguments of every command (no heavy imports) ----------------------------------------------------------------
def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--model", help="converted folder or Hub id (default: tiny untrained model)")
    parser.add_argument("--image", action="append", default=[], type=Path, help="image file (repeatable)")
    parser.add_argument("--system", help="system message (empty string: none)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--max-tiles", type=positive_int, default=6, help="most tiles per image")
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


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load with the model folder's own Python code instead of this installed package's (runs that code)",
    )


def add_checkpoint_writing_arguments(parser: argparse.ArgumentParser, input_help: str, dtype: str) -> None:
    """What `convert` and `export` share: where from, where to, in which dtype and shards."""
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--dtype", default=dtype, choices=["bfloat16", "float16", "float32"], help=f"default {dtype}")
    parser.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write weights that are NaN/Inf in the source or that overflow to inf in --dtype (refused otherwise)",
    )


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
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
    # The release stores float32.
    add_checkpoint_writing_arguments(parser, "transformers-format HoVLE folder or Hub repo id", "float32")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="converted HoVLE folder or Hub id")
    parser.add_argument("--data", required=True, help="JSON lines file")
    parser.add_argument("--stage", type=int, required=True, choices=[1, 2, 3])
    parser.add_argument(
        "--output", required=True, help="folder for the trained model (not the model folder; empty or absent)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output when training ends")
    parser.add_argument("--teacher", help="stage 1 (required there): teacher model folder or Hub id")
    parser.add_argument("--lora", choices=["embedding", "text", "both"], help="train LoRA adapters on these stacks")
    parser.add_argument("--max-steps", type=positive_int, default=100)
    parser.add_argument("--batch-size", type=positive_int, default=1, help="per device")
    parser.add_argument("--grad-accum", type=positive_int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--max-tiles", type=positive_int, default=6, help="most tiles per image")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--sequential", action="store_true", help="no shuffling (reproducible comparisons)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 weights and autocast (GPU or CPU)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="train on CPU even with a GPU (the default without one; gloo for multi-process)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_trust_remote_code_argument(parser)


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
def build_default_model(folder: Path) -> Path:
    """Tiny original-format checkpoint + tokenizer, converted like a real one."""
    from .conversion.to_transformers import convert
    from .testing import tiny_config, write_original_checkpoint, write_tiny_tokenizer

    source = write_original_checkpoint(folder / "original", tiny_config("pre"), seed=0)
    write_tiny_tokenizer(source)
    return convert(source, folder / "hovle-tiny", dtype="float32", progress=False)


def check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")


def run(args: argparse.Namespace) -> None:
    """`hovle chat`."""
    import torch
    from transformers import TextStreamer

    from .loading import load_model_and_processor

    check_device(args.device)
    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory(prefix="hovle-default-") as scratch:
        model_path = args.model
        if model_path is None:
            print(UNTRAINED_BANNER, file=sys.stderr)
            model_path = build_default_model(Path(scratch))
        else:
            status(f"Loading {model_path} ...")
        model, processor = load_model_and_processor(model_path, args.trust_remote_code, dtype=dtype)
    model = model.to(args.device).eval()
    generate_kwargs = {}
    if args.int8:
        from .quantization import quantize_linear_int8

        quantize_linear_int8(model)
    if model.device.type == "cpu":
        from .cpu_decoding import fast_cpu_decoding

        generate_kwargs = fast_cpu_decoding(model, compile=args.compile)
        if args.compile:
            status("Compiling the decoding step: the reply starts when it is done ...")

    content = [{"type": "image"} for _ in args.image] + [{"type": "text", "text": args.question}]
    messages = [{"role": "user", "content": content}]
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [str(path) for path in args.image] or None
    inputs = processor(images=images, text=prompt, max_tiles=args.max_tiles, return_tensors="pt").to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer, **generate_kwargs)


class UserError(ValueError):
    """A mistake in the command's input, said in one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a bad input, not a bug: printed as one line, no traceback."""
    from .conversion.checkpoint_io import CheckpointError
    from .loading import LoadError

    return (UserError, LoadError, CheckpointError, ValueError, FileNotFoundError, PermissionError)


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
    if written is not None:
        print(f"Wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
