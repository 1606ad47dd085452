"""Reading checkpoint folders lazily and writing sharded safetensors atomically.

`TensorSource` opens `model.safetensors`, a sharded safetensors index, or `pytorch_model*.bin` (always with
`weights_only=True`; never plain pickle) and hands out one tensor at a time, so a conversion holds at most an
output shard in memory. `atomic_output_folder` builds a folder next to its destination and renames it into
place only when everything was written: a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be converted; the message names the file or keys at fault."""


SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def resolve_folder(source: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; anything else is taken as a Hub repo id and downloaded (cached) with huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; expected a checkpoint folder or a Hub repo id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=allow_patterns))
    except Exception as error:  # the hub client raises many types; keep the cause chained
        raise CheckpointError(f"{source} is neither a local folder nor a downloadable Hub repo: {error}") from error


class TensorSource:
    """Lazy, key-addressed view of the weights in a checkpoint folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.key_to_file: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._safe_handles: dict[Path, object] = {}
        self._bin_shards: dict[Path, dict[str, torch.Tensor]] = {}
        for file in self._weight_files():
            for key, shape in self._read_header(file).items():
                if key in self.key_to_file:
                    raise CheckpointError(f"Tensor {key} appears in both {self.key_to_file[key].name} and {file.name}")
                self.key_to_file[key] = file
                self._shapes[key] = shape
        self._check_index_agrees()

    # -- discovery ----------------------------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        for index_name in (SAFE_INDEX, BIN_INDEX):
            index_path = self.folder / index_name
            if index_path.exists():
                self._index = self._load_index(index_path)
                files = sorted({self.folder / name for name in self._index.values()})
                missing = [f.name for f in files if not f.exists()]
                if missing:
                    raise CheckpointError(f"{index_name} names shard(s) missing from {self.folder}: {missing}")
                return files
        self._index = None
        for single in (SAFE_SINGLE, BIN_SINGLE):
            if (self.folder / single).exists():
                return [self.folder / single]
        raise CheckpointError(
            f"No weights in {self.folder}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
        )

    @staticmethod
    def _load_index(path: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path.name} is not a valid weight index (needs a 'weight_map'): {error}") from error
        return weight_map

    def _check_index_agrees(self) -> None:
        if self._index is None:
            return
        wrong = sorted(k for k, name in self._index.items() if self.key_to_file.get(k, Path()).name != name)
        if wrong:
            raise CheckpointError(f"The index lists tensors its shards do not hold: {wrong[:10]}")

    def _read_header(self, file: Path) -> dict[str, tuple[int, ...]]:
        if file.suffix == ".safetensors":
            try:
                handle = safe_open(str(file), framework="pt")
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"Cannot read {file.name} (truncated or corrupt safetensors): {error}") from error
            self._safe_handles[file] = handle
            return shapes
        try:
            # mmap keeps a .bin shard out of RAM; weights_only refuses arbitrary pickled code.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch.load raises RuntimeError, UnpicklingError, EOFError... for bad files
            raise CheckpointError(
                f"Cannot read {file.name} (truncated, corrupt or not a weights file): {error}"
            ) from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{file.name} does not hold a flat dict of tensors")
        self._bin_shards[file] = state
        return {key: tuple(value.shape) for key, value in state.items()}

    # -- access -------------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys in file order, then key order within each file: reading follows the shards one by one."""
        files = list(dict.fromkeys(self.key_to_file.values()))
        return [k for f in files for k in self.key_to_file if self.key_to_file[k] == f]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, key: str) -> torch.Tensor:
        file = self.key_to_file[key]
        if file in self._safe_handles:
            try:
                return self._safe_handles[file].get_tensor(key)
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"Cannot read tensor {key} from {file.name}: {error}") from error
        return self._bin_shards[file][key]

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in dict.fromkeys(self.key_to_file.values()))


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes."""
    if isinstance(size, int):
        return size
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    text = size.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


class ShardedSafetensorsWriter:
    """Accumulates tensors and flushes a safetensors shard whenever `max_shard_bytes` would be exceeded.

    Shard names follow the transformers convention (`model-00001-of-00003.safetensors` + index); a single shard is
    written as `model.safetensors` without an index.
    """

    def __init__(self, folder: Path, max_shard_bytes: int, metadata: dict[str, str] | None = None):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[key] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.folder / f"shard-{len(self._shards):05d}.tmp"
        save_file(self._pending, str(path), metadata=self.metadata)
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        if self._pending or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            final = self.folder / SAFE_SINGLE
            self._shards[0][0].rename(final)
            return [final]
        count = len(self._shards)
        weight_map, files = {}, []
        for number, (path, keys) in enumerate(self._shards, start=1):
            final = self.folder / f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update(dict.fromkeys(keys, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return files


@contextlib.contextmanager
def atomic_output_folder(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch folder beside `destination`; move it into place on success, delete it on any error."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise CheckpointError(f"Output folder {destination} exists and is not empty (pass overwrite to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if destination.exists():
        shutil.rmtree(destination)
    scratch.rename(destination)
