"""Child of `tests/test_pipeline.py`, run in a fresh offline process: `pipeline("image-text-to-text")` with chat
messages (PIL image, local path), raw `images=` + `text=`, a batch of three chats and streaming, each against
`generate()` on the same inputs; then the original `chat()` / `batch_chat()` API. Prints the pairs after `REPORT`.

    python pipeline_child.py CONVERTED_FOLDER IMAGE_PATH
"""

import json
import sys
import threading

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, TextIteratorStreamer, pipeline

folder, image_path = sys.argv[1], sys.argv[2]
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
image = Image.open(image_path).convert("RGB")
gen = {"max_new_tokens": 8, "do_sample": False}
report = {"model": type(pipe.model).__name__, "processor": type(pipe.processor).__name__}


def reference(messages, images):
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=images or None, text=prompt, return_tensors="pt")
    new = model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new, skip_special_tokens=True)


def ask(text, n_images, item):
    return {"role": "user", "content": [item] * n_images + [{"type": "text", "text": text}]}


# chat messages with a PIL image block, then with a local path
for name, item in (("pil", {"type": "image", "image": image}), ("path", {"type": "image", "path": image_path})):
    messages = [ask("What is in the picture?", 1, item)]
    out = pipe(text=messages, generate_kwargs=gen, return_full_text=False)[0]["generated_text"]
    report[name] = [out, reference(messages, [image])]

# raw images= + text=
raw = pipe(images=image, text="<image>\nDescribe.", generate_kwargs=gen, return_full_text=False)[0]["generated_text"]
inputs = processor(images=image, text="<image>\nDescribe.", return_tensors="pt")
new = model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1] :]
report["raw"] = [raw, processor.tokenizer.decode(new, skip_special_tokens=True)]

# a batch of three chats with 0, 1 and 2 images
item = {"type": "image", "image": image}
chats = [[ask("Say hi.", 0, item)], [ask("One image?", 1, item)], [ask("Two images?", 2, item)]]
batch = pipe(text=chats, generate_kwargs=gen, return_full_text=False)  # a list: one call, three results
report["batch"] = [
    [b[0]["generated_text"] for b in batch],
    [reference(c, [image] * n) for c, n in zip(chats, (0, 1, 2), strict=True)],
]

# streaming through generate_kwargs
streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
result = {}
worker = threading.Thread(
    target=lambda: result.update(
        out=pipe(text=chats[1], generate_kwargs={**gen, "streamer": streamer}, return_full_text=False)
    )
)
worker.start()
streamed = "".join(streamer)
worker.join()
report["stream"] = [streamed, result["out"][0]["generated_text"]]

# the original chat API on the same inputs
pixel_values = torch.tensor(processor.image_processor(images=image, return_tensors="np")["pixel_values"])
report["chat"] = [model.chat(tokenizer, pixel_values, "What is in the picture?", gen), report["pil"][0]]
both = torch.cat([pixel_values, pixel_values])
replies = model.batch_chat(
    tokenizer,
    both,
    ["What is in the picture?", "Describe."],
    generation_config=gen,
    num_patches_list=[pixel_values.shape[0]] * 2,
)
report["batch_chat"] = [replies[0], report["pil"][0]]
response, history = model.chat(tokenizer, None, "Say hi.", gen, history=None, return_history=True)
report["chat_text"] = [response, batch[0][0]["generated_text"]]
report["history_len"] = len(history)
print("REPORT" + json.dumps(report))
