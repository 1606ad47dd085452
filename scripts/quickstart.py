"""The main job end to end, offline: original-format release -> converted Hub folder -> AutoModel -> a reply.

With no argument it converts the embedded demo model (`hovle.embedded_release()`: a tiny HoVLE trained on synthetic
shapes, `hovle.shapes_task`; not HoVLE's weights) and asks it about `scripts/sample.png`; pass an original-format
folder or Hub id to convert a real release instead.

    python scripts/quickstart.py [--input OpenGVLab/HoVLE] [--output ./HoVLE-hf]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import hovle
from hovle.commands import EMBEDDED_MODEL_DESCRIPTION
from hovle.conversion.to_transformers import convert
from hovle.shapes_task import SAMPLE_KIND, SAMPLE_QUESTION, chat, sample_image

SAMPLE = Path(__file__).resolve().parent / "sample.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="original-format folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--output", help="where to write the converted folder (default: a temporary folder)")
    args = parser.parse_args()

    source = args.input
    if source is None:
        source = hovle.embedded_release()
        print(f"No --input: converting {EMBEDDED_MODEL_DESCRIPTION} ({source}).")
    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="hovle-quickstart-")) / "hovle-hf"
    convert(source, output, dtype="bfloat16")
    print(f"Converted folder: {output} -> {sorted(p.name for p in output.iterdir())}")

    # The converted folder's own code (trust_remote_code), as in an environment without this package.
    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    print(f"Loaded {type(model).__name__} and {type(processor).__name__} via the Auto classes (trust_remote_code)")

    image = Image.open(SAMPLE).convert("RGB")
    prompt = processor.apply_chat_template(chat(SAMPLE_QUESTION), add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    reply = processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"{SAMPLE.name} ({image.width}x{image.height}): {SAMPLE_QUESTION}")
    print(f"Reply: {reply}")
    if args.input is None:  # the demo model's task: the generator knows the answer
        print(f"The task's answer: {sample_image().answer(SAMPLE_KIND)}")


if __name__ == "__main__":
    main()
