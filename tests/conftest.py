import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from hovle.conversion.to_transformers import convert
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import TINY_IMAGE_TOKEN, tiny_config


def find_shared_dir() -> Path:
    """The project's read-only `shared/` folder: `$HOVLE_SHARED_DIR`, else `../shared` beside this checkout, else
    beside the checkout it was cloned from (a local `git clone . /tmp/x`, as CI does, lands far from `shared/`)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["HOVLE_SHARED_DIR"])] if os.environ.get("HOVLE_SHARED_DIR") else []
    candidates.append(repo.parent / "shared")
    origin = subprocess.run(
        ["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared")
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


FIXTURE = find_shared_dir() / "fixtures" / "original_tiny"
SHAPES_JSON = FIXTURE.parents[1] / "reference" / "original_checkpoint_shapes.json"
IMG_START, IMG_END = TINY_IMAGE_TOKEN - 2, TINY_IMAGE_TOKEN - 1


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert (FIXTURE / "original" / "config.json").exists(), f"golden fixture not found at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def converted_fixture(tmp_path_factory, fixture_dir) -> Path:
    out = tmp_path_factory.mktemp("converted") / "hovle-tiny"
    return convert(fixture_dir / "original", out, dtype="float32", progress=False)


def build_model(pixel_shuffle_loc="pre", attn="eager", seed=0) -> HoVLEForConditionalGeneration:
    torch.manual_seed(seed)
    config = tiny_config(pixel_shuffle_loc)
    config._attn_implementation = attn
    model = HoVLEForConditionalGeneration(config).eval()
    # Larger-than-init weights so that logits differ clearly between tokens (a meaningful greedy path).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name and "norm.weight" not in name:
                # crc32, not hash(): str hashes are salted per process, which made the weights differ run to run.
                param_seed = zlib.crc32(f"{seed}:{name}".encode())
                param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(param_seed))
    return model


def image_prompt(text_before: list[int], tiles_per_image: list[int], text_after: list[int], tokens_per_tile=4):
    """BOS + text + one `<img><IMG_CONTEXT>*n</img>` block per image + text, as a list of ids."""
    ids = [1, *text_before]
    for tiles in tiles_per_image:
        ids += [IMG_START] + [TINY_IMAGE_TOKEN] * (tiles * tokens_per_tile) + [IMG_END]
    return ids + list(text_after)


def load_expected(fixture_dir: Path):
    from safetensors.torch import load_file

    cases = json.loads((fixture_dir / "expected.json").read_text())["cases"]
    return cases, load_file(str(fixture_dir / "expected.safetensors"))


def output_cache(outputs):
    """The cache of a model output on any supported transformers (`cache` since 5.2x, `past_key_values` before)."""
    return outputs["cache"] if "cache" in outputs else outputs["past_key_values"]


@pytest.fixture(scope="session")
def tiny_hub_folder(tmp_path_factory) -> Path:
    """A converted tiny model WITH tokenizer and processor (the fixture has none): what a Hub repo holds."""
    from hovle.testing import write_original_checkpoint, write_tiny_tokenizer

    root = tmp_path_factory.mktemp("hub")
    source = write_original_checkpoint(root / "original", tiny_config("pre"), seed=0)
    write_tiny_tokenizer(source)
    return convert(source, root / "hovle-tiny", dtype="float32", progress=False)
