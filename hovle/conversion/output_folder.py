"""Writing a conversion's output folder without ever destroying what the user did not ask to replace.

`atomic_output_folder(destination, overwrite, inputs)` yields a scratch folder beside `destination` and swaps it in
only when the block completes:
* refused up front: an output that is, contains or lies inside an input; an output that is a symbolic link or a
  file; a non-empty output without `overwrite`; an output another run is writing (a lock file beside it);
* the scratch folder is removed on any error, on SIGINT and on SIGTERM (a handler raises in the main thread); a
  scratch folder or lock left by a killed run (SIGKILL, power loss) is removed by the next run to that output;
* the swap: the old output is renamed aside, the scratch renamed into place, then the old one deleted; if the second
  rename fails the old output is put back. A folder that appeared at the output during the run, without
  `overwrite`, is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .checkpoint_io import CheckpointError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(path: Path) -> int | None:
    """The process id in a scratch name `.NAME.partial-PID-HEX` or in a lock file."""
    try:
        text = path.read_text().strip() if path.is_file() else path.name.rsplit(".partial-", 1)[1].split("-")[0]
        return int(text)
    except (OSError, ValueError, IndexError):
        return None


def check_not_overlapping(destination: Path, inputs: Sequence[Path]) -> None:
    target = destination.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise CheckpointError(
                f"The output {destination} is, contains or lies inside the input {source}: choose another output folder"
            )


def _remove_stale(parent: Path, name: str) -> None:
    """Scratch folders and a lock of this output left by runs that no longer exist."""
    for path in parent.glob(f".{name}.partial-*"):
        pid = _owner_pid(path)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if "-replaced-" in path.name and not (parent / name).exists():
            path.rename(parent / name)  # killed between the two renames of a swap: the old output comes back
        else:
            shutil.rmtree(path, ignore_errors=True)
    lock = parent / f".{name}.lock"
    pid = _owner_pid(lock) if lock.exists() else None
    if lock.exists() and (pid is None or not _pid_alive(pid)):
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(parent: Path, name: str) -> Iterator[None]:
    lock = parent / f".{name}.lock"
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise CheckpointError(
            f"Another run (process {_owner_pid(lock)}) is writing {parent / name}; wait for it or choose another "
            "output folder"
        ) from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception in the main thread, so that cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_nonempty_folder(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextlib.contextmanager
def atomic_output_folder(
    destination: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a scratch folder beside `destination`; swap it into place when the block completes (module docstring)."""
    destination = Path(destination)
    check_not_overlapping(destination, [Path(p) for p in inputs])
    if destination.is_symlink():
        raise CheckpointError(f"The output {destination} is a symbolic link: give the folder itself")
    if destination.exists() and not destination.is_dir():
        raise CheckpointError(f"The output {destination} exists and is not a folder")
    existed = _is_nonempty_folder(destination)
    if existed and not overwrite:
        raise CheckpointError(f"Output folder {destination} exists and is not empty (pass overwrite to replace it)")
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"Cannot create the output's parent folder {parent}: {error}") from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"Cannot write in {parent} (permission denied): choose another output folder")
    _remove_stale(parent, destination.name)
    with _lock(parent, destination.name), _terminate_raises():
        scratch = parent / f".{destination.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        try:
            yield scratch
            if _is_nonempty_folder(destination) and not (existed and overwrite):
                raise CheckpointError(
                    f"{destination} appeared while this run was writing; it was left as it is (pass overwrite to "
                    "replace it)"
                )
            _swap_into_place(scratch, destination)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _swap_into_place(scratch: Path, destination: Path) -> None:
    aside = None
    if destination.exists():
        aside = destination.parent / f".{destination.name}.partial-{os.getpid()}-replaced-{uuid.uuid4().hex[:8]}"
        try:
            destination.rename(aside)
        except OSError as error:
            raise CheckpointError(f"Cannot replace {destination}: {error}; it was left as it is") from error
    try:
        scratch.rename(destination)
    except OSError as error:
        if aside is not None:
            aside.rename(destination)
        raise CheckpointError(
            f"Cannot move the new output into {destination}: {error}; nothing was replaced"
        ) from error
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
