"""pipeline("image-text-to-text") offline in a fresh process, the original chat() API, generate() modes."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from PIL import Image

CHILD = textwrap.dedent(
    """
    import json, sys, threading
    import numpy as np, torch
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
        new = model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1]:]
        return processor.tokenizer.decode(new, skip_special_tokens=True)

    def ask(text, n_images, item):
        return {"role": "user", "content": [item] * n_images + [{"type": "text", "text": text}]}

    # chat messages with a PIL image block, then with a local path
    for name, item in (("pil", {"type": "image", "image": image}), ("path", {"type": "image", "path": image_path})):
        messages = [ask("What is in the picture?", 1, item)]
        out = pipe(text=messages, generate_kwargs=gen, return_full_text=False)[0]["generated_text"]
        report[name] = [out, reference(messages, [image])]

    # raw images= + text=
    raw = pipe(images=image, text="<image>\\nDescribe.", generate_kwargs=gen, return_full_text=False)[0]["generated_text"]
    inputs = processor(images=image, text="<image>\\nDescribe.", return_tensors="pt")
    new = model.generate(**inputs, **gen)[0, inputs["input_ids"].shape[1]:]
    report["raw"] = [raw, processor.tokenizer.decode(new, skip_special_tokens=True)]

    # a batch of three chats with 0, 1 and 2 images
    item = {"type": "image", "image": image}
    chats = [[ask("Say hi.", 0, item)], [ask("One image?", 1, item)], [ask("Two images?", 2, item)]]
    batch = pipe(text=chats, generate_kwargs=gen, return_full_text=False)  # a list: one call, three results
    report["batch"] = [[b[0]["generated_text"] for b in batch], [reference(c, [image] * n) for c, n in zip(chats, (0, 1, 2))]]

    # streaming through generate_kwargs
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=pipe(text=chats[1], generate_kwargs={**gen, "streamer": streamer}, return_full_text=False)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    report["stream"] = [streamed, result["out"][0]["generated_text"]]

    # the original chat API on the same inputs
    pixel_values = torch.tensor(processor.image_processor(images=image, return_tensors="np")["pixel_values"])
    report["chat"] = [model.chat(tokenizer, pixel_values, "What is in the picture?", gen), report["pil"][0]]
    both = torch.cat([pixel_values, pixel_values])
    replies = model.batch_chat(tokenizer, both, ["What is in the picture?", "Describe."], generation_config=gen,
                               num_patches_list=[pixel_values.shape[0]] * 2)
    report["batch_chat"] = [replies[0], report["pil"][0]]
    response, history = model.chat(tokenizer, None, "Say hi.", gen, history=None, return_history=True)
    report["chat_text"] = [response, batch[0][0]["generated_text"]]
    report["history_len"] = len(history)
    print("REPORT" + json.dumps(report))
    """
)


def test_pipeline_chat_and_original_api(tiny_hub_folder, tmp_path):
    image_path = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((300, 200)).save(image_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_hub_folder), str(image_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert report["model"] == "HoVLEForConditionalGeneration" and report["processor"] == "HoVLEProcessor"
    for key in ("pil", "path", "raw", "stream"):
        got, expected = report[key]
        assert got == expected and got.strip(), (key, report[key])
    assert report["batch"][0] == report["batch"][1]
    assert len(set(report["batch"][0])) == 3
    # chat() strips the reply as the original did; the pipeline keeps the decoded text as is.
    for key in ("chat", "batch_chat", "chat_text"):
        assert report[key][0] == report[key][1].strip(), (key, report[key])
    assert report["history_len"] == 1


def test_generate_modes(tiny_hub_folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_hub_folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)
    image = Image.radial_gradient("L").convert("RGB")
    prompts = ["<image>\nOne", "Image-1: <image>\nImage-2: <image>\nTwo images, longer text here", "No image"]
    inputs = processor(images=[image, image, image], text=prompts, return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).any(), "left padding expected"
    assert model.generation_config.eos_token_id[0] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=20, temperature=0.8)
    beams = model.generate(**inputs, max_new_tokens=6, num_beams=3, do_sample=False, num_return_sequences=2)
    assert greedy.shape[0] == sampled.shape[0] == 3 and beams.shape[0] == 6
    # Each left-padded row equals the same prompt alone.
    for row, (prompt, images) in enumerate(zip(prompts, ([image], [image, image], None), strict=True)):
        alone = processor(images=images, text=prompt, return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=6, do_sample=False)[0, alone["input_ids"].shape[1] :]
        padded = greedy[row, inputs["input_ids"].shape[1] :]
        assert padded[: len(single)].tolist() == single.tolist(), row
