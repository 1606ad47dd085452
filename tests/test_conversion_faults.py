"""Fault injection for conversion: whatever goes wrong, the input stays bit-identical, no scratch folder or lock is
left after the run or after the next one, and a previous output is either intact or replaced whole."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CHILDREN

from hovle.conversion import output_folder
from hovle.conversion.checkpoint_io import CheckpointError, StreamingSafetensorsWriter
from hovle.conversion.to_transformers import convert


def digest(folder: Path) -> dict[str, str]:
    """Every file below `folder` with the sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".lock"))


@pytest.fixture
def previous(tmp_path, source) -> Path:
    """An existing converted output, to be replaced."""
    return convert(source, tmp_path / "out", dtype="bfloat16", progress=False)


def start_paused(source: Path, output: Path, state: Path, *flags: str) -> subprocess.Popen:
    state.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, str(CHILDREN / "paused_conversion.py"), str(source), str(output), str(state), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 120
    while not (state / "paused").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the child never reached its first tensor"
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("where", ["the input", "the input's parent", "inside the input"])
def test_output_overlapping_the_input_is_refused(tmp_path, source, where):
    output = {"the input": source, "the input's parent": tmp_path, "inside the input": source / "converted"}[where]
    before = digest(tmp_path)
    with pytest.raises(CheckpointError, match="is, contains or lies inside the input"):
        convert(source, output, dtype="float32", overwrite=True, progress=False)
    assert digest(tmp_path) == before


def test_symlink_output_is_refused(tmp_path, source, previous):
    link = tmp_path / "link"
    link.symlink_to(previous)
    before = digest(previous)
    with pytest.raises(CheckpointError, match="symbolic link"):
        convert(source, link, dtype="float32", overwrite=True, progress=False)
    assert link.is_symlink() and digest(previous) == before and strays(tmp_path) == []


def test_a_file_as_output_is_refused(tmp_path, source):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(CheckpointError, match="not a folder"):
        convert(source, target, dtype="float32", overwrite=True, progress=False)
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_parent_is_refused(tmp_path, source):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="permission denied"):
            convert(source, parent / "out", dtype="float32", progress=False)
    finally:
        parent.chmod(0o755)


def test_failed_replace_keeps_the_previous_output(tmp_path, source, previous, monkeypatch):
    """The new folder cannot be moved into place (a read-only or busy destination): the old one is put back."""
    before, before_source = digest(previous), digest(source)
    real_rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == previous and ".partial-" in self.name and "-replaced-" not in self.name:
            raise PermissionError(13, "Permission denied", str(target))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(CheckpointError, match="nothing was replaced"):
        convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert digest(previous) == before and digest(source) == before_source and strays(tmp_path) == []


def test_full_disk_mid_write_keeps_the_previous_output(tmp_path, source, previous, monkeypatch):
    before, before_source = digest(previous), digest(source)
    real_add, written = StreamingSafetensorsWriter.add, []

    def add_until_full(self, name, tensor):
        if written:
            raise OSError(28, "No space left on device")
        written.append(name)
        return real_add(self, name, tensor)

    monkeypatch.setattr(StreamingSafetensorsWriter, "add", add_until_full)
    with pytest.raises(OSError, match="No space left"):
        convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert digest(previous) == before and digest(source) == before_source and strays(tmp_path) == []


def test_overwrite_replaces_the_previous_output_whole(tmp_path, source, previous):
    (previous / "stale-extra.txt").write_text("from an old run")
    convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert not (previous / "stale-extra.txt").exists()  # replaced whole, not merged
    assert (previous / "model.safetensors").exists() and strays(tmp_path) == []


@pytest.mark.slow
def test_folder_created_at_the_output_mid_run_is_left_alone(tmp_path, source):
    output, state = tmp_path / "out", tmp_path / "state"
    before_source = digest(source)
    process = start_paused(source, output, state)
    output.mkdir()
    (output / "users-file.txt").write_text("mine")
    (state / "go").touch()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and "appeared while this run was writing" in stderr
    assert digest(output) == {"users-file.txt": hashlib.sha256(b"mine").hexdigest()}
    assert digest(source) == before_source and strays(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_terminated_run_cleans_up_and_a_rerun_succeeds(tmp_path, source, previous, how):
    before, before_source = digest(previous), digest(source)
    process = start_paused(source, previous, tmp_path / "state", "--overwrite")
    process.send_signal(how)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert digest(previous) == before and digest(source) == before_source and strays(tmp_path) == []
    convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert strays(tmp_path) == [] and digest(previous) != before


@pytest.mark.slow
def test_killed_run_leaves_scratch_that_the_next_run_removes(tmp_path, source, previous):
    before, before_source = digest(previous), digest(source)
    process = start_paused(source, previous, tmp_path / "state", "--overwrite")
    process.kill()  # SIGKILL: nothing can clean up
    process.communicate(timeout=120)
    assert strays(tmp_path), "a killed run cannot remove its scratch folder or lock"
    assert digest(previous) == before and digest(source) == before_source
    convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert strays(tmp_path) == [] and (previous / "model.safetensors").exists()


def test_killed_between_the_two_renames_of_a_swap_the_old_output_comes_back(tmp_path, source, previous):
    """A run killed after moving the old output aside and before moving the new one in: the next run restores it."""
    before = digest(previous)
    aside = tmp_path / f".{previous.name}.partial-999999-replaced-deadbeef"
    previous.rename(aside)
    output_folder._remove_stale(tmp_path, previous.name, previous.name)  # what every run does, locked
    assert digest(previous) == before and strays(tmp_path) == []


@pytest.mark.slow
def test_two_concurrent_runs_cannot_both_write_one_output(tmp_path, source):
    output, state = tmp_path / "out", tmp_path / "state"
    first = start_paused(source, output, state)
    with pytest.raises(CheckpointError, match="Another run"):
        convert(source, output, dtype="float32", overwrite=True, progress=False)
    (state / "go").touch()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert (output / "model.safetensors").exists() and strays(tmp_path) == []
