"""PEFT LoRA for HoVLE: documented target modules per stack, and merge-and-save back to a loadable folder.

Both stacks are transformers Llama layers, so the usual projection names apply; the regexes below keep the two
stacks apart (a bare `q_proj` would hit both):

* embedding module: `model.embedding_model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}`
* LLM:              `model.language_model.layers.N.{...same...}`
"""

from __future__ import annotations

from pathlib import Path

_PROJECTIONS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LORA_TARGETS = {
    "embedding": rf"model\.embedding_model\.layers\.\d+\.{_PROJECTIONS}",
    "text": rf"model\.language_model\.layers\.\d+\.{_PROJECTIONS}",
    "both": rf"model\.(embedding_model|language_model)\.layers\.\d+\.{_PROJECTIONS}",
}


def lora_config(stack: str = "both", rank: int = 16, alpha: int = 32, dropout: float = 0.05):
    """A `peft.LoraConfig` targeting the chosen stack(s): 'embedding', 'text' or 'both'."""
    from peft import LoraConfig

    if stack not in LORA_TARGETS:
        raise ValueError(f"Unknown stack {stack!r}; choose one of {sorted(LORA_TARGETS)}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS[stack], bias="none")


def merge_and_save(peft_model, output: str | Path, processor=None) -> Path:
    """Fold the adapters into the base weights and save a folder that loads with `trust_remote_code=True` (the
    remote code and `auto_map` as a converted folder has them, `copy_remote_code`)."""
    from ..conversion.to_transformers import copy_remote_code

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(output)
    if processor is not None:
        processor.save_pretrained(output)
    copy_remote_code(Path(output))
    return Path(output)
