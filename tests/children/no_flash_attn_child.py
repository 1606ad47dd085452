"""Child of `tests/test_packaging.py`: with `flash_attn` made unimportable and no GPU visible, the package imports
and a tiny model generates. Prints `OK <attention implementation>`."""

import sys

sys.modules["flash_attn"] = None  # any `import flash_attn` now raises ImportError

import torch  # noqa: E402

import hovle.modeling_hovle  # noqa: E402  (must not touch flash-attn at import time)
from hovle.testing import tiny_config  # noqa: E402

model = hovle.modeling_hovle.HoVLEForConditionalGeneration(tiny_config()).eval()
ids = torch.tensor([[1, 1020] + [1022] * 4 + [1021, 5]])
out = model.generate(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56), max_new_tokens=3, min_new_tokens=3)
assert out.shape == (1, ids.shape[1] + 3), out.shape
print("OK", model.config._attn_implementation)
