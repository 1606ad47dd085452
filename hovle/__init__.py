"""HoVLE, the monolithic vision-language model (arXiv:2412.16158, CVPR 2025), for transformers 5.x.

The model, configuration, processor and chat layer are also what a converted Hub folder ships as remote code.
Submodules: `conversion` (original checkpoint <-> transformers folder), `training` (the paper's three stages),
`cpu_decoding`, `quantization`, `testing` (offline fixtures), `cli` (the `hovle` command), `commands` (what the
commands share: user errors, device and dtype choice, `load_for_inference`), `default_model` (the tiny untrained
model the commands run without `--model`).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# Imported on first use, so that `hovle --help` and `import hovle.conversion...` do not load the model stack.
_LAZY = {
    "HoVLEConfig": "configuration_hovle",
    "HoVLEEmbeddingConfig": "configuration_hovle",
    "HoVLEForConditionalGeneration": "modeling_hovle",
    "HoVLEModel": "modeling_hovle",
    "HoVLEPreTrainedModel": "modeling_hovle",
    "HoVLEProcessor": "processing_hovle",
}


def register_auto_classes() -> None:
    """Make transformers' Auto classes load converted HoVLE folders with this package's classes, without
    `trust_remote_code` (the folder's copy of the code is then not run). See `hovle.loading`."""
    from .loading import register_auto_classes as register

    register()


def register_release_loading() -> None:
    """Make transformers' Auto classes load original HoVLE releases (`internvl_chat` with `embedding_config`) as
    they are, converting the weights while loading. Run by `import hovle`. See `hovle.release_loading`."""
    from .release_loading import register_release_loading as register

    register()


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, "__version__", "register_auto_classes", "register_release_loading"]

register_release_loading()
