"""Output-folder safety of `hovle convert` / `hovle export` (`hovle.conversion.output_folder`): the lock holds
across PID namespaces and hosts (decided by `flock`, never by a process id), a scratch folder that lost its files is
never swapped in, and names too long, a full disk, Ctrl-C, SIGTERM and a folder of the user's own files each end in
one `error:` line with nothing lost."""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import CHILDREN

from hovle.cli import main
from hovle.conversion import output_folder
from hovle.conversion.checkpoint_io import CheckpointError, StreamingSafetensorsWriter
from hovle.conversion.to_original import export
from hovle.conversion.to_transformers import convert


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".lock"))


def dead_pid() -> int:
    """The id of a process that has exited (as a pid of another namespace or host looks from here)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def one_error_line(err: str) -> str:
    """The one `error:` line of a command's stderr (warnings and progress bars aside), and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def previous(tmp_path, source) -> Path:
    return convert(source, tmp_path / "out", dtype="float32", progress=False)


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not can_unshare(), reason="needs root and a working `unshare --pid`")


# --- the lock ---------------------------------------------------------------------------------------------------


def test_a_held_lock_naming_a_pid_dead_here_still_refuses(tmp_path, source, previous):
    """A run in another container (or host) holds the lock; its pid means nothing here. Its lock and live scratch
    must survive, and the second run must be refused, naming the holder."""
    before = digest(previous)
    foreign = dead_pid()
    lock_path = tmp_path / f".{previous.name}.lock"
    live_scratch = tmp_path / f".{previous.name}.partial-{foreign}-0123abcd"
    live_scratch.mkdir()
    (live_scratch / "model-00001-of-00002.safetensors").write_bytes(b"being written")
    with open(lock_path, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write(json.dumps({"host": "other-host", "boot_id": "x", "pid": foreign}))
        holder.flush()
        with pytest.raises(CheckpointError, match=rf"Another run \(process {foreign} on host other-host\) is writing"):
            convert(source, previous, dtype="float32", overwrite=True, progress=False)
        assert lock_path.exists() and (live_scratch / "model-00001-of-00002.safetensors").exists()
    assert digest(previous) == before


def test_a_lock_left_by_a_killed_pid_1_does_not_block_the_output(tmp_path, source, previous):
    """A run that was PID 1 in a container, SIGKILLed: its lock file names pid 1 (alive here: init) and nobody holds
    it. The next run takes it, removes the dead run's scratch and writes."""
    (tmp_path / f".{previous.name}.lock").write_text(json.dumps({"host": "container", "boot_id": "x", "pid": 1}))
    dead_scratch = tmp_path / f".{previous.name}.partial-1-deadbeef"
    dead_scratch.mkdir()
    (dead_scratch / "model.safetensors").write_bytes(b"half")
    convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert strays(tmp_path) == [] and (previous / "model.safetensors").stat().st_size > 4


def start_paused(command: list[str], state: Path) -> subprocess.Popen:
    state.mkdir(exist_ok=True)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    deadline = time.time() + 120
    while not (state / "paused").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the child never reached its first tensor"
        time.sleep(0.05)
    return process


@pytest.mark.slow
@needs_unshare
def test_a_run_in_another_pid_namespace_cannot_take_over_a_live_run(tmp_path, source):
    """The second run is in its own PID namespace, where the first run's pid does not exist."""
    output, state = tmp_path / "out", tmp_path / "state"
    first = start_paused(
        [sys.executable, str(CHILDREN / "paused_conversion.py"), str(source), str(output), str(state), "--overwrite"],
        state,
    )
    second = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "hovle.cli", "convert"]
        + ["--input", str(source), "--output", str(output), "--dtype", "float32", "--overwrite"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    (state / "go").touch()
    _, stderr = first.communicate(timeout=120)
    assert second.returncode == 2 and "Another run" in one_error_line(second.stderr), second.stderr[-3000:]
    assert first.returncode == 0, stderr[-3000:]
    reference = convert(source, tmp_path / "reference", dtype="float32", progress=False)
    assert {k: v for k, v in digest(output).items() if k.endswith(".safetensors")} == {
        k: v for k, v in digest(reference).items() if k.endswith(".safetensors")
    }
    assert strays(tmp_path) == []


@pytest.mark.slow
@needs_unshare
def test_a_sigkilled_pid_1_of_a_container_does_not_block_the_output(tmp_path, source, previous):
    state = tmp_path / "state"
    command = [sys.executable, str(CHILDREN / "paused_conversion.py"), str(source), str(previous), str(state)]
    wrapper = start_paused(["unshare", "--pid", "--fork", "--mount-proc", *command, "--overwrite"], state)
    pid_1 = int(Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()[0])
    (nspid,) = [line for line in Path(f"/proc/{pid_1}/status").read_text().splitlines() if line.startswith("NSpid:")]
    assert nspid.split()[-1] == "1"  # PID 1 in its namespace
    os.kill(pid_1, signal.SIGKILL)
    wrapper.communicate(timeout=120)
    lock = tmp_path / f".{previous.name}.lock"
    left = json.loads(lock.read_text())  # what the killed run left: its pid, 1, alive here (init)
    assert (left["pid"] if isinstance(left, dict) else left) == 1
    convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert strays(tmp_path) == [] and (previous / "model.safetensors").exists()


# --- the final check of the scratch folder ----------------------------------------------------------------------


def scratch_of(parent: Path, name: str) -> Path:
    (scratch,) = [p for p in parent.glob(f".{name}.partial-*") if "-replaced-" not in p.name]
    return scratch


def test_a_scratch_emptied_during_the_run_is_not_swapped_in(tmp_path, source, previous, monkeypatch):
    """Another process removed the scratch folder mid-run; the run recreates it with only its small files."""
    before = digest(previous)
    real_finish = StreamingSafetensorsWriter.finish

    def finish_then_lose_the_folder(self):
        real_finish(self)
        shutil.rmtree(self.folder)
        self.folder.mkdir()

    monkeypatch.setattr(StreamingSafetensorsWriter, "finish", finish_then_lose_the_folder)
    with pytest.raises(CheckpointError, match="was removed or replaced by another process.*was left as it was"):
        convert(source, previous, dtype="float32", overwrite=True, progress=False)
    assert digest(previous) == before and strays(tmp_path) == []


def test_a_scratch_missing_a_shard_of_its_index_is_not_swapped_in(tmp_path, source, previous, monkeypatch):
    before = digest(previous)
    real_finish = StreamingSafetensorsWriter.finish

    def finish_then_lose_a_shard(self):
        real_finish(self)
        (self.folder / self.names[0]).unlink()

    monkeypatch.setattr(StreamingSafetensorsWriter, "finish", finish_then_lose_a_shard)
    with pytest.raises(CheckpointError, match="lacks model-00001-of-"):
        convert(source, previous, dtype="float32", overwrite=True, max_shard_size="20KB", progress=False)
    assert digest(previous) == before and strays(tmp_path) == []


# --- names too long ---------------------------------------------------------------------------------------------


def test_an_output_name_too_long_for_the_lock_and_scratch_names_converts(tmp_path, source):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    output = tmp_path / ("n" * (name_max - 2))  # fits; ".NAME.lock" and ".NAME.partial-..." would not
    convert(source, output, dtype="float32", progress=False)
    assert (output / "model.safetensors").exists() and strays(tmp_path) == []
    convert(source, output, dtype="float32", overwrite=True, progress=False)  # and replaces it
    assert strays(tmp_path) == []


def test_an_output_name_too_long_for_the_file_system_is_one_error_line(tmp_path, source, capsys):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    output = tmp_path / ("n" * (name_max + 1))
    assert main(["convert", "--input", str(source), "--output", str(output), "--dtype", "float32"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"is {name_max + 1} bytes long" in line and f"at most {name_max}" in line and "shorter name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


# --- a full disk ------------------------------------------------------------------------------------------------


def test_too_little_free_space_is_refused_up_front(tmp_path, source, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 500, 500))
    output = tmp_path / "out"
    assert main(["convert", "--input", str(source), "--output", str(output), "--dtype", "float32"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not enough free space" in line and "500 bytes free" in line
    # The figure is at least the weights to write, as the source stores them in float32.
    needed = line.split("needs about ")[1].split(",")[0]
    weights = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    number, unit = needed.split()
    assert float(number) * {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit] >= weights * 0.95
    assert not output.exists() and strays(tmp_path) == []


def fill_disk_after_one_tensor(monkeypatch) -> None:
    real_add, written = StreamingSafetensorsWriter.add, []

    def add_until_full(self, name, tensor):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        return real_add(self, name, tensor)

    monkeypatch.setattr(StreamingSafetensorsWriter, "add", add_until_full)


@pytest.mark.parametrize("command", ["convert", "export"])
def test_a_disk_full_mid_write_is_one_error_line_and_keeps_the_old_output(
    tmp_path, source, previous, monkeypatch, capsys, command
):
    if command == "convert":
        input_folder, output = source, previous
    else:
        input_folder, output = previous, export(previous, tmp_path / "exported", progress=False)
    before, before_input = digest(output), digest(input_folder)
    fill_disk_after_one_tensor(monkeypatch)
    argv = [command, "--input", str(input_folder), "--output", str(output), "--dtype", "float32", "--overwrite"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"No space left on device while writing {output} (it needs about " in line and "left as it was" in line
    assert digest(output) == before and digest(input_folder) == before_input and strays(tmp_path) == []


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------------------------


def signal_during_writing(monkeypatch, signum: int, surfaces_as: type[BaseException] | None) -> None:
    """The first tensor written receives `signum`; the handler's exception surfaces as `surfaces_as(...)`, as when
    it is raised inside a C extension that converts it (None: swallowed altogether)."""
    real_add = StreamingSafetensorsWriter.add

    def add_signalled(self, name, tensor):
        real_add(self, name, tensor)
        if not getattr(add_signalled, "done", False):
            add_signalled.done = True
            try:
                os.kill(os.getpid(), signum)
                time.sleep(1)  # the handler runs here
            except BaseException:
                if surfaces_as is not None:
                    raise surfaces_as("could not determine the shape of object type 'UntypedStorage'") from None

    monkeypatch.setattr(StreamingSafetensorsWriter, "add", add_signalled)


@pytest.mark.parametrize(
    ("signum", "surfaces_as", "status"),
    [
        (signal.SIGINT, None, 130),
        (signal.SIGINT, KeyboardInterrupt, 130),
        (signal.SIGTERM, TypeError, 143),
        (signal.SIGTERM, None, 143),
    ],
    ids=["ctrl-c", "ctrl-c-as-keyboardinterrupt", "sigterm-seen-as-a-torch-error", "sigterm-swallowed"],
)
def test_a_signal_mid_write_is_one_line_and_keeps_the_old_output(
    tmp_path, source, previous, monkeypatch, capsys, signum, surfaces_as, status
):
    before, before_source = digest(previous), digest(source)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal_during_writing(monkeypatch, signum, surfaces_as)
    argv = ["convert", "--input", str(source), "--output", str(previous), "--dtype", "float32", "--overwrite"]
    assert main(argv) == status
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: interrupted")
    assert digest(previous) == before and digest(source) == before_source and strays(tmp_path) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


@pytest.mark.slow
def test_sigterm_to_the_cli_process_is_one_line_and_status_143(tmp_path, source, previous):
    state = tmp_path / "state"
    state.mkdir()
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from hovle.cli import main
        from hovle.conversion.checkpoint_io import StreamingSafetensorsWriter
        real_add, state = StreamingSafetensorsWriter.add, Path({str(state)!r})
        def add(self, name, tensor):
            real_add(self, name, tensor)
            (state / "paused").touch()
            time.sleep(0.2)
        StreamingSafetensorsWriter.add = add
        sys.exit(main(sys.argv[1:]))
        """
    )
    before = digest(previous)
    process = start_paused(
        [sys.executable, "-c", script, "convert", "--input", str(source), "--output", str(previous)]
        + ["--dtype", "float32", "--overwrite"],
        state,
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and one_error_line(stderr).startswith("error: interrupted (SIGTERM)")
    assert digest(previous) == before and strays(tmp_path) == []


# --- --overwrite ------------------------------------------------------------------------------------------------


def test_a_non_empty_output_without_overwrite_names_the_flag(tmp_path, source, previous, capsys):
    assert main(["convert", "--input", str(source), "--output", str(previous), "--dtype", "float32"]) == 2
    assert "(pass --overwrite to replace it)" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["convert", "export"])
def test_overwrite_refuses_a_folder_of_the_users_own_files(tmp_path, source, previous, capsys, command):
    personal = tmp_path / "personal"
    (personal / "photos").mkdir(parents=True)
    (personal / "notes.txt").write_text("mine")
    (personal / "config.json").write_text('{"model_type": "llama"}')  # a config.json, but not one of ours
    before = digest(personal)
    input_folder = source if command == "convert" else previous
    argv = [command, "--input", str(input_folder), "--output", str(personal), "--dtype", "float32", "--overwrite"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"Output folder {personal} is not empty and is not a folder this package wrote" in line
    assert digest(personal) == before and (personal / "photos").is_dir() and strays(tmp_path) == []


def test_overwrite_replaces_the_packages_own_outputs_and_empty_folders(tmp_path, source, previous):
    exported = export(previous, tmp_path / "exported", progress=False)
    export(previous, exported, overwrite=True, progress=False)  # an earlier export
    empty = tmp_path / "empty"
    empty.mkdir()
    convert(source, empty, dtype="float32", overwrite=True, progress=False)
    convert(source, previous, dtype="float32", overwrite=True, progress=False)  # an earlier conversion
    assert all((folder / "config.json").exists() for folder in (exported, empty, previous))
    assert strays(tmp_path) == []


def test_check_replaceable_output_is_the_rule_other_commands_share(tmp_path):
    folder = tmp_path / "folder"
    output_folder.check_replaceable_output(folder, lambda path: False)  # absent
    folder.mkdir()
    output_folder.check_replaceable_output(folder, lambda path: False)  # empty
    (folder / "x.txt").write_text("x")
    output_folder.check_replaceable_output(folder, lambda path: (path / "x.txt").exists())
    with pytest.raises(CheckpointError, match="is not a folder this package wrote"):
        output_folder.check_replaceable_output(folder, lambda path: False)
