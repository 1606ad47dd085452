"""original -> HF -> original is bit-exact; the full-size key table; dtype and sharding of the output."""

import json

import torch
from helpers import SHAPES_JSON

from hovle.conversion.checkpoint_io import TensorSource
from hovle.conversion.config_map import hovle_config_from_original
from hovle.conversion.layout import expected_original_shapes
from hovle.conversion.to_original import export
from hovle.conversion.to_transformers import convert
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.testing import release_original_config


def read_all(folder):
    source = TensorSource(folder)
    return {key: source.get(key) for key in source.keys()}


def test_round_trip_is_bit_exact(fixture_dir, converted_fixture, tmp_path):
    exported = export(converted_fixture, tmp_path / "back", dtype="float32", progress=False)
    original, back = read_all(fixture_dir / "original"), read_all(exported)
    assert sorted(original) == sorted(back) and len(original) == 47
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype == torch.float32, key
        assert torch.equal(back[key], tensor), key
    # The exported config.json converts to the same HoVLE config as the original did.
    again = hovle_config_from_original(json.loads((exported / "config.json").read_text()))
    first = hovle_config_from_original(json.loads((fixture_dir / "original" / "config.json").read_text()))
    assert again.to_dict() == first.to_dict()


def test_full_size_key_table_on_meta_device():
    release = {k: tuple(v) for k, v in json.loads(SHAPES_JSON.read_text()).items()}
    assert len(release) == 236
    config = hovle_config_from_original(release_original_config())
    assert expected_original_shapes(config) == release  # every key maps, at full size, both directions
    with torch.device("meta"):
        model = HoVLEForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 2_606_327_808
    assert config.text_config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    assert config.tokens_per_tile == 256


def test_bfloat16_output_halves_the_bytes(fixture_dir, converted_fixture, tmp_path):
    bf16 = convert(fixture_dir / "original", tmp_path / "bf16", dtype="bfloat16", progress=False)
    fp32_tensors, bf16_tensors = read_all(converted_fixture), read_all(bf16)
    assert all(t.dtype == torch.bfloat16 for t in bf16_tensors.values())
    fp32_bytes = sum(t.nbytes for t in fp32_tensors.values())
    assert sum(t.nbytes for t in bf16_tensors.values()) * 2 == fp32_bytes
    for key, tensor in fp32_tensors.items():
        assert torch.equal(bf16_tensors[key], tensor.to(torch.bfloat16)), key
    config = json.loads((bf16 / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["auto_map"]["AutoModelForImageTextToText"]
    card = (bf16 / "README.md").read_text()
    for field in ("pipeline_tag: image-text-to-text", "library_name: transformers", "license: mit"):
        assert field in card
    # A local source: named as such, no Hub base_model claimed (test_conversion_refusals covers a Hub id).
    assert "base_model" not in card and "converted from a local checkpoint (original)" in card


def test_sharded_and_bin_sources_convert_identically(fixture_dir, converted_fixture, tmp_path):
    tensors = read_all(fixture_dir / "original")
    config = (fixture_dir / "original" / "config.json").read_text()
    # A sharded safetensors source with an index, written by our own sharding writer via a tiny shard size.
    sharded = convert(
        fixture_dir / "original", tmp_path / "sharded_hf", dtype="float32", max_shard_size="200KB", progress=False
    )
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    back = export(sharded, tmp_path / "sharded_original", max_shard_size="300KB", progress=False)
    assert (back / "model.safetensors.index.json").exists()
    # A training checkpoint as pytorch_model.bin.
    bin_dir = tmp_path / "bin_source"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text(config)
    torch.save(tensors, bin_dir / "pytorch_model.bin")
    from_bin = convert(bin_dir, tmp_path / "from_bin", dtype="float32", progress=False)
    from_index = convert(back, tmp_path / "from_index", dtype="float32", progress=False)
    reference = read_all(converted_fixture)
    for folder in (sharded, from_bin, from_index):
        got = read_all(folder)
        assert sorted(got) == sorted(reference)
        assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_wqkv_split_follows_the_documented_packing():
    """Row ((kv * (g + 2)) + slot) * head_dim + d: checked against an index computation, not the code's reshape."""
    from hovle.conversion.layout import AttentionGeometry

    geometry = AttentionGeometry(num_heads=4, num_kv_heads=2, head_dim=3)
    g, hd = geometry.queries_per_kv, geometry.head_dim
    rows = (geometry.num_kv_heads * (g + 2)) * hd
    wqkv = torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 5)
    q, k, v = geometry.split_wqkv(wqkv)
    for head in range(geometry.num_heads):
        kv, slot = divmod(head, g)
        for d in range(hd):
            assert q[head * hd + d, 0] == ((kv * (g + 2)) + slot) * hd + d
    for kv in range(geometry.num_kv_heads):
        for d in range(hd):
            assert k[kv * hd + d, 0] == ((kv * (g + 2)) + g) * hd + d
            assert v[kv * hd + d, 0] == ((kv * (g + 2)) + g + 1) * hd + d
    assert torch.equal(geometry.fuse_wqkv(q, k, v), wqkv)
