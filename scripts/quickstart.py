"""The main job end to end, offline: original-format checkpoint -> converted Hub folder -> AutoModel -> generate.

With no argument it builds a TINY, RANDOM, UNTRAINED checkpoint in the original release layout (its output is
noise by construction); pass an original-format folder or Hub id to convert a real one instead.

    python scripts/quickstart.py [--input OpenGVLab/HoVLE] [--output ./HoVLE-hf]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from hovle.conversion.to_transformers import convert
from hovle.testing import tiny_config, write_original_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="original-format folder or Hub id (default: a tiny random checkpoint)")
    parser.add_argument("--output", help="where to write the converted folder (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hovle-quickstart-"))
    source = args.input
    if source is None:
        print("No --input: building a tiny RANDOM, UNTRAINED HoVLE checkpoint (original layout); outputs are noise.")
        source = write_original_checkpoint(work / "original", tiny_config("pre"), seed=0)
    output = Path(args.output) if args.output else work / "hovle-hf"
    convert(source, output, dtype="bfloat16")
    print(f"Converted folder: {output} -> {sorted(p.name for p in output.iterdir())}")

    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True, dtype=torch.float32)
    config = model.config
    tiles = 2
    image = [config.image_start_token_id] + [config.image_token_id] * (tiles * config.tokens_per_tile)
    prompt = torch.tensor([[config.text_config.bos_token_id, *image, config.image_end_token_id, 5, 6, 7]])
    side = config.embedding_config.image_size
    pixel_values = torch.randn(tiles, 3, side, side, generator=torch.Generator().manual_seed(0))
    generated = model.generate(input_ids=prompt, pixel_values=pixel_values, max_new_tokens=8, do_sample=False)
    print(f"Loaded {type(model).__name__} via AutoModelForImageTextToText (trust_remote_code)")
    print(f"Greedy token ids after a {tiles}-tile image prompt: {generated[0, prompt.shape[1] :].tolist()}")


if __name__ == "__main__":
    main()
