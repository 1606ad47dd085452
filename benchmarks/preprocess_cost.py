"""Preprocessing milliseconds per image: the HoVLE processor's image path (transformers' GotOcr2 PIL image
processor, configured for InternVL tiling as `hovle.conversion.tokenizer.build_processor` configures it) side by
side with the plain PIL + numpy implementation of the same algorithm that the tests check it against
(`hovle.testing.reference_pixel_values`), in one run. Each figure is the best of `--repeats` calls on a random image;
the two outputs are checked equal (atol 1e-6) first.

    python benchmarks/preprocess_cost.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from hovle.processing_hovle import IMAGENET_MEAN, IMAGENET_STD
from hovle.testing import reference_pixel_values

from common import argument_parser, best_of, write_json

# (image size, max tiles) chosen so the grid is 1, 6 and 12 tiles (+ thumbnail when more than one).
CASES = {"1 tile": ((448, 448), 1), "6 tiles + thumbnail": ((1344, 896), 6), "12 tiles + thumbnail": ((1792, 1344), 12)}


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    processor = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448},
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    rows = {}
    print("| image | tiles | processor ms | PIL+numpy reference ms | ratio |")
    print("|---|---|---|---|---|")
    for name, ((width, height), max_tiles) in CASES.items():
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))
        ours = processor(images=image, max_patches=max_tiles, return_tensors="np")["pixel_values"]
        _, reference = reference_pixel_values(image, max_num=max_tiles)
        assert ours.shape == reference.shape and np.abs(ours - reference).max() < 1e-6
        ours_ms = 1e3 * best_of(
            lambda image=image, tiles=max_tiles: processor(images=image, max_patches=tiles, return_tensors="np"),
            args.repeats,
        )
        reference_ms = 1e3 * best_of(
            lambda image=image, tiles=max_tiles: reference_pixel_values(image, max_num=tiles), args.repeats
        )
        rows[name] = {"tiles": ours.shape[0], "processor_ms": ours_ms, "reference_ms": reference_ms}
        print(
            f"| {width}x{height} | {ours.shape[0]} | {ours_ms:.1f} | {reference_ms:.1f} | {ours_ms / reference_ms:.2f} |"
        )
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
