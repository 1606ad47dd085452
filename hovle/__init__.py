"""HoVLE, the monolithic vision-language model (arXiv:2412.16158, CVPR 2025), for transformers 5.x.

The model, configuration, processor and chat layer are also what a converted Hub folder ships as remote code.
Submodules: `conversion` (original checkpoint <-> transformers folder), `training` (the paper's three stages),
`cpu_decoding`, `quantization`, `testing` (offline fixtures), `cli` (the `hovle` command), `commands` (what the
commands share: user errors, device and dtype choice, `load_for_inference`), `shapes_task` (the synthetic task of
the demo model the commands run without `--model`, `embedded_release()`), `default_model` (the tiny builders the
fixtures and that model's recipe start from).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .after_import import after_imports, is_being_imported

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


def embedded_release() -> Path:
    """The folder of the demo model shipped inside the package: a tiny HoVLE trained on synthetic shapes
    (`hovle.shapes_task`; not HoVLE's weights), in the original release's layout (`config.json` with
    `embedding_config`/`llm_config`, `model.safetensors` with fused `wqkv`, the InternLM2 tokenizer files), so it
    loads and converts as the release does. Its recipe: `scripts/train_embedded_release.py`."""
    return Path(__file__).resolve().parent / "embedded_release"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, "__version__", "embedded_release", "register_auto_classes", "register_release_loading"]


def _register_release_config(just_imported: str | None = None) -> bool:
    """Register HoVLE releases with AutoConfig (True once done) when transformers' auto-config module exists and
    no module of the registration's import chain is half-imported: `configuration_hovle` and transformers' auto
    modules import one another, and a class they define may not exist yet; the registration then follows the import
    that finishes last. (`release_loading` registers at the end of its own import.)"""

    def busy(name: str) -> bool:
        return name != just_imported and is_being_imported(name)

    if "transformers.models.auto.configuration_auto" not in sys.modules:
        return False
    if any(busy(name) for name in list(sys.modules) if _in_registration_chain(name)):
        return False
    from .release_loading import register_release_config

    register_release_config()
    return True


def _in_registration_chain(name: str) -> bool:
    return name.startswith("transformers.models.auto.") or name in (_CONFIGURATION, f"{__name__}.release_loading")


# `import hovle` makes AutoConfig (and through the release config, the other Auto classes) load HoVLE releases; the
# registration runs when transformers' auto modules are imported, so that importing hovle costs no torch.
_CONFIGURATION = f"{__name__}.configuration_hovle"
if not _register_release_config():
    after_imports(_in_registration_chain, _register_release_config)
