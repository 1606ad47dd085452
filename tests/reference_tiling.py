"""An independent, plain PIL + numpy implementation of InternVL's dynamic tiling (HOVLE.md section 6), written
from the algorithm's description and the original release's `load_image` code. The tests compare the processor
with it; the preprocessing benchmark uses it as the baseline."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def closest_grid(width: int, height: int, min_num: int, max_num: int, tile: int) -> tuple[int, int]:
    """(columns, rows) whose ratio is closest to width/height; on a tie the later grid wins only if the image
    area exceeds half of that grid's pixel area."""
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    grids = sorted(grids, key=lambda g: g[0] * g[1])
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_image(image: Image.Image, min_num: int = 1, max_num: int = 6, tile: int = 448, thumbnail: bool = True):
    image = image.convert("RGB")
    cols, rows = closest_grid(image.width, image.height, min_num, max_num, tile)
    resized = image.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)
    ]
    if thumbnail and len(tiles) != 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return (cols, rows), tiles


def normalize(tile: Image.Image) -> np.ndarray:
    array = np.asarray(tile, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def reference_pixel_values(image: Image.Image, max_num: int = 6, tile: int = 448) -> tuple[tuple[int, int], np.ndarray]:
    grid, tiles = tile_image(image, 1, max_num, tile)
    return grid, np.stack([normalize(t) for t in tiles])
