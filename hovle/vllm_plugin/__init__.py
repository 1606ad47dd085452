"""HoVLE on vLLM: an out-of-tree model plugin (install `hovle[vllm]`; vLLM finds it through the
`vllm.general_plugins` entry point in every process it starts).

With it installed, `vllm serve ./HoVLE-hf` and `LLM(model="./HoVLE-hf")` load a converted folder, and
`vllm serve ./HoVLE` an original release as it is (its weights converted while loading, its tokenizer built from its
files by `hovle.release_processing`), with this package's classes (no `--trust-remote-code`): the model
(`hovle.vllm_plugin.model`), its multimodal processor (`hovle.vllm_plugin.processing`) and a config check that runs
before the engine starts (`hovle.vllm_plugin.config`).

Nothing here imports vLLM at import time: `register()` is the entry point and imports lazily, so that importing
`hovle` never needs vLLM.
"""

from __future__ import annotations

ARCHITECTURE = "HoVLEForConditionalGeneration"


def register() -> None:
    """vLLM's plugin hook (idempotent): the model class (lazily, by name), the config check, and transformers'
    Auto classes for HoVLE's config, processor and model (the tokenizer and processor load without remote code)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from ..loading import register_auto_classes
    from ..release_loading import RELEASE_ARCHITECTURE, register_release_loading
    from .config import HoVLEConfigCheck

    register_auto_classes()
    # Releases too: vLLM's engine processes receive the config pickled, which does not run the registration that
    # building a release config runs in the process that read it.
    register_release_loading()
    # A converted folder's architecture, and the one a release's config reports once `hovle` reads it (vLLM reads
    # configs through AutoConfig). The release's config.json says `InternVLChatModel`: that name stays vLLM's own
    # InternVL, whose configs (no `embedding_config`) `hovle` does not claim.
    for architecture in (ARCHITECTURE, RELEASE_ARCHITECTURE):
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, "hovle.vllm_plugin.model:HoVLEForConditionalGeneration")
        # vLLM's per-architecture hook, run where the engine's config is built (before any worker starts), so a
        # folder vLLM cannot serve is refused at once with the reason.
        MODELS_CONFIG_MAP.setdefault(architecture, HoVLEConfigCheck)


__all__ = ["ARCHITECTURE", "register"]
