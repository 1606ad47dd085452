"""`hovle train` refuses bad inputs up front, in one line, before loading a model and without writing anything: the
output folder (never the model folder; a non-empty one only with --overwrite), every line of the data file, stage 1
without a teacher; a batch with nothing supervised raises instead of giving a `nan` loss; --bf16 and no GPU train on
the CPU."""

import json

import pytest
import torch
from helpers import samples, write_chat_data
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor

import hovle.training.train as train_module
from hovle.cli import main
from hovle.training.checks import check_data
from hovle.training.collator import HoVLEChatCollator
from hovle.training.distillation import DistillationCollator
from hovle.training.train import JsonLinesDataset

USER = {"role": "user", "content": "What is it?"}
REPLY = {"role": "assistant", "content": "A test."}
IMAGE_ITEM = {"type": "image"}


@pytest.fixture(scope="module")
def processor(tiny_hub_folder):
    return AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)


@pytest.fixture
def no_model_load(monkeypatch):
    """Every refusal must come before the model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(train_module, "load_model_and_processor", refuse)


@pytest.fixture
def fake_model(tmp_path):
    """A folder standing for a converted model (the refusals come before anything reads it)."""
    folder = tmp_path / "HoVLE-hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "hovle"}')
    (folder / "model.safetensors").write_bytes(b"base weights")
    return folder


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a.png")
    Image.new("RGB", (32, 32), "blue").save(folder / "b.png")
    return folder


def write_lines(folder, rows, name="train.jsonl"):
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    path = folder / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv, capsys, after_loading=False) -> str:
    """Run `hovle ...`; it must exit with status 2 and print exactly one `error:` line, no traceback (and nothing
    else, unless `after_loading`: then the loading's status lines come before it)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert len(lines) == 1 or after_loading, err
    return lines[-1]


def train_argv(model, data, output, *extra, stage=3):
    return ["train", "--model", model, "--data", data, "--stage", stage, "--output", output, *extra]


GOOD_CHAT = {"messages": [{"role": "user", "content": [IMAGE_ITEM, {"type": "text", "text": "Hi?"}]}, REPLY]}
GOOD_CHAT["images"] = ["a.png"]


# -- 1. the output folder --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_output_that_is_the_model_folder_is_refused(fake_model, data_dir, no_model_load, capsys, overwrite):
    data = write_lines(data_dir, [GOOD_CHAT])
    before = snapshot(fake_model)
    line = refused(train_argv(fake_model, data, fake_model, *overwrite), capsys)
    assert line == (
        f"error: --output {fake_model} is the model folder {fake_model}: the trained model would replace its "
        "files; choose an output folder outside it"
    )
    assert snapshot(fake_model) == before


def test_output_inside_the_model_folder_is_refused(fake_model, data_dir, no_model_load, capsys):
    data = write_lines(data_dir, [GOOD_CHAT])
    output = fake_model / "sft"
    line = refused(train_argv(fake_model, data, output), capsys)
    assert line == (
        f"error: --output {output} lies inside the model folder {fake_model}: the trained model would replace its "
        "files; choose an output folder outside it"
    )
    assert not output.exists()


def test_output_containing_the_model_folder_is_refused(fake_model, data_dir, no_model_load, capsys):
    data = write_lines(data_dir, [GOOD_CHAT])
    output = fake_model.parent
    before = snapshot(output)
    line = refused(train_argv(fake_model, data, output, "--overwrite"), capsys)
    assert line == (
        f"error: --output {output} contains the model folder {fake_model}: the trained model would replace its "
        "files; choose an output folder outside it"
    )
    assert snapshot(output) == before


def test_output_containing_the_data_file_is_refused(fake_model, data_dir, no_model_load, capsys):
    data = write_lines(data_dir, [GOOD_CHAT])
    line = refused(train_argv(fake_model, data, data_dir, "--overwrite"), capsys)
    assert line == (
        f"error: --output {data_dir} contains the data file {data}, which the trained model would replace; "
        "choose another output folder"
    )


def test_non_empty_output_needs_overwrite(fake_model, data_dir, no_model_load, tmp_path, capsys):
    data = write_lines(data_dir, [GOOD_CHAT])
    output = tmp_path / "earlier-run"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"an earlier run")
    line = refused(train_argv(fake_model, data, output), capsys)
    assert line == (
        f"error: --output {output} exists and is not empty: pass --overwrite to replace its contents when "
        "training finishes, or choose another folder"
    )
    assert snapshot(output) == {output.relative_to(output) / "model.safetensors": b"an earlier run"}


@pytest.mark.parametrize("config", [None, '{"model_type": "llama"}'], ids=["no-config", "not-hovle"])
def test_overwrite_never_replaces_a_folder_this_package_did_not_write(
    fake_model, data_dir, no_model_load, tmp_path, capsys, config
):
    """`--overwrite` replaces an earlier run's output, never a folder of other files (refused before loading)."""
    data = write_lines(data_dir, [GOOD_CHAT])
    output = tmp_path / "thesis"
    output.mkdir()
    (output / "chapter1.tex").write_text("months of work")
    if config is not None:
        (output / "config.json").write_text(config)
    before = snapshot(output)
    line = refused(train_argv(fake_model, data, output, "--overwrite"), capsys)
    assert line == (
        f"error: Output folder {output} is not empty and is not a folder this package wrote (no config.json of "
        "ours): --overwrite replaces only such folders, to keep other files safe; empty it or choose another output "
        "folder"
    )
    assert snapshot(output) == before


def test_output_that_is_a_file_is_refused(fake_model, data_dir, no_model_load, tmp_path, capsys):
    data = write_lines(data_dir, [GOOD_CHAT])
    output = tmp_path / "out.txt"
    output.write_text("keep")
    line = refused(train_argv(fake_model, data, output), capsys)
    assert line == f"error: --output {output} exists and is not a folder"
    assert output.read_text() == "keep"


def test_overwrite_replaces_a_non_empty_output(tiny_hub_folder, tmp_path, capsys):
    data = write_chat_data(tmp_path / "data", count=2)
    output = tmp_path / "earlier-run"
    output.mkdir()
    (output / "config.json").write_text('{"model_type": "hovle"}')  # an earlier run's output: ours to replace
    (output / "adapter_config.json").write_text("{}")  # would make the folder load as a PEFT adapter
    code = main([str(a) for a in train_argv(tiny_hub_folder, data, output, "--overwrite", "--max-steps", "1", "--cpu")])
    assert code == 0, capsys.readouterr().err
    assert not (output / "adapter_config.json").exists()
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()


# -- 2. the data file ------------------------------------------------------------------------------------------------
def test_missing_data_file(fake_model, tmp_path, no_model_load, capsys):
    data = tmp_path / "nowhere.jsonl"
    line = refused(train_argv(fake_model, data, tmp_path / "out"), capsys)
    assert line == f"error: --data {data}: no such file"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["", "\n  \n\n"], ids=["empty", "blank-lines"])
def test_empty_data_file(fake_model, data_dir, tmp_path, no_model_load, capsys, text):
    data = data_dir / "train.jsonl"
    data.write_text(text)
    line = refused(train_argv(fake_model, data, tmp_path / "out"), capsys)
    assert line == f"error: --data {data} holds no samples (one JSON object per line is expected)"


CHAT_CASES = {
    "not-json": ('{"messages": [}', "not valid JSON: Expecting value (column 15)"),
    "not-an-object": ("[1, 2]", "expected a JSON object, got list"),
    "no-messages": (
        {"images": ["a.png"]},
        'stages 2 and 3 need "messages", a non-empty list of {"role", "content"} messages',
    ),
    "stage-1-line": (
        {"image": "a.png"},
        'stages 2 and 3 need "messages", a non-empty list of {"role", "content"} messages '
        "(this looks like stage-1 data: use --stage 1)",
    ),
    "message-without-content": (
        {"messages": [{"role": "user"}, REPLY]},
        'message 0 must be an object with "role" and "content"',
    ),
    "bad-content": (
        {"messages": [{"role": "user", "content": [{"kind": "text"}]}, REPLY]},
        'message 0 content must be a string or a list of {"type": "text", "text": ...} and {"type": "image"} items',
    ),
    "bad-role": (
        {"messages": [USER, {"role": "bot", "content": "hi"}]},
        'message 1 has role "bot"; use "user", "assistant" or "system"',
    ),
    "no-assistant": (
        {"messages": [{"role": "system", "content": "Be brief."}, USER]},
        'no "assistant" message, so nothing would be supervised (training learns the assistant replies)',
    ),
    "missing-image": (
        {"messages": [USER, REPLY], "images": ["missing.png"]},
        "image missing.png not found ({dir}/missing.png; paths are relative to the data file)",
    ),
    "more-placeholders-than-images": (
        {
            "messages": [{"role": "user", "content": [IMAGE_ITEM, IMAGE_ITEM, {"type": "text", "text": "?"}]}, REPLY],
            "images": ["a.png"],
        },
        '2 image placeholder(s) in the messages but 1 image(s) in "images"',
    ),
    "typed-placeholder-without-image": (
        {"messages": [{"role": "user", "content": "<image>\nWhat is it?"}, REPLY]},
        '1 image placeholder(s) in the messages but 0 image(s) in "images"',
    ),
    "more-images-than-placeholders": (
        {
            "messages": [{"role": "user", "content": [IMAGE_ITEM, {"type": "text", "text": "?"}]}, REPLY],
            "images": ["a.png", "b.png"],
        },
        '1 image placeholder(s) in the messages but 2 image(s) in "images"',
    ),
}


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_bad_chat_line_names_file_and_line(fake_model, data_dir, tmp_path, no_model_load, capsys, case):
    row, message = CHAT_CASES[case]
    data = write_lines(data_dir, [GOOD_CHAT, "", row])  # the bad row is on line 3 (a blank line before it)
    line = refused(train_argv(fake_model, data, tmp_path / "out"), capsys)
    assert line == f"error: {data}:3: " + message.replace("{dir}", str(data_dir))
    assert not (tmp_path / "out").exists()


UNPAIRED_CASES = {
    "chat-line": (
        {"messages": [USER, REPLY]},
        'stage 1 needs an "image" (a path) or "text_ids" (a list of token ids) '
        "(this looks like chat data: use --stage 2 or 3)",
    ),
    "both": (
        {"image": "a.png", "text_ids": [5, 6]},
        'stage 1 needs either "image" (a path) or "text_ids" (a list of token ids), not both',
    ),
    "empty-text-ids": ({"text_ids": []}, '"text_ids" must be a non-empty list of token ids (whole numbers >= 0)'),
    "missing-image": (
        {"image": "gone.png"},
        "image gone.png not found ({dir}/gone.png; paths are relative to the data file)",
    ),
}


@pytest.mark.parametrize("case", list(UNPAIRED_CASES))
def test_bad_stage1_line_names_file_and_line(fake_model, data_dir, tmp_path, no_model_load, capsys, case):
    row, message = UNPAIRED_CASES[case]
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    data = write_lines(data_dir, [{"image": "a.png"}, {"text_ids": [5, 6, 7]}, row])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--teacher", teacher, stage=1), capsys)
    assert line == f"error: {data}:3: " + message.replace("{dir}", str(data_dir))


def test_checked_lines_match_the_collator(processor, data_dir):
    """The placeholder rule of `check_data` is the collator's: what it refuses the collator fails on, what it
    accepts (images without any placeholder go in front of the text) the collator takes."""
    accepted = {"messages": [USER, REPLY], "images": ["a.png"]}
    data = write_lines(data_dir, [GOOD_CHAT, accepted])
    assert check_data(data, 3) == {"samples": 2, "max_text_id": -1}
    collator = HoVLEChatCollator(processor)
    batch = collator(list(JsonLinesDataset(data)))
    assert batch["pixel_values"].shape[0] == 2
    for case in ("more-placeholders-than-images", "more-images-than-placeholders", "typed-placeholder-without-image"):
        row = dict(CHAT_CASES[case][0])
        row["images"] = [str(data_dir / name) for name in row.get("images", [])]
        with pytest.raises(ValueError, match="placeholders but"):
            collator([row])


def test_data_lines_split_at_newlines_only(data_dir):
    """U+2028 inside a JSON string is not a line break (`str.splitlines` would cut the line there)."""
    row = {"messages": [USER, {"role": "assistant", "content": "one\u2028two"}]}
    data = data_dir / "train.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    assert check_data(data, 3)["samples"] == 1
    assert JsonLinesDataset(data)[0]["messages"][1]["content"] == "one\u2028two"


# -- 3. nothing supervised: an error naming the sample, not a nan loss -------------------------------------------------
def test_collator_refuses_a_sample_without_assistant_reply(processor, tmp_path):
    no_reply = {"messages": [USER], "images": []}
    with pytest.raises(ValueError) as caught:
        HoVLEChatCollator(processor)([samples(1)[0], no_reply])
    assert str(caught.value) == (
        "HoVLEChatCollator: nothing to supervise in sample 1 of the batch: no assistant reply, so every label would "
        "be -100 and the loss nan; give each chat at least one assistant message"
    )
    # From a data file, the sample is named by file and line.
    data = write_lines(tmp_path, [{"messages": [USER, REPLY]}, {"messages": [USER]}])
    dataset = JsonLinesDataset(data)
    with pytest.raises(ValueError, match=r"^HoVLEChatCollator: nothing to supervise in train\.jsonl:2: no assistant"):
        HoVLEChatCollator(processor)([dataset[0], dataset[1]])


def test_distillation_collator_refuses_an_empty_text_sample(processor):
    with pytest.raises(ValueError) as caught:
        DistillationCollator(processor)([{"text_ids": [4, 5]}, {"text_ids": []}])
    assert (
        str(caught.value) == 'DistillationCollator: sample 1 of the batch has neither "image" nor non-empty "text_ids"'
    )


# -- 4. --bf16 and the CPU ---------------------------------------------------------------------------------------------
def hide_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


def test_bf16_without_gpu_trains_on_the_cpu(tiny_hub_folder, tmp_path, monkeypatch, capsys):
    """The README's first example (`--bf16`, no `--cpu`) on a machine without a GPU: two steps on the CPU."""
    hide_gpus(monkeypatch)
    data = write_chat_data(tmp_path / "data", count=4)
    output = tmp_path / "sft"
    code = main([str(a) for a in train_argv(tiny_hub_folder, data, output, "--bf16", "--max-steps", "2")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "[hovle] No GPU available: training on the CPU" in err
    with safe_open(str(output / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == torch.bfloat16


def test_bf16_on_a_gpu_without_bf16_is_refused(fake_model, data_dir, tmp_path, no_model_load, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "accelerator_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    data = write_lines(data_dir, [GOOD_CHAT])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--bf16"), capsys)
    assert line == "error: --bf16: this GPU (Tesla T4) has no bfloat16; leave out --bf16 (float32) or pass --cpu"


# -- 5. stage 1 and its teacher ----------------------------------------------------------------------------------------
def test_stage1_without_teacher(fake_model, data_dir, tmp_path, no_model_load, capsys):
    data = write_lines(data_dir, [{"image": "a.png"}])
    line = refused(train_argv(fake_model, data, tmp_path / "out", stage=1), capsys)
    assert line == (
        "error: stage 1 (distillation) needs --teacher: a model folder or Hub id with get_image_features whose "
        "features have the LLM's width (e.g. a native InternVL checkpoint)"
    )


def test_stage1_missing_teacher_folder(fake_model, data_dir, tmp_path, no_model_load, capsys):
    data = write_lines(data_dir, [{"image": "a.png"}])
    teacher = tmp_path / "no-teacher"
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--teacher", teacher, stage=1), capsys)
    assert line == f"error: --teacher {teacher}: no such folder (and not a Hub id of the form owner/name)"


def test_stage1_token_ids_past_the_vocabulary(tiny_hub_folder, data_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    data = write_lines(data_dir, [{"text_ids": [3, 5000]}])
    argv = train_argv(tiny_hub_folder, data, tmp_path / "out", "--teacher", teacher, stage=1)
    line = refused(argv, capsys, after_loading=True)
    assert line == f"error: {data}: a text_ids entry is 5000, past the model's vocabulary of 1024"


def test_module_entry_point_prints_one_line(fake_model, data_dir, tmp_path, no_model_load, capsys):
    """`python -m hovle.training.train` (torchrun, accelerate launch) answers as `hovle train` does."""
    data = write_lines(data_dir, [{"image": "a.png"}])
    assert train_module.main(["--model", str(fake_model), "--data", str(data), "--stage", "1", "--output", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stage 1 (distillation) needs --teacher") and err.count("\n") == 1, err
    assert "Traceback" not in err
