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


# -- 8. every setting the converter reads is type-checked, naming the field (issue 20: items 8, 9) ------------------


def _activations_message():
    from transformers.activations import ACT2FN

    names = sorted(name for name in ACT2FN if not list(ACT2FN[name].parameters()))
    return "one of " + ", ".join(f'"{name}"' for name in names)


BAD_FIELDS = {
    "string read as a boolean": (
        (None, "normalize_encoder_output", "false"),
        'config.json: normalize_encoder_output must be true or false, got "false"',
    ),
    "rope_scaling as a string": (
        ("llm_config", "rope_scaling", "dynamic"),
        'config.json: llm_config.rope_scaling must be null or an object such as {"type": "dynamic", "factor": 2.0}, '
        'got "dynamic"',
    ),
    "rope_scaling without factor": (
        ("llm_config", "rope_scaling", {"type": "dynamic"}),
        "config.json: llm_config.rope_scaling has no 'factor'",
    ),
    "rope_scaling of an unknown type": (
        ("embedding_config", "rope_scaling", {"type": "yarn", "factor": 2.0}),
        'config.json: embedding_config.rope_scaling.type must be one of "dynamic", "linear", got "yarn"',
    ),
    "string rms_norm_eps": (
        ("llm_config", "rms_norm_eps", "1e-5"),
        'config.json: llm_config.rms_norm_eps must be a positive number, got "1e-5"',
    ),
    "negative rms_norm_eps": (
        ("embedding_config", "rms_norm_eps", -1e-6),
        "config.json: embedding_config.rms_norm_eps must be a positive number, got -1e-06",
    ),
    "string pad_token_id": (
        ("llm_config", "pad_token_id", "2"),
        "config.json: llm_config.pad_token_id must be a token id of the vocabulary of 1024 tokens (a whole number "
        '0 .. 1023), got "2"',
    ),
    "eos_token_id outside the vocabulary": (
        ("llm_config", "eos_token_id", 5000),
        "config.json: llm_config.eos_token_id must be a token id of the vocabulary of 1024 tokens (a whole number "
        "0 .. 1023), got 5000",
    ),
    "bias true without bias tensors": (
        ("llm_config", "bias", True),
        "config.json: llm_config.bias must be false (attention biases are not part of HoVLE's layout), got true",
    ),
    "zero downsample_ratio": (
        (None, "downsample_ratio", 0),
        "config.json: downsample_ratio must be 1/n for a whole number n (0.5 merges 2x2 patches into one token), got 0",
    ),
    "string downsample_ratio": (
        ("embedding_config", "downsample_ratio", "0.5"),
        "config.json: embedding_config.downsample_ratio must be 1/n for a whole number n (0.5 merges 2x2 patches "
        'into one token), got "0.5"',
    ),
    "string max_dynamic_patch": (
        (None, "max_dynamic_patch", "6"),
        'config.json: max_dynamic_patch must be a whole number of at least 1, got "6"',
    ),
    "max_dynamic_patch above the processor's limit": (
        (None, "max_dynamic_patch", 1000000),
        "config.json: max_dynamic_patch: max_tiles (max_patches) is 1000000, above the limit of 127 (the image tokens "
        "of more tiles would not fit the LLM's 32768-token context)",
    ),
    "another chat template": (
        (None, "template", "vicuna_v1"),
        'config.json: template must be "internlm2-chat" (the chat template of the processor), got "vicuna_v1"',
    ),
    "no thumbnail tile": (
        (None, "use_thumbnail", False),
        "config.json: use_thumbnail must be true (the processor adds a thumbnail tile to every multi-tile image, as "
        "the releases do), got false",
    ),
    "string dynamic_image_size": (
        (None, "dynamic_image_size", "true"),
        'config.json: dynamic_image_size must be true or false, got "true"',
    ),
    "force_image_size against the tile size": (
        (None, "force_image_size", 448),
        "config.json: embedding_config.image_size 56 differs from force_image_size 448: they must agree",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_bad_config_fields_are_refused_naming_the_field(source, tmp_path, case, capsys):
    (section, name, value), expected = BAD_FIELDS[case]
    edit_config(source, lambda c: (c[section] if section else c).update({name: value}))
    assert refusal(source, tmp_path / "out") == expected
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert_nothing_written(tmp_path / "out")


def test_unknown_hidden_act_names_the_supported_ones(source, tmp_path):
    edit_config(source, lambda c: c["llm_config"].update(hidden_act="swishy"))
    assert refusal(source, tmp_path / "out") == (
        "config.json: llm_config.hidden_act must be an activation transformers implements without parameters: "
        f'{_activations_message()}, got "swishy"'
    )


def test_string_add_bos_token_in_tokenizer_config(source, tokenizer_dir, tmp_path):
    tokenizer = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tokenizer)
    settings = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**settings, "add_bos_token": "false"}))
    assert refusal(source, tmp_path / "out", tokenizer_source=tokenizer) == (
        'tokenizer_config.json: add_bos_token must be true or false, got "false"'
    )


NOT_FLOAT = {
    "an int64 token table": ("embedding_model.llm_text_embeddings.weight", torch.int64, "int64"),
    "a header saying I32": ("language_model.output.weight", torch.int32, "int32"),
    "a bool norm": ("language_model.model.norm.weight", torch.bool, "bool"),
}


@pytest.mark.parametrize("case", list(NOT_FLOAT))
def test_integer_or_bool_weights_are_refused_naming_the_tensor(source, tmp_path, case, capsys):
    key, dtype, name = NOT_FLOAT[case]
    edit_tensors(source, lambda t: t.update({key: t[key].to(dtype)}))
    expected = (
        "Weights must be floating point (float32, float16, bfloat16, float64, or float8 e4m3/e5m2, which convert "
        f"exactly): 1 tensor(s) are not: {key} ({name})"
    )
    assert refusal(source, tmp_path / "out") == expected
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


def test_float8_weights_convert_exactly(source, tmp_path):
    # float8_e4m3fn gave a traceback (no finiteness check for it); e5m2 goes through the same widening.
    float8 = {key: t.to(torch.float8_e4m3fn) for key, t in load_file(str(source / "model.safetensors")).items()}
    save_file(float8, str(source / "model.safetensors"))
    out = convert(source, tmp_path / "out", dtype="bfloat16", progress=False)
    converted = load_file(str(out / "model.safetensors"))
    # Every float8 value is a bfloat16 value: the output holds the very numbers of the source.
    assert torch.equal(converted["lm_head.weight"], float8["language_model.output.weight"].to(torch.float32).bfloat16())
    assert torch.equal(
        converted["model.language_model.norm.weight"].float(), float8["language_model.model.norm.weight"].float()
    )


# -- 9. unreadable config.json, weight indexes, wrapper prefixes, legacy .bin files ---------------------------------


def test_config_json_that_is_a_folder(source, tmp_path, capsys):
    (source / "config.json").unlink()
    (source / "config.json").mkdir()
    assert refusal(source, tmp_path / "out") == f"config.json in {source} is a folder, not a JSON file"
    assert main(["convert", "--input", str(source), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: config.json in {source} is a folder, not a JSON file\n"


def test_config_json_that_is_not_utf8(source, tmp_path):
    (source / "config.json").write_bytes(b'{"template": "\xff"}')
    assert refusal(source, tmp_path / "out") == (
        f"config.json in {source} is not UTF-8 text (invalid start byte at byte 14)"
    )


def sharded(source, weight_map):
    (source / "model.safetensors").rename(source / "model-00001-of-00001.safetensors")
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_index_whose_weight_map_is_a_list(source, tmp_path):
    sharded(source, ["model-00001-of-00001.safetensors"])
    assert refusal(source, tmp_path / "out") == (
        "model.safetensors.index.json is not a valid weight index: its 'weight_map' must be an object of tensor "
        "name -> shard file, not list"
    )


def test_index_with_an_empty_weight_map(source, tmp_path):
    sharded(source, {})
    assert refusal(source, tmp_path / "out") == (
        "model.safetensors.index.json: its 'weight_map' is empty (it names no tensor)"
    )


def test_index_naming_a_folder(source, tmp_path):
    keys = TensorSource(source).keys()
    sharded(source, dict.fromkeys(keys, "shards"))
    (source / "shards").mkdir()
    assert refusal(source, tmp_path / "out") == (
        "model.safetensors.index.json names shard 'shards', which is a folder, not a weights file"
    )


def test_index_naming_a_path_outside_the_folder(source, tmp_path):
    keys = TensorSource(source).keys()
    sharded(source, dict.fromkeys(keys, "../model-00001-of-00001.safetensors"))
    shutil.copy(source / "model-00001-of-00001.safetensors", tmp_path)  # there, but outside the checkpoint
    assert refusal(source, tmp_path / "out") == (
        f"model.safetensors.index.json names shard '../model-00001-of-00001.safetensors', a path outside {source}"
    )


@pytest.fixture
def reference(source, tmp_path):
    """The source's conversion as it is: what an equivalent source must give, byte for byte."""
    return convert(source, tmp_path / "reference", dtype="float32", progress=False)


def test_module_prefix_is_stripped_with_a_warning_and_gives_identical_output(source, reference, tmp_path, caplog):
    edit_tensors(source, lambda t: t.update({f"module.{k}": t.pop(k) for k in list(t)}))
    with caplog.at_level(logging.WARNING, logger="hovle"):
        out = convert(source, tmp_path / "out", dtype="float32", progress=False)
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert (
        f"The keys of {source} start with 'module.' (a DDP/DeepSpeed wrapper's prefix): reading them without it"
        in caplog.messages
    )


def test_module_prefix_on_some_keys_only_is_refused(source, tmp_path):
    key = "language_model.model.norm.weight"
    edit_tensors(source, lambda t: t.update({f"module.{key}": t.pop(key)}))
    assert refusal(source, tmp_path / "out") == (
        "1 of 47 keys start with 'module.' (a DDP/DeepSpeed wrapper's prefix) and 46 do not: "
        "embedding_model.encoder.0.attention.wo.weight, embedding_model.encoder.0.attention.wqkv.weight, "
        "embedding_model.encoder.0.attention_norm.weight, embedding_model.encoder.0.feed_forward.w1.weight, "
        "embedding_model.encoder.0.feed_forward.w2.weight ... and 41 more"
    )


def test_legacy_non_zip_bin_converts(source, reference, tmp_path):
    tensors = load_file(str(source / "model.safetensors"))
    torch.save(tensors, source / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (source / "model.safetensors").unlink()
    out = convert(source, tmp_path / "out", dtype="float32", progress=False)
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_missing_tokenizer_config_names_the_file(source, tokenizer_dir, tmp_path):
    shutil.copy(tokenizer_dir / "tokenizer.model", source)
    assert refusal(source, tmp_path / "out") == (
        f"{source} has tokenizer.model but no tokenizer_config.json (the release's file that lists the added tokens "
        "<img>, </img>, <IMG_CONTEXT>): copy it from the release next to tokenizer.model, or pass --tokenizer "
        "DIR_OR_HUB_ID (tokenizer_source=) with the release's tokenizer files"
    )


# -- 10. the source's tiling settings reach the converted processor -------------------------------------------------


def test_dynamic_image_size_false_gives_one_tile_per_image(source, tokenizer_dir, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    edit_config(source, lambda c: c.update(dynamic_image_size=False, min_dynamic_patch=1, max_dynamic_patch=4))
    out = convert(source, tmp_path / "out", dtype="float32", progress=False, tokenizer_source=tokenizer_dir)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    wide = Image.new("RGB", (224, 56), "white")  # four tiles wide under dynamic tiling
    assert processor(text="<image>", images=[wide])["pixel_values"].shape[0] == 1
    assert (processor.image_processor.min_patches, processor.image_processor.max_patches) == (1, 4)


@pytest.mark.parametrize("case", ["a folder", "not UTF-8"])
def test_export_names_an_unreadable_config_json(converted_fixture, tmp_path, case):
    source = tmp_path / "hf"
    shutil.copytree(converted_fixture, source)
    (source / "config.json").unlink()
    if case == "a folder":  # was read as a default config: "config.json: ... num_hidden_layers is 32, but ..."
        (source / "config.json").mkdir()
        expected = f"config.json in {source} is a folder, not a JSON file"
    else:
        (source / "config.json").write_bytes(b'{"a": "\xff"}')
        expected = f"config.json in {source} is not UTF-8 text (invalid start byte at byte 7)"
    with pytest.raises(CheckpointError) as error:
        export(source, tmp_path / "out", progress=False)
    assert str(error.value) == expected
    assert_nothing_written(tmp_path / "out")


def test_export_refuses_integer_weights_in_a_converted_folder(converted_fixture, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(converted_fixture, source)
    edit_tensors(source, lambda t: t.update({"lm_head.weight": t["lm_head.weight"].to(torch.int32)}))
    with pytest.raises(CheckpointError) as error:
        export(source, tmp_path / "out", progress=False)
    assert str(error.value) == (
        "Weights must be floating point (float32, float16, bfloat16, float64, or float8 e4m3/e5m2, which convert "
        "exactly): 1 tensor(s) are not: lm_head.weight (int32)"
    )
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_config_that_is_a_folder(source, tokenizer_dir, tmp_path):
    tokenizer = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tokenizer)
    (tokenizer / "tokenizer_config.json").unlink()
    (tokenizer / "tokenizer_config.json").mkdir()
    assert refusal(source, tmp_path / "out", tokenizer_source=tokenizer) == (
        f"tokenizer_config.json in {tokenizer} is a folder, not a JSON file"
    )


def test_private_without_push_to_hub_is_refused(source, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["convert", "--input", str(source), "--output", str(output), "--private"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --private applies to the Hub repo of --push-to-hub, which was not given"]
    assert not output.exists()
