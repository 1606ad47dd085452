"""A bad checkpoint (missing, extra or mis-shaped tensors, truncated shards, an index naming a missing shard, an
unknown architecture) gets a clear error naming the problem from `hovle convert`, and nothing is written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hovle.cli import main
from hovle.conversion.checkpoint_io import CheckpointError
from hovle.conversion.to_transformers import convert


def rewrite(folder, change):
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def assert_fails_cleanly(source, tmp_path, *fragments):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as error:
        convert(source, out, progress=False)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name], "scratch folder left behind"
    return str(error.value)


def test_missing_tensor(source, tmp_path):
    rewrite(source, lambda t: t.pop("language_model.model.layers.1.feed_forward.w3.weight"))
    assert_fails_cleanly(source, tmp_path, "missing", "language_model.model.layers.1.feed_forward.w3.weight")


def test_extra_tensor(source, tmp_path):
    rewrite(source, lambda t: t.update({"embedding_model.encoder.0.attention.lora_A": torch.zeros(2)}))
    assert_fails_cleanly(source, tmp_path, "unknown", "embedding_model.encoder.0.attention.lora_A")


def test_extra_layer(source, tmp_path):
    def add_layer(tensors):
        tensors["embedding_model.encoder.2.ffn_norm.weight"] = torch.zeros(64)

    rewrite(source, add_layer)
    assert_fails_cleanly(
        source, tmp_path, "num_hidden_layers is 2", "tensors beyond the config's layers", "encoder.2.ffn_norm.weight"
    )


def test_wrong_shape(source, tmp_path):
    rewrite(source, lambda t: t.update({"language_model.output.weight": torch.zeros(1000, 64)}))
    assert_fails_cleanly(source, tmp_path, "wrong shape", "language_model.output.weight", "[1000, 64]", "[1024, 64]")


def test_truncated_shard(source, tmp_path):
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_fails_cleanly(source, tmp_path, "model.safetensors", "truncated")


def test_truncated_bin(source, tmp_path):
    tensors = load_file(str(source / "model.safetensors"))
    (source / "model.safetensors").unlink()
    torch.save(tensors, source / "pytorch_model.bin")
    data = (source / "pytorch_model.bin").read_bytes()
    (source / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    assert_fails_cleanly(source, tmp_path, "pytorch_model.bin", "truncated")


def test_index_naming_a_missing_shard(source, tmp_path):
    tensors = load_file(str(source / "model.safetensors"))
    (source / "model.safetensors").unlink()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:20]}, str(source / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys[:20]}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in keys[20:]})
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_fails_cleanly(source, tmp_path, "model-00002-of-00002.safetensors", "missing")


def test_unknown_architecture(source, tmp_path):
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["LlavaForConditionalGeneration"]
    (source / "config.json").write_text(json.dumps(config))
    assert_fails_cleanly(source, tmp_path, "unknown architectures", "LlavaForConditionalGeneration")


def test_existing_output_is_left_alone(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not empty"):
        convert(source, out, progress=False)
    assert (out / "keep.txt").read_text() == "precious"


def test_cli_reports_error_and_exit_code(source, tmp_path, capsys):
    rewrite(source, lambda t: t.pop("language_model.output.weight"))
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out")]) == 2
    assert "language_model.output.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
