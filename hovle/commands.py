"""What the package's commands share (`hovle chat`, `hovle demo`, `hovle train`, the lmms-eval adapter): user
errors and which exceptions count as one, the status line, argument types, device and dtype choice, and
`load_for_inference` (load -> device -> int8 -> CPU fast path, the one sequence every inference command runs).

Nothing here imports torch at module import time (`hovle --help` answers at once), and nothing here imports a
command: the commands import this module, `hovle.cli` imports the commands only to dispatch to them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import HoVLEUserError

# What the commands run without `--model` (`hovle.embedded_release()`), said in one place: `hovle chat`'s note and the
# demo page's label both start from it.
EMBEDDED_MODEL_DESCRIPTION = (
    "the embedded demo model, a tiny HoVLE trained on synthetic shapes (hovle.shapes_task), not HoVLE's weights"
)
EMBEDDED_MODEL_NOTE = (
    f"[hovle] No --model given: using {EMBEDDED_MODEL_DESCRIPTION}; for the real model pass --model OpenGVLab/HoVLE."
)
# `--dtype` names -> what `from_pretrained(dtype=...)` takes ("auto": the folder's own dtype).
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")


class UserError(HoVLEUserError):
    """A mistake in the command's input, said in one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a bad input, not a bug: printed as one line, no traceback. The package's own user
    errors (all `HoVLEUserError`), and the file-system errors a wrong path gives; any other exception, a bare
    `ValueError` included, is a bug and keeps its traceback."""
    return (HoVLEUserError, FileNotFoundError, PermissionError)


def status(message: str) -> None:
    print(f"[hovle] {message}", file=sys.stderr, flush=True)


# -- argument types ------------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def tile_budget(text: str) -> int:
    """`--max-tiles`: a whole number the processor accepts (1..`MAX_TILES_LIMIT`), checked by the processor's rule."""
    from .processing_hovle import check_max_tiles

    value = positive_int(text)
    try:
        check_max_tiles(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load with the model folder's own Python code instead of this installed package's (runs that code)",
    )


# -- device and dtype ----------------------------------------------------------------------------------------------
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


def resolve_device(device: str) -> str:
    """`auto`: CUDA when available, else the CPU; anything else is checked as `hovle chat --device` is."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def torch_dtype(name: str):
    """The `from_pretrained(dtype=...)` value for a `--dtype` name (`DTYPE_NAMES`)."""
    import torch

    if name not in DTYPE_NAMES:
        raise UserError(f"dtype={name!r}: use one of {', '.join(DTYPE_NAMES)}")
    return "auto" if name == "auto" else getattr(torch, name)


# -- loading for inference -----------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A model ready to generate: on its device, in eval mode, with the `generate()` arguments its device needs."""

    model: Any
    processor: Any
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


def load_for_inference(
    model: str | os.PathLike | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    int8: bool = False,
    compile: bool = False,
    announce: bool = True,
) -> Loaded:
    """Load a HoVLE release or converted folder, local or Hub id (None: the embedded demo model,
    `hovle.embedded_release()`, with a note saying what it is) and make it ready to generate: moved to `device`
    (`auto`: CUDA when present), int8 linear layers when `int8`, and on the CPU the static-cache fast path
    (`fast_cpu_decoding`, compiled when `compile`). `announce`: a status line while loading."""
    from . import embedded_release
    from .loading import load_model_and_processor

    device = resolve_device(device)
    if int8 and not device.startswith("cpu"):
        raise UserError(f"--int8: int8 weight-only quantisation is a CPU path; the model would be on {device}")
    if model is None:
        print(EMBEDDED_MODEL_NOTE, file=sys.stderr, flush=True)
        model = embedded_release()  # a release folder: the same load path as OpenGVLab/HoVLE
    elif announce:
        status(f"Loading {model} ...")
    loaded, processor = load_model_and_processor(model, trust_remote_code, dtype=torch_dtype(dtype))
    loaded = loaded.to(device).eval()
    if int8:
        from .quantization import quantize_linear_int8

        quantize_linear_int8(loaded)
    generate_kwargs: dict[str, Any] = {}
    if loaded.device.type == "cpu":
        from .cpu_decoding import fast_cpu_decoding

        generate_kwargs = fast_cpu_decoding(loaded, compile=compile)
        if compile:
            status("Compiling the decoding step: the reply starts when it is done ...")
    return Loaded(loaded, processor, generate_kwargs)


def to_model(inputs, model):
    """The processor's `inputs` on the model's device, images in the model's dtype."""
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs
