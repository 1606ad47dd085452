"""Child of `tests/test_written_folders_load.py`, run in a fresh offline process that never imports `hovle` (so no
`register_auto_classes()`: only each folder's `auto_map` and remote code can make it load): the README's snippets
(`AutoModelForImageTextToText` + `AutoProcessor` with `trust_remote_code=True`, then
`pipeline("image-text-to-text")`) on every folder given. Prints, per folder, after `REPORT`: the processor's class
and whether it is a `ProcessorMixin`, the image-token count of one image's prompt against the processor's own tile
count, and the pipeline's reply against `generate()`'s.

    python readme_loading_child.py IMAGE_PATH FOLDER [FOLDER ...]
"""

import json
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin, pipeline

image_path, folders = sys.argv[1], sys.argv[2:]
gen = {"max_new_tokens": 6, "do_sample": False}
report = {}
for folder in folders:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image_path, text=prompt, max_tiles=6, return_tensors="pt")
    output = model.generate(**inputs, **gen)
    reply = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    question = {"type": "text", "text": "What is in this picture?"}
    chat = [{"role": "user", "content": [{"type": "image", "path": image_path}, question]}]
    answer = pipe(text=chat, generate_kwargs=gen, return_full_text=False)[0]["generated_text"]
    report[folder] = {
        "processor": type(processor).__name__,
        "processor_mixin": isinstance(processor, ProcessorMixin),
        "pipeline_processor": type(pipe.processor).__name__,
        "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "expected_image_tokens": int(inputs["pixel_values"].shape[0]) * model.config.tokens_per_tile,
        "pipeline": answer,
        "generate": reply,
    }
report["hovle_imported"] = sorted(name for name in sys.modules if name == "hovle" or name.startswith("hovle."))
print("REPORT" + json.dumps(report))
