"""Child of `tests/test_packaging.py`: loads a converted folder with trust_remote_code where the `hovle` package
cannot be imported, then runs one `generate()` and one `chat()`. Prints what it loaded after `REPORT`.

    python remote_code_child.py CONVERTED_FOLDER
"""

import sys

sys.modules["hovle"] = None  # before anything else: `import hovle` (and `hovle.*`) now raises ImportError

import json  # noqa: E402
from pathlib import Path  # noqa: E402

# Nothing of the checkout on the path either: only the folder's own files may provide the model.
checkout = Path(__file__).resolve().parents[2]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != checkout]

try:
    import hovle  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the hovle package is still importable")

from PIL import Image  # noqa: E402
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor  # noqa: E402

folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
report = {
    "model": type(model).__name__,
    "model_module": type(model).__module__,
    "automodel": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
    "processor": type(processor).__name__,
    "processor_module": type(processor).__module__,
}
image = Image.radial_gradient("L").convert("RGB")
inputs = processor(images=image, text="<image>\nDescribe.", return_tensors="pt")
generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
report["generated"] = generated[0, inputs["input_ids"].shape[1] :].tolist()
pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
report["chat"] = model.chat(processor.tokenizer, pixel_values, "What is in the picture?", settings)
# The folder's files that the loads above imported, as transformers' dynamic modules.
report["remote_files"] = sorted(
    {
        Path(module.__file__).name
        for name, module in list(sys.modules.items())
        if name.startswith("transformers_modules.") and getattr(module, "__file__", None)
    }
    - {"__init__.py"}
)
report["hovle_modules"] = sorted(name for name in sys.modules if name == "hovle" or name.startswith("hovle."))
report["hovle_blocked"] = sys.modules.get("hovle", "absent") is None
print("REPORT" + json.dumps(report))
