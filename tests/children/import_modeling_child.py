"""Child of `tests/test_packaging.py`: imports `hovle.modeling_hovle` in a fresh process and prints (after `REPORT`)
the `hovle` modules that came with it and transformers' global attention / attention-mask registries before and
after the import."""

import json
import sys

from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface


def registries():
    return {
        "attention": sorted(AttentionInterface._global_mapping),
        "mask": sorted(AttentionMaskInterface._global_mapping),
    }


before = registries()
import hovle.modeling_hovle  # noqa: E402, F401

report = {
    "before": before,
    "after": registries(),
    "hovle_modules": sorted(name for name in sys.modules if name == "hovle" or name.startswith("hovle.")),
}
print("REPORT" + json.dumps(report))
