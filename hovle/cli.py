"""`hovle`: the package's command line.

    hovle chat [--model DIR_OR_HUB_ID] [--image PATH ...] "question"   stream a reply
    hovle convert --input SRC --output DST [--dtype bfloat16] ...       original checkpoint -> Hub folder
    hovle export --input DIR --output DST                               Hub folder -> original layout
    hovle train --model DIR --data train.jsonl --stage 1|2|3 --output OUT  fine-tune (see hovle.training.train)

With no `--model`, `chat` builds a tiny RANDOM, UNTRAINED HoVLE offline (original layout -> conversion -> load),
so the whole path runs anywhere; its replies are noise by construction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__

UNTRAINED_BANNER = (
    "[hovle] No --model given: using a tiny RANDOM, UNTRAINED model built offline. Its replies are noise.\n"
    "[hovle] For the real model, convert the release once (hovle convert --input OpenGVLab/HoVLE --output "
    "./HoVLE-hf) and pass --model ./HoVLE-hf, or the Hub id of a converted copy you pushed."
)


def build_default_model(folder: Path) -> Path:
    """Tiny original-format checkpoint + tokenizer, converted like a real one."""
    from .conversion.to_transformers import convert
    from .testing import tiny_config, write_original_checkpoint, write_tiny_tokenizer

    source = write_original_checkpoint(folder / "original", tiny_config("pre"), seed=0)
    write_tiny_tokenizer(source)
    return convert(source, folder / "hovle-tiny", dtype="float32", progress=False)


def chat(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TextStreamer

    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory(prefix="hovle-default-") as scratch:
        model_path = args.model
        if model_path is None:
            print(UNTRAINED_BANNER, file=sys.stderr)
            model_path = build_default_model(Path(scratch))
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=True, dtype=dtype)
    model = model.to(args.device).eval()
    generate_kwargs = {}
    if args.int8:
        from .quantization import quantize_linear_int8

        quantize_linear_int8(model)
    if model.device.type == "cpu":
        from .cpu_decoding import fast_cpu_decoding

        generate_kwargs = fast_cpu_decoding(model, compile=args.compile)

    content = [{"type": "image"} for _ in args.image] + [{"type": "text", "text": args.question}]
    messages = [{"role": "user", "content": content}]
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    try:
        images = [str(path) for path in args.image] or None
        inputs = processor(images=images, text=prompt, max_tiles=args.max_tiles, return_tensors="pt")
        inputs = inputs.to(model.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer, **generate_kwargs)
    return 0


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--model", help="converted folder or Hub id (default: tiny untrained model)")
    parser.add_argument("--image", action="append", default=[], type=Path, help="image file (repeatable)")
    parser.add_argument("--system", help="system message (empty string: none)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-tiles", type=int, default=6, help="most tiles per image")
    parser.add_argument("--device", default="cpu")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hovle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hovle {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_chat_arguments(commands.add_parser("chat", help="answer a question about images, streaming the reply"))
    # The other commands' modules load transformers and torch: their arguments are added only when chosen, so that
    # `hovle --help` stays fast.
    for name, summary in SUBCOMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


# command -> (one-line summary); the module that implements it has `add_arguments(parser)` and `run(args)`.
SUBCOMMANDS = {
    "convert": "original checkpoint -> transformers folder",
    "export": "transformers folder -> original layout",
    "train": "fine-tune with the Trainer (stage 1, 2 or 3)",
}
SUBCOMMAND_MODULES = {
    "convert": "hovle.conversion.to_transformers",
    "export": "hovle.conversion.to_original",
    "train": "hovle.training.train",
}


def run_subcommand(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(SUBCOMMAND_MODULES[name])
    parser = argparse.ArgumentParser(
        prog=f"hovle {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    from .conversion.checkpoint_io import CheckpointError

    try:
        written = module.run(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in args.image:
        if not path.is_file():
            parser.error(f"--image {path}: no such file")
    return chat(args)


if __name__ == "__main__":
    sys.exit(main())
