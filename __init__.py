"""HoVLE for transformers: the root modules are what a converted Hub folder ships as remote code."""

from .configuration_hovle import HoVLEConfig, HoVLEEmbeddingConfig
from .modeling_hovle import HoVLEForConditionalGeneration, HoVLEModel, HoVLEPreTrainedModel

__all__ = [
    "HoVLEConfig",
    "HoVLEEmbeddingConfig",
    "HoVLEForConditionalGeneration",
    "HoVLEModel",
    "HoVLEPreTrainedModel",
]
