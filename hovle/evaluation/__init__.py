"""Evaluation harness adapters.

`lmms_eval_manifest` is what lmms-eval's model registry loads from the `lmms_eval.models` entry point (see
pyproject.toml), so that `lmms-eval --model hovle --model_args pretrained=./HoVLE-hf --tasks mmbench_en` finds
`hovle.evaluation.lmms_eval_model.HoVLE` once this package is installed. Importing this module imports neither
lmms-eval's models nor torch: the registry reads every entry point at start, whatever model is asked for.
"""

from __future__ import annotations

MODEL_ID = "hovle"
MODEL_CLASS_PATH = "hovle.evaluation.lmms_eval_model.HoVLE"


def lmms_eval_manifest():
    """The `ModelManifest` registering `--model hovle` (a "simple" model: lmms-eval renders the prompt text)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS_PATH)


__all__ = ["MODEL_CLASS_PATH", "MODEL_ID", "lmms_eval_manifest"]
