"""pipeline("image-text-to-text") offline in a fresh process, the original chat() API, generate() modes."""

import pytest
import torch
from helpers import child_report, run_child
from PIL import Image


@pytest.mark.slow
def test_pipeline_chat_and_original_api(tiny_hub_folder, tmp_path):
    image_path = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((300, 200)).save(image_path)
    report = child_report(run_child("pipeline_child.py", tiny_hub_folder, image_path, cwd="/"))
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
