"""The model class of a release loaded as it is (`hovle.release_loading` registers it for `HoVLEReleaseConfig`).

It is HoVLE's model; what a release lacks and a converted folder has is a `generation_config.json` that ends chat
replies at `<|im_end|>` (the release's own `chat()` set that at every call). This class adds it at load time, from
the id the release's tokenizer gives `<|im_end|>`, as `hovle convert` writes it.
"""

from __future__ import annotations

import inspect

from .conversion.checkpoint_io import CheckpointError
from .modeling_hovle import HoVLEForConditionalGeneration
from .processing_hovle import END_OF_TURN
from .release_processing import HUB_KWARGS, load_release_tokenizer


class HoVLEReleaseForConditionalGeneration(HoVLEForConditionalGeneration):
    """`HoVLEForConditionalGeneration` for a release's config; `config_class` is set where the config class is
    registered (`hovle.release_loading.register_release_loading`)."""

    def adjust_generation_fn(self, generation_config, *args, **kwargs):
        super().adjust_generation_fn(generation_config, *args, **kwargs)
        bound = inspect.signature(super().adjust_generation_fn).bind(generation_config, *args, **kwargs).arguments
        source = bound.get("pretrained_model_name_or_path")
        if generation_config is not None or source is None:
            return
        hub_kwargs = {key: bound[key] for key in HUB_KWARGS if bound.get(key) is not None}
        try:
            end_of_turn = load_release_tokenizer(source, self.config, **hub_kwargs).convert_tokens_to_ids(END_OF_TURN)
        except (OSError, CheckpointError):
            return  # no (usable) tokenizer: the model config's end of sequence, as `hovle convert` does without one
        eos = self.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if end_of_turn is not None and end_of_turn not in eos:
            self.generation_config.eos_token_id = [end_of_turn, *eos]
