"""Writing an output folder (`hovle convert`, `hovle export`, `hovle train`) without ever destroying what the user did
not ask to replace.

`atomic_output_folder(destination, overwrite, inputs, looks_ours, needed_bytes)` yields a scratch folder beside
`destination` and swaps it in only when the block completes:
* refused up front: an output that is, contains or lies inside an input; an output that is a symbolic link or a
  file; a non-empty output without `overwrite`; with `overwrite`, a non-empty output that `looks_ours` does not
  recognise as this package's (`check_replaceable_output`); an output whose lock another run holds; fewer free bytes
  than `needed_bytes`; an output name so long that no folder of that name can exist;
* the lock: `.NAME.lock` beside the output, held with `flock` for the whole run, so a run killed in any way
  (SIGKILL, power loss, a container stopped) releases it with its last file descriptor. Whether another run is
  writing is decided only by "can the lock be taken", never by a process id: ids mean nothing across PID namespaces
  (containers) and hosts sharing one folder (NFS). The file names the holder's host, boot id and pid, for the message;
* a scratch folder left by a killed run is removed by the next run, and only while that run holds the lock, so a live
  run's scratch is never touched;
* before the swap the scratch must still be the folder this run created (a token written into it at creation) and
  hold every file named by its safetensors index: a scratch emptied or replaced by anything else is never swapped in;
* ENOSPC/EDQUOT while writing becomes one `OutputSpaceError` naming the space needed; SIGINT and SIGTERM become
  `Interrupted` (exit status 130 / 143), even when the signal arrived inside a torch or safetensors call that turned
  the handler's exception into an unrelated one; the scratch folder is removed on every error;
* the swap: the old output is renamed aside, the scratch renamed into place, then the old one deleted; if the second
  rename fails the old output is put back, and a run killed between the two renames has the old output put back by
  the next run. A folder that appeared at the output during the run, without `overwrite`, is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from glob import escape
from pathlib import Path

from .checkpoint_io import CheckpointError

# The longest suffix put after the output's name: ".partial-<pid up to 7 digits>-replaced-<8 hex>", and ".lock".
_SUFFIX_BYTES = len(".partial-4194304-replaced-deadbeef")
_SCRATCH_TOKEN = ".hovle-scratch-token"


class OutputSpaceError(CheckpointError, OSError):
    """The file system of the output ran out of space (or quota); nothing was replaced. `errno` is kept (ENOSPC or
    EDQUOT), so callers that handle an `OSError` by its errno still recognise it."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a run: the scratch folder was removed and nothing replaced. A `BaseException`, like
    `KeyboardInterrupt`, so that no `except Exception` on the way swallows it; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, destination: Path | None = None):
        self.signum, self.exit_code = signum, 128 + signum
        name = signal.Signals(signum).name
        where = f"; {destination} was left as it was" if destination is not None else ""
        super().__init__(f"interrupted ({name}){where}")


def human_size(count: float) -> str:
    """A byte count for a message: "1.2 GB"."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def output_bytes(tensors: Iterable[tuple[Sequence[int], int]], margin: int = 0) -> int:
    """What an output folder needs on disk (the one estimate every writer checks free space with): each tensor's
    bytes, from its shape and bytes per element, plus `margin` for the small files written beside the weights."""
    return sum(math.prod(shape) * itemsize for shape, itemsize in tensors) + margin


def overlap(output: Path, other: Path) -> str | None:
    """How an output folder overlaps another path (both resolved): 'is', 'contains', 'lies inside' or None. Writing
    the output replaces it as a whole, so any overlap with an input would destroy that input."""
    if output == other:
        return "is"
    if output in other.parents:
        return "contains"
    if other in output.parents:
        return "lies inside"
    return None


def check_not_overlapping(destination: Path, inputs: Sequence[Path]) -> None:
    target = destination.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if overlap(target, source) is not None:
            raise CheckpointError(
                f"The output {destination} is, contains or lies inside the input {source}: choose another output folder"
            )


def check_replaceable_output(path: str | os.PathLike, looks_ours: Callable[[Path], bool]) -> None:
    """Refuse to replace `path` unless it is absent, an empty folder, or a folder `looks_ours(path)` recognises as
    written by this package (e.g. its `config.json` names a HoVLE model). `--overwrite` replaces only such folders:
    a folder of the user's own files is never deleted, whatever the flags. Raises `CheckpointError` naming the
    folder; call it before any long work, and again right before replacing (the folder may change meanwhile)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not any(path.iterdir()):
        return
    try:
        ours = looks_ours(path)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise CheckpointError(
            f"Output folder {path} is not empty and is not a folder this package wrote (no config.json of ours): "
            "--overwrite replaces only such folders, to keep other files safe; empty it or choose another output folder"
        )


def check_output_folder(
    destination: Path,
    overwrite: bool,
    looks_ours: Callable[[Path], bool] | None = None,
    *,
    label: str | None = None,
    not_empty_hint: str = " (pass --overwrite to replace it)",
    error: type[Exception] = CheckpointError,
) -> None:
    """What every command that writes a folder refuses before its long work (convert, export, train): a symbolic
    link, a file, a non-empty folder without `overwrite`, with `looks_ours` a folder this package did not write
    (`check_replaceable_output`), and a place it cannot write in (the nearest existing folder on the way). `label`
    names the output in the message (default "The output <destination>"); `not_empty_hint` ends the message about a
    non-empty folder; `error` is the command's user-error type."""
    label = label or f"The output {destination}"
    if destination.is_symlink():
        raise error(f"{label} is a symbolic link: give the folder itself")
    if destination.exists() and not destination.is_dir():
        raise error(f"{label} exists and is not a folder")
    if _is_nonempty_folder(destination) and not overwrite:
        raise error(f"{label} exists and is not empty{not_empty_hint}")
    if overwrite and looks_ours is not None:
        check_replaceable_output(destination, looks_ours)
    existing = destination.resolve()
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{label}: cannot write in {existing} (permission denied); choose another output folder")


def config_json_matches(path: Path, test: Callable[[dict], bool]) -> bool:
    """Whether `path/config.json` is a JSON object for which `test` holds: the marker `looks_ours` predicates use."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and bool(test(settings))


def _name_max(parent: Path) -> int:
    try:
        return os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _stem(parent: Path, name: str) -> str:
    """The part of the lock and scratch names that stands for the output: its name, or for a name too long to take
    the suffixes, a shortened name plus a hash of the whole one (still unique per output)."""
    limit = _name_max(parent) - 1 - _SUFFIX_BYTES  # 1: the leading dot
    encoded = os.fsencode(name)
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    return os.fsdecode(encoded[: limit - 13]).encode("utf-8", "ignore").decode("utf-8", "ignore") + "-" + digest


def _check_name_length(destination: Path) -> None:
    """A name no folder can have (ENAMETOOLONG) is refused before anything else touches it."""
    existing = destination.parent
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    limit, length = _name_max(existing), len(os.fsencode(destination.name))
    if length > limit:
        raise CheckpointError(
            f"The output name {destination.name[:40]}... is {length} bytes long; the file system of {existing} "
            f"allows at most {limit}: choose a shorter name"
        )


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"process {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


@contextlib.contextmanager
def _lock(parent: Path, stem: str, destination: Path) -> Iterator[None]:
    """Hold `flock` on `.STEM.lock` for the block. The file is unlinked while still locked, at the end; a run that
    took the lock of a file unlinked meanwhile sees that the path no longer names its file and tries again."""
    lock = parent / f".{stem}.lock"
    while True:
        descriptor = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise CheckpointError(
                f"Another run ({_holder(lock)}) is writing {destination}; wait for it or choose another output folder"
            ) from None
        except OSError as error:
            os.close(descriptor)
            raise CheckpointError(f"Cannot lock {lock} ({error.strerror}); choose another output folder") from error
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        info = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid()}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(info).encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(descriptor)


def _remove_stale(parent: Path, stem: str, name: str) -> None:
    """Scratch folders of this output left by killed runs. Called only while holding the output's lock: every run
    holds it from before creating its scratch until after removing it, so none of these belongs to a live run."""
    for path in parent.glob(f".{escape(stem)}.partial-*"):
        if "-replaced-" in path.name and not (parent / name).exists():
            path.rename(parent / name)  # killed between the two renames of a swap: the old output comes back
        else:
            shutil.rmtree(path, ignore_errors=True)


class _Signals:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread, and are remembered: a handler's exception raised
    inside a C extension (torch building a tensor, safetensors reading a storage) can come out as another exception
    ("could not determine the shape of object type 'UntypedStorage'"), and the record tells what really happened."""

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum, frame):
        self.received = signum
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


@contextlib.contextmanager
def interruptions_raise() -> Iterator[_Signals]:
    """For a whole command: SIGINT/SIGTERM raise `Interrupted`, whatever exception the signal surfaced as."""
    signals = _Signals()
    with signals.installed():
        try:
            yield signals
        except Interrupted:
            raise
        except BaseException as error:
            if signals.received is not None:
                raise Interrupted(signals.received) from error
            raise


def _is_nonempty_folder(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_free_space(destination: str | os.PathLike, needed_bytes: int | None, what: str = "") -> None:
    """Refuse, before anything is written, when the file system that will hold `destination` (its nearest existing
    folder) has fewer than `needed_bytes` free: a disk that fills mid-write costs the run its work. `what` names the
    output in the message (e.g. "--output x: the trained model"); None bytes: nothing to check."""
    if needed_bytes is None:
        return
    existing = Path(destination).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        error = OutputSpaceError(
            f"{what or destination}: not enough free space: it needs about {human_size(needed_bytes)}, {existing} "
            f"has {human_size(free)} free; free some space or choose another output folder"
        )
        error.errno = errno.ENOSPC
        raise error


def _check_scratch(scratch: Path, token: str, destination: Path) -> None:
    """The scratch is still the one this run created, and holds every file its safetensors index names."""
    try:
        intact = (scratch / _SCRATCH_TOKEN).read_text() == token
    except OSError:
        intact = False
    missing = []
    for index in scratch.glob("*.safetensors.index.json") if intact else ():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            shards = {index.name}
        missing += sorted(name for name in shards if not (scratch / name).is_file())
    if not intact or missing:
        what = f"lacks {', '.join(missing)}" if missing else "was removed or replaced by another process"
        raise CheckpointError(
            f"The folder being written for {destination} {what} before it was complete; {destination} was left as "
            "it was: run again, one run per output folder"
        )
    (scratch / _SCRATCH_TOKEN).unlink()


@contextlib.contextmanager
def atomic_output_folder(
    destination: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    looks_ours: Callable[[Path], bool] | None = None,
    needed_bytes: int | None = None,
) -> Iterator[Path]:
    """Yield a scratch folder beside `destination`; swap it into place when the block completes (module docstring).

    `looks_ours`: recognises a folder this package wrote; with it, `overwrite` replaces only such folders (see
    `check_replaceable_output`). `needed_bytes`: the bytes the block will write, where known, checked against the
    free space before anything is written."""
    destination = Path(destination)
    _check_name_length(destination)
    check_not_overlapping(destination, [Path(p) for p in inputs])
    existed = _is_nonempty_folder(destination)
    check_output_folder(destination, overwrite, looks_ours)
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"Cannot create the output's parent folder {parent}: {error.strerror}") from error
    check_free_space(destination, needed_bytes)
    stem = _stem(parent, destination.name)
    signals = _Signals()
    with _lock(parent, stem, destination), signals.installed():
        _remove_stale(parent, stem, destination.name)
        scratch = parent / f".{stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        token = uuid.uuid4().hex
        try:
            scratch.mkdir()
            (scratch / _SCRATCH_TOKEN).write_text(token)
            yield scratch
            if signals.received is not None:  # a handler's exception swallowed on the way
                raise Interrupted(signals.received, destination)
            _check_scratch(scratch, token, destination)
            if _is_nonempty_folder(destination) and not (existed and overwrite):
                raise CheckpointError(
                    f"{destination} appeared while this run was writing; it was left as it is (pass --overwrite to "
                    "replace it)"
                )
            if looks_ours is not None:
                check_replaceable_output(destination, looks_ours)  # replaced by other files during the run
            _swap_into_place(scratch, destination)
        except Interrupted as error:
            raise Interrupted(error.signum, destination) from None
        except BaseException as error:
            if signals.received is not None:
                raise Interrupted(signals.received, destination) from error
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                space = OutputSpaceError(
                    f"No space left on device while writing {destination}"
                    + (f" (it needs about {human_size(needed_bytes)})" if needed_bytes else "")
                    + f"; {destination} was left as it was: free some space in {parent} or choose another output "
                    "folder"
                )
                space.errno = error.errno
                raise space from error
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _swap_into_place(scratch: Path, destination: Path) -> None:
    aside = None
    if destination.exists():
        stem = _stem(destination.parent, destination.name)
        aside = destination.parent / f".{stem}.partial-{os.getpid()}-replaced-{uuid.uuid4().hex[:8]}"
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
