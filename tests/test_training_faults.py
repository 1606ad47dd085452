"""`hovle train` faults said in one line, with nothing lost: an unreadable image named by its line before the model
loads, over-long samples (`--max-length`), contradictory options, LoRA without peft, a diverged run (NaN/Inf
weights are never saved), a full disk (checked before training; ENOSPC while writing), the accelerate configs'
process count, the `Wrote` line of `torchrun` runs and `hovle train --help`."""

# ruff: noqa: F811 (the fixtures of test_training_refusals, imported by name, are redefined as test arguments)
import errno
import importlib.util
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from helpers import free_port, write_chat_data
from test_training_refusals import (
    GOOD_CHAT,
    REPLY,
    data_dir,  # noqa: F401 (fixtures)
    fake_model,  # noqa: F401
    no_model_load,  # noqa: F401
    refused,
    snapshot,
    train_argv,
    write_lines,
)
from transformers import AutoProcessor

import hovle.conversion.output_folder as output_folder_module
import hovle.training as training
import hovle.training.train as train_module
from hovle.cli import build_parser, main
from hovle.conversion.output_folder import human_size


def test_an_unreadable_image_is_named_by_its_line_before_the_model_loads(fake_model, data_dir, no_model_load, capsys):
    (data_dir / "notes.jpg").write_text("not an image, only text named .jpg\n")
    bad = dict(GOOD_CHAT, images=["notes.jpg"])
    data = write_lines(data_dir, [GOOD_CHAT, bad])
    line = refused(train_argv(fake_model, data, data_dir.parent / "out"), capsys)
    assert line == (
        f"error: {data}:2: {data_dir / 'notes.jpg'} is not an image PIL can read (empty, corrupt or another format)"
    )
    assert not (data_dir.parent / "out").exists()


def test_an_unreadable_stage1_image_is_named_by_its_line(fake_model, data_dir, tmp_path, no_model_load, capsys):
    (data_dir / "cut.png").write_bytes((data_dir / "a.png").read_bytes()[:60])  # a truncated PNG
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    data = write_lines(data_dir, [{"image": "a.png"}, {"image": "cut.png"}])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--teacher", teacher, stage=1), capsys)
    assert line.startswith(f"error: {data}:2: ") and str(data_dir / "cut.png") in line


def test_teacher_outside_stage1_is_a_contradiction(fake_model, data_dir, tmp_path, no_model_load, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    data = write_lines(data_dir, [GOOD_CHAT])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--teacher", teacher, stage=3), capsys)
    assert line == (
        "error: --teacher is for stage 1 (distillation) only; stage 3 learns from the chat data: leave out --teacher "
        "or use --stage 1"
    )


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0"])
def test_a_learning_rate_that_cannot_train_is_refused(fake_model, data_dir, tmp_path, no_model_load, capsys, lr):
    data = write_lines(data_dir, [GOOD_CHAT])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--lr", lr), capsys)
    assert line == f"error: --lr must be a finite number above 0, got {float(lr)}"


def test_lora_without_peft_names_the_extra(fake_model, data_dir, tmp_path, no_model_load, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    data = write_lines(data_dir, [GOOD_CHAT])
    line = refused(train_argv(fake_model, data, tmp_path / "out", "--lora", "both"), capsys)
    assert line == "error: --lora needs peft, which is not installed: pip install 'hovle[train]'"


# -- over-long samples --------------------------------------------------------------------------------------------------
def test_a_sample_longer_than_max_length_is_refused_with_its_line_and_length(tiny_hub_folder, data_dir, capsys):
    processor = AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)
    long_chat = {"messages": [{"role": "user", "content": "word " * 300}, REPLY], "images": ["a.png", "b.png"]}
    data = write_lines(data_dir, [GOOD_CHAT, long_chat])
    text = processor.apply_chat_template(long_chat["messages"], tokenize=False)
    images = [str(data_dir / "a.png"), str(data_dir / "b.png")]
    length = len(processor(text=text, images=images, max_tiles=6)["input_ids"][0])
    output = data_dir.parent / "out"
    line = refused(train_argv(tiny_hub_folder, data, output, "--max-length", length - 1), capsys, after_loading=True)
    assert line == (
        f"error: {data}:2: the sample is {length} tokens long, more than --max-length {length - 1}; shorten or split "
        "it, or raise the limit"
    )
    assert not output.exists()


def test_by_default_the_limit_is_the_model_context(tiny_hub_folder, data_dir, capsys):
    context = train_module.load_model_and_processor(tiny_hub_folder)[0].config.text_config.max_position_embeddings
    data = write_lines(data_dir, [{"messages": [{"role": "user", "content": "word " * context}, REPLY]}])
    line = refused(train_argv(tiny_hub_folder, data, data_dir.parent / "out"), capsys, after_loading=True)
    assert line.startswith(f"error: {data}:1: the sample is ")
    assert line.endswith(
        f"tokens long, more than the model's context (max_position_embeddings) {context}; shorten "
        "or split it, or raise the limit"
    )


def test_a_sample_that_fits_exactly_trains(tiny_hub_folder, tmp_path, capsys):
    """The exact length passes (the bound used to skip tiling must not refuse what fits)."""
    data = write_chat_data(tmp_path / "data", count=3)
    processor = AutoProcessor.from_pretrained(tiny_hub_folder, trust_remote_code=True)
    dataset = train_module.JsonLinesDataset(data)
    longest = 0
    for row in dataset:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        longest = max(longest, len(processor(text=text, images=row["images"] or None)["input_ids"][0]))
    argv = train_argv(tiny_hub_folder, data, tmp_path / "out", "--max-length", longest, "--max-steps", "1", "--cpu")
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err


# -- a diverged run -----------------------------------------------------------------------------------------------------
def test_nonfinite_weights_are_never_saved_and_the_output_is_kept(tiny_hub_folder, tmp_path, capsys):
    data = write_chat_data(tmp_path / "data", count=2)
    output = tmp_path / "sft"
    output.mkdir()
    (output / "config.json").write_text('{"model_type": "hovle"}')  # an earlier run, kept when this one fails
    before = snapshot(output)
    # A finite but absurd learning rate: SGD steps overflow the weights to inf, then the loss is nan.
    argv = train_argv(tiny_hub_folder, data, output, "--overwrite", "--lr", "1e38", "--optim", "sgd", "--cpu")
    line = refused([*argv, "--max-steps", "2"], capsys, after_loading=True)
    assert line.startswith("error: training diverged: after 2 step(s) the weights hold NaN or Inf (model.")
    assert line.endswith(
        f"); nothing was written and --output {output} was left as it was; lower --lr or check the data"
    )
    assert snapshot(output) == before
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".sft")] == []


# -- a full disk --------------------------------------------------------------------------------------------------------
def test_too_little_free_space_is_refused_before_training(tiny_hub_folder, tmp_path, monkeypatch, capsys):
    data = write_chat_data(tmp_path / "data", count=2)
    model = train_module.load_model_and_processor(tiny_hub_folder)[0]
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) + 64 * 2**20
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(output_folder_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(train_module.Trainer, "train", lambda *a, **k: pytest.fail("trained on a full disk"))
    output = tmp_path / "sft"
    line = refused(train_argv(tiny_hub_folder, data, output, "--cpu"), capsys, after_loading=True)
    assert line == (
        f"error: --output {output}: the trained model: not enough free space: it needs about "
        f"{human_size(needed)}, {tmp_path} has 1.0 KB free; free some space or choose another output folder"
    )
    assert not output.exists()


def test_no_space_left_while_writing_is_one_line_and_writes_nothing(tiny_hub_folder, tmp_path, monkeypatch, capsys):
    data = write_chat_data(tmp_path / "data", count=2)

    def disk_full(model_source, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))

    monkeypatch.setattr(train_module, "keep_folder_companions", disk_full)
    output = tmp_path / "sft"
    line = refused(train_argv(tiny_hub_folder, data, output, "--cpu", "--max-steps", "1"), capsys, after_loading=True)
    model = train_module.load_model_and_processor(tiny_hub_folder)[0]
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) + 64 * 2**20
    assert line == (
        f"error: No space left on device while writing {output} (it needs about {human_size(needed)}); {output} was "
        f"left as it was: free some space in {tmp_path} or choose another output folder"
    )
    assert not output.exists() and list(tmp_path.glob(".sft*")) == []


# -- launching ----------------------------------------------------------------------------------------------------------
def test_accelerate_configs_take_the_machine_device_count(monkeypatch):
    for name in training.ACCELERATE_CONFIGS:
        shipped = training.accelerate_config.__globals__["Path"](training.__file__).parent / "configs" / f"{name}.yaml"
        assert "\nnum_processes:" not in shipped.read_text(), name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert training.accelerate_config("fsdp").read_text().endswith("\nnum_processes: 3\n")
    assert training.accelerate_config("ddp", num_processes=2).read_text().endswith("\nnum_processes: 2\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(training.accelerate_config("fsdp"))).num_processes == 1


@pytest.mark.slow
def test_torchrun_prints_wrote_once(tiny_hub_folder, tmp_path):
    data = write_chat_data(tmp_path / "data", count=4)
    output = tmp_path / "sft"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(free_port()), "-m", "hovle.training.train", "--model", str(tiny_hub_folder)]
    command += ["--data", str(data), "--stage", "3", "--output", str(output), "--max-steps", "1", "--cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [line for line in result.stdout.splitlines() if line.startswith("Wrote")] == [f"Wrote {output}"]
    assert (output / "model.safetensors").is_file()
    shutil.rmtree(output)


def test_train_help_has_a_description_and_the_defaults():
    commands = build_parser()._subparsers._group_actions[0].choices
    text = commands["train"].format_help()
    assert "Fine-tune a converted HoVLE model" in text
    defaults = {"--max-steps": 100, "--batch-size": 1, "--grad-accum": 1, "--lr": 2e-05, "--max-tiles": 6, "--seed": 0}
    for flag, value in defaults.items():
        assert commands["train"].get_default(flag.lstrip("-").replace("-", "_")) == value, flag
    help_of = {a.option_strings[0]: a.help % {"default": a.default} for a in commands["train"]._actions if a.help}
    for flag, value in defaults.items():
        assert help_of[flag].endswith(f"(default: {value})"), flag
