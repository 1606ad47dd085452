"""What `hovle convert` / `hovle export` say about bad inputs (config numbers against the tensors, shard sizes,
non-finite weights), a source without a tokenizer, the tokenizer's way back through export, the model card's source,
a failed upload and the progress bar. A refused input leaves nothing: no output, no scratch folder, no lock."""

import json
import logging
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from hovle.cli import main
from hovle.conversion import to_transformers
from hovle.conversion.checkpoint_io import CheckpointError, TensorSource
from hovle.conversion.to_original import export
from hovle.conversion.to_transformers import convert
from hovle.testing import write_tiny_tokenizer

NONFINITE_HINT = ". Pass --allow-nonfinite (allow_nonfinite=True) to write them anyway"
NO_TOKENIZER = (
    "{source} has no tokenizer (no tokenizer.model): the converted folder will have no tokenizer and no processor, "
    "so pipeline(), AutoProcessor, `hovle chat` and `hovle train` cannot use it. Pass --tokenizer DIR_OR_HUB_ID "
    "(tokenizer_source=) to take the release's tokenizer files from another folder or Hub repo, e.g. OpenGVLab/HoVLE"
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The release's tokenizer files for the tiny vocabulary (tokenizer.model + tokenizer_config.json)."""
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tok")


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, change):
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def assert_nothing_written(output):
    assert not output.exists(), f"{output} was written"
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert not leftovers, f"scratch folder or lock left beside the output: {leftovers}"


def refusal(source, output, **kwargs) -> str:
    """The message of a refused conversion, after checking that nothing was written."""
    with pytest.raises(CheckpointError) as error:
        convert(source, output, progress=False, **kwargs)
    assert_nothing_written(output)
    return str(error.value)


# -- 1. the config against the tensors, before anything is built ---------------------------------------------------


def test_absurd_layer_count_is_refused_at_once_in_one_short_line(source, tmp_path):
    edit_config(source, lambda c: c["llm_config"].update(num_hidden_layers=100000))
    started = time.perf_counter()
    message = refusal(source, tmp_path / "out")
    assert time.perf_counter() - started < 20  # no meta model of 100000 layers (minutes before)
    assert message == (
        "Cannot convert: config.json: llm_config.num_hidden_layers is 100000, but the checkpoint's tensors hold "
        "3 LLM layer(s) (language_model.model.layers.0.* .. language_model.model.layers.2.*)"
    )


def test_fewer_layers_in_config_than_in_tensors_names_both_counts_and_the_extra_tensors(source, tmp_path):
    edit_config(source, lambda c: c["embedding_config"].update(num_hidden_layers=1))
    assert refusal(source, tmp_path / "out") == (
        "Cannot convert: config.json: embedding_config.num_hidden_layers is 1, but the checkpoint's tensors hold 2 "
        "embedding-module layer(s) (embedding_model.encoder.0.* .. embedding_model.encoder.1.*); tensors beyond the "
        "config's layers: embedding_model.encoder.1.attention.wo.weight, embedding_model.encoder.1.attention.wqkv."
        "weight, embedding_model.encoder.1.attention_norm.weight, embedding_model.encoder.1.feed_forward.w1.weight, "
        "embedding_model.encoder.1.feed_forward.w2.weight ... and 2 more"
    )


def test_hidden_size_against_the_embedding_tables(source, tmp_path):
    def wider(config):
        config["embedding_config"]["hidden_size"] = 128
        config["llm_config"]["hidden_size"] = 128

    edit_config(source, wider)
    assert refusal(source, tmp_path / "out") == (
        "Cannot convert: config.json: embedding_config.hidden_size is 128, but embedding_model.llm_text_embeddings."
        "weight has shape [1024, 64] (hidden size 64); config.json: llm_config.hidden_size is 128, but "
        "language_model.model.tok_embeddings.weight has shape [1024, 64], language_model.output.weight has shape "
        "[1024, 64], language_model.model.norm.weight has shape [64] (hidden size 64)"
    )


def test_vocabulary_size_against_the_embedding_tables(source, tmp_path):
    def bigger(config):
        config["embedding_config"]["llm_vocab_size"] = 2048
        config["llm_config"]["vocab_size"] = 2048

    edit_config(source, bigger)
    assert refusal(source, tmp_path / "out") == (
        "Cannot convert: config.json: embedding_config.llm_vocab_size is 2048, but embedding_model.llm_text_"
        "embeddings.weight has shape [1024, 64] (vocabulary size 1024); config.json: llm_config.vocab_size is "
        "2048, but language_model.model.tok_embeddings.weight has shape [1024, 64], language_model.output.weight "
        "has shape [1024, 64] (vocabulary size 1024)"
    )


def test_export_checks_its_config_against_the_tensors_too(converted_fixture, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(converted_fixture, source)
    config = json.loads((source / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 100000
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        export(source, tmp_path / "out", progress=False)
    assert str(error.value) == (
        "Cannot export: config.json: text_config.num_hidden_layers is 100000, but the checkpoint's tensors hold 3 "
        "LLM layer(s) (model.language_model.layers.0.* .. model.language_model.layers.2.*)"
    )
    assert_nothing_written(tmp_path / "out")


def test_a_long_list_of_keys_is_cut_after_the_first_few(source, tmp_path):
    edit_tensors(source, lambda t: [t.pop(k) for k in list(t) if k.startswith("language_model.model.layers.0.")])
    assert refusal(source, tmp_path / "out") == (
        "Cannot convert: 7 missing tensor(s): language_model.model.layers.0.attention.wo.weight, "
        "language_model.model.layers.0.attention.wqkv.weight, language_model.model.layers.0.attention_norm.weight, "
        "language_model.model.layers.0.feed_forward.w1.weight, language_model.model.layers.0.feed_forward.w2.weight"
        " ... and 2 more"
    )


BAD_NUMBERS = {
    "zero width": (
        ("llm_config", "hidden_size", 0),
        "config.json: llm_config.hidden_size must be a whole number of at least 1, got 0",
    ),
    "negative heads": (
        ("embedding_config", "num_attention_heads", -4),
        "config.json: embedding_config.num_attention_heads must be a whole number of at least 1, got -4",
    ),
    "zero layers": (
        ("llm_config", "num_hidden_layers", 0),
        "config.json: llm_config.num_hidden_layers must be a whole number of at least 1, got 0",
    ),
    "fractional size": (
        ("embedding_config", "intermediate_size", 127.5),
        "config.json: embedding_config.intermediate_size must be a whole number of at least 1, got 127.5",
    ),
    "heads not dividing the width": (
        ("llm_config", "num_attention_heads", 3),
        "config.json: llm_config.num_attention_heads 3 does not divide llm_config.hidden_size 64",
    ),
    "kv heads not dividing the heads": (
        ("embedding_config", "num_key_value_heads", 3),
        "config.json: embedding_config.num_key_value_heads 3 does not divide embedding_config.num_attention_heads 4",
    ),
    "image token past the vocabulary": (
        ("embedding_config", "img_context_token_id", 1024),
        "config.json: embedding_config.img_context_token_id 1024 is outside the vocabulary of 1024 tokens (it must "
        "be 2 .. 1023: <img> and </img> take the two ids before it)",
    ),
    "image token without room for <img>": (
        ("embedding_config", "img_context_token_id", 1),
        "config.json: embedding_config.img_context_token_id 1 is outside the vocabulary of 1024 tokens (it must "
        "be 2 .. 1023: <img> and </img> take the two ids before it)",
    ),
    "min tiles above max tiles": (
        (None, "min_dynamic_patch", 7),
        "config.json: min_dynamic_patch 7 is greater than max_dynamic_patch 6",
    ),
    "min tiles zero": (
        (None, "min_dynamic_patch", 0),
        "config.json: min_dynamic_patch must be a whole number of at least 1, got 0",
    ),
    "image size not a multiple of the patch": (
        ("embedding_config", "image_size", 50),
        "config.json: embedding_config.image_size 50 is not a multiple of embedding_config.patch_size 14",
    ),
    "zero patch": (
        ("embedding_config", "patch_size", 0),
        "config.json: embedding_config.patch_size must be a whole number of at least 1, got 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD_NUMBERS))
def test_bad_numbers_in_config_json(source, tmp_path, case):
    (section, name, value), expected = BAD_NUMBERS[case]
    edit_config(source, lambda c: (c[section] if section else c).update({name: value}))
    assert refusal(source, tmp_path / "out") == expected


BAD_SIZES = {
    "abc": "--max-shard-size 'abc' is not a size: give bytes or a number with a unit, e.g. 5GB, 500MB, 2GiB",
    "0": "--max-shard-size '0' must be at least 1 byte",
    "-5GB": "--max-shard-size '-5GB' must be at least 1 byte",
}


@pytest.mark.parametrize("size", list(BAD_SIZES))
def test_bad_max_shard_size(source, tmp_path, size, capsys):
    assert refusal(source, tmp_path / "out", max_shard_size=size) == BAD_SIZES[size]
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out"), f"--max-shard-size={size}"]) == 2
    assert capsys.readouterr().err == f"error: {BAD_SIZES[size]}\n"
    assert_nothing_written(tmp_path / "out")


def test_bad_max_shard_size_in_export(converted_fixture, tmp_path):
    with pytest.raises(CheckpointError) as error:
        export(converted_fixture, tmp_path / "out", max_shard_size="abc", progress=False)
    assert str(error.value) == BAD_SIZES["abc"]
    assert_nothing_written(tmp_path / "out")


# -- 2. values the output dtype cannot hold, NaN/Inf in the source -------------------------------------------------


def too_big_for_float16(tensors):
    tensors["language_model.output.weight"][0, 0] = 1e6
    tensors["language_model.output.weight"][1, 1] = -7e4
    tensors["embedding_model.encoder.0.attention.wqkv.weight"][0, 0] = 1e5


def test_float16_overflow_is_refused_naming_tensors_and_counts(source, tmp_path):
    edit_tensors(source, too_big_for_float16)
    assert refusal(source, tmp_path / "out", dtype="float16") == (
        "Refusing to write non-finite weights: 2 tensor(s) hold values beyond float16's range (+-65504) that would "
        "become inf: embedding_model.encoder.0.attention.wqkv.weight (1 value), language_model.output.weight "
        "(2 values)" + NONFINITE_HINT
    )


def test_nan_and_inf_in_the_source_are_refused(source, tmp_path):
    def poison(tensors):
        tensors["language_model.model.norm.weight"][:2] = torch.tensor([float("nan"), float("inf")])
        tensors["embedding_model.pixel_shuffle_proj.0.bias"][5] = float("-inf")

    edit_tensors(source, poison)
    assert refusal(source, tmp_path / "out", dtype="bfloat16") == (
        "Refusing to write non-finite weights: 2 tensor(s) of the source already hold NaN or Inf: "
        "embedding_model.pixel_shuffle_proj.0.bias (1 value), language_model.model.norm.weight (2 values)"
        + NONFINITE_HINT
    )


def test_allow_nonfinite_writes_them_with_a_warning(source, tmp_path, caplog):
    edit_tensors(source, too_big_for_float16)
    with caplog.at_level(logging.WARNING, logger="hovle"):
        out = convert(source, tmp_path / "out", dtype="float16", allow_nonfinite=True, progress=False)
    written = TensorSource(out).get("lm_head.weight")
    assert written[0, 0] == float("inf") and written[1, 1] == float("-inf")
    assert "Writing non-finite weights as allowed: 2 tensor(s) hold values beyond float16's range" in caplog.text


def test_cli_refuses_overflow_and_allow_nonfinite_lets_it_through(source, tmp_path, capsys):
    edit_tensors(source, too_big_for_float16)
    command = ["convert", "--input", str(source), "--output", str(tmp_path / "out"), "--dtype", "float16"]
    assert main(command) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "Traceback" in line or line.startswith("error:")] == [err[-1]]
    assert err[-1].startswith("error: Refusing to write non-finite weights: 2 tensor(s) hold values beyond float16")
    assert err[-1].endswith("--allow-nonfinite (allow_nonfinite=True) to write them anyway")
    assert_nothing_written(tmp_path / "out")
    assert main([*command, "--allow-nonfinite"]) == 0
    assert "[hovle] warning: Writing non-finite weights as allowed" in capsys.readouterr().err


def test_export_refuses_float16_overflow(source, tmp_path):
    edit_tensors(source, too_big_for_float16)
    converted = convert(source, tmp_path / "hf", dtype="float32", progress=False)  # float32 holds 1e6
    with pytest.raises(CheckpointError) as error:
        export(converted, tmp_path / "out", dtype="float16", progress=False)
    assert str(error.value) == (
        "Refusing to write non-finite weights: 2 tensor(s) hold values beyond float16's range (+-65504) that would "
        "become inf: model.embedding_model.layers.0.self_attn.q_proj.weight (1 value), lm_head.weight (2 values)"
        + NONFINITE_HINT
    )
    assert_nothing_written(tmp_path / "out")
    assert main(["export", "--input", str(converted), "--output", str(tmp_path / "out"), "--dtype", "float16"]) == 2
    assert main(["export", "--input", str(converted), "--output", str(tmp_path / "out"), "--dtype", "float16",
                 "--allow-nonfinite"]) == 0  # fmt: skip


# -- 3. a source without a tokenizer; --tokenizer -------------------------------------------------------------------


def test_missing_tokenizer_is_a_warning_on_stderr(source, tmp_path, capsys):
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out"), "--dtype", "float32"]) == 0
    err = capsys.readouterr().err
    assert "[hovle] warning: " + NO_TOKENIZER.format(source=source) in err.splitlines(), err


def test_convert_api_warns_and_still_returns_the_folder(source, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hovle"):
        out = convert(source, tmp_path / "out", dtype="float32", progress=False)
    assert out == tmp_path / "out" and (out / "model.safetensors").is_file()
    assert NO_TOKENIZER.format(source=source) in caplog.messages


def test_tokenizer_from_another_folder(source, tokenizer_dir, tmp_path, capsys):
    from transformers import AutoProcessor

    out = tmp_path / "out"
    command = ["convert", "--input", str(source), "--output", str(out), "--dtype", "float32"]
    assert main([*command, "--tokenizer", str(tokenizer_dir)]) == 0
    assert "has no tokenizer" not in capsys.readouterr().err
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == 1022
    assert sorted(p.name for p in (out / "original_tokenizer").iterdir()) == [
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert "Tokenizer from a local checkpoint (tok)." in (out / "README.md").read_text()


def test_tokenizer_folder_without_tokenizer_model_is_refused(source, tmp_path):
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    assert refusal(source, tmp_path / "out", tokenizer_source=empty) == (
        f"--tokenizer {empty}: no tokenizer.model in {empty} (expected the release's tokenizer files: "
        "tokenizer.model, tokenizer_config.json, added_tokens.json, special_tokens_map.json)"
    )


# -- 4. the tokenizer survives export -> convert ---------------------------------------------------------------------


def test_export_writes_the_release_tokenizer_back(source, tokenizer_dir, tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerFast

    first = convert(source, tmp_path / "first", dtype="float32", progress=False, tokenizer_source=tokenizer_dir)
    # The kept release files do not change what AutoTokenizer / AutoProcessor load: the stock fast tokenizer.
    # (trust_remote_code: AutoTokenizer reads config.json, whose HoVLEConfig is remote code; the tokenizer is not.)
    loaded = [AutoTokenizer.from_pretrained(first, trust_remote_code=True)]
    loaded.append(AutoProcessor.from_pretrained(first, trust_remote_code=True).tokenizer)
    for tokenizer in loaded:
        assert isinstance(tokenizer, PreTrainedTokenizerFast)
        assert tokenizer.init_kwargs.get("vocab_file") is None
        assert tokenizer("hello <IMG_CONTEXT>")["input_ids"][-1] == 1022
    exported = export(first, tmp_path / "exported", progress=False)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (exported / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    again = convert(exported, tmp_path / "again", dtype="float32", progress=False)
    assert (again / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    assert (again / "tokenizer_config.json").read_bytes() == (first / "tokenizer_config.json").read_bytes()


# -- 5. the model card names the real source -------------------------------------------------------------------------


def card_header(folder):
    return (folder / "README.md").read_text().split("---")[1]


def test_model_card_names_the_real_source(source, tmp_path, monkeypatch):
    # A local folder: said so, and no Hub model is claimed as base_model.
    out = convert(source, tmp_path / "out", dtype="float32", progress=False)
    assert "base_model" not in card_header(out)
    assert "converted from a local checkpoint (source) for transformers" in (out / "README.md").read_text()
    assert "OpenGVLab" not in (out / "README.md").read_text()
    # A Hub id (its download stood in for by the local folder): the id, as base_model too.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(to_transformers, "resolve_folder", lambda repo, allow_patterns=None: source)
    out = convert("someone/HoVLE-finetune", tmp_path / "hub-out", dtype="float32", progress=False)
    assert "base_model: someone/HoVLE-finetune" in card_header(out)
    assert "converted from `someone/HoVLE-finetune` for transformers" in (out / "README.md").read_text()


# -- 6. a failed upload ----------------------------------------------------------------------------------------------


def assert_written_whole(output):
    assert (output / "config.json").is_file() and (output / "model.safetensors").is_file()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


def test_push_to_hub_offline_reports_the_folder_and_the_failure(source, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    command = ["convert", "--input", str(source), "--output", str(out), "--push-to-hub", "me/hovle-test"]
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: The converted folder was written at {out}, but the upload to me/hovle-test failed (ConnectionError: "
        f"HF_HUB_OFFLINE is set, so nothing can be uploaded); upload it later with `hf upload me/hovle-test {out}`"
    )
    assert_written_whole(out)


def test_push_to_hub_upload_error_is_one_line(source, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise RuntimeError("401 Client Error: Unauthorized for url\nInvalid credentials in Authorization header")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    out = tmp_path / "out"
    assert main(["convert", "--input", str(source), "--output", str(out), "--push-to-hub", "me/hovle-test"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Invalid credentials" not in err
    assert err.splitlines()[-1] == (
        f"error: The converted folder was written at {out}, but the upload to me/hovle-test failed (RuntimeError: "
        f"401 Client Error: Unauthorized for url); upload it later with `hf upload me/hovle-test {out}`"
    )
    assert_written_whole(out)


# -- 7. the progress bar ends at 100 % -------------------------------------------------------------------------------


def test_progress_bar_counts_every_written_tensor(source, tmp_path, capsys):
    convert(source, tmp_path / "out", dtype="float32", progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    # 47 source tensors, 5 fused wqkv among them, give 57 tensors: before, the bar stopped at 47/57 (82 %).
    assert last.startswith("Converting: 100%") and "57/57" in last, last


def test_config_json_that_is_not_an_object(source, tmp_path):
    (source / "config.json").write_text("[1, 2]")
    assert refusal(source, tmp_path / "out") == f"config.json in {source} must hold a JSON object"


def test_bad_numbers_are_checked_before_any_tensor_is_read(source, tmp_path):
    (source / "model.safetensors").write_bytes(b"not a checkpoint")
    edit_config(source, lambda c: c["llm_config"].update(num_attention_heads=3))
    assert "num_attention_heads 3 does not divide" in refusal(source, tmp_path / "out")
