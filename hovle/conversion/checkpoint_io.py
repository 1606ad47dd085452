"""Reading checkpoint folders lazily and writing sharded safetensors atomically.

`TensorSource` opens `model.safetensors`, a sharded safetensors index, or `pytorch_model*.bin` (always with
`weights_only=True`; never plain pickle) and hands out one tensor at a time, so a conversion holds at most an
output shard in memory. `output_folder.atomic_output_folder` builds a folder next to its destination and renames it into
place only when everything was written: a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open

from ..errors import HoVLEUserError

logger = logging.getLogger(__name__)


class CheckpointError(HoVLEUserError):
    """A checkpoint folder that cannot be converted; the message names the file or keys at fault."""


def name_keys(keys, limit: int = 5) -> str:
    """`keys` for an error message: the first `limit`, then "... and N more", so that a message stays one short line
    however many keys are at fault."""
    keys = [str(key) for key in keys]
    shown = ", ".join(keys[:limit])
    return f"{shown} ... and {len(keys) - limit} more" if len(keys) > limit else shown


def read_json_object(path: Path) -> dict:
    """The JSON object in the file `path` (a config or an index); a `CheckpointError` naming the file when it is a
    folder, unreadable, not UTF-8, not JSON, or not an object."""
    where = f"{path.name} in {path.parent}"
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder, not a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{where} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{where} is not valid JSON: {error}") from error
    except OSError as error:
        raise CheckpointError(f"Cannot read {where}: {error.strerror or error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must hold a JSON object")
    return data


# The weight dtypes a conversion reads: the floating-point ones as they are, float8 (e4m3 / e5m2) widened to float32
# first (exactly: every float8 value is a float16, bfloat16 and float32 value), by safetensors' and torch's names.
READABLE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
FLOAT8_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_SAFETENSORS_NAMES = {"BOOL": "bool", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8"}
_SAFETENSORS_NAMES.update({"U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E8M0": "float8_e8m0fnu"})
# Prefixes a training wrapper puts before every key of the model it wraps; stripped when every key has one.
WRAPPER_PREFIXES = {"module.": "a DDP/DeepSpeed wrapper's prefix", "_orig_mod.": "torch.compile's prefix"}


def _dtype_name(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return _SAFETENSORS_NAMES.get(dtype, dtype)


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
        self._stored: dict[str, str] = {}  # key -> the name it has in its file (with a wrapper's prefix)
        dtypes: dict[str, str | torch.dtype] = {}
        for file in self._weight_files():
            for key, (shape, dtype) in self._read_header(file).items():
                if key in self.key_to_file:
                    raise CheckpointError(f"Tensor {key} appears in both {self.key_to_file[key].name} and {file.name}")
                self.key_to_file[key] = file
                self._shapes[key] = shape
                dtypes[key] = dtype
        self._check_index_agrees()
        self._strip_wrapper_prefix()
        not_float = {key: dtype for key, dtype in dtypes.items() if not self._readable(dtype)}
        if not_float:
            named = name_keys(f"{self._key(key)} ({_dtype_name(dtype)})" for key, dtype in not_float.items())
            raise CheckpointError(
                f"Weights must be floating point (float32, float16, bfloat16, float64, or float8 e4m3/e5m2, which "
                f"convert exactly): {len(not_float)} tensor(s) are not: {named}"
            )

    @staticmethod
    def _readable(dtype: str | torch.dtype) -> bool:
        """`dtype`: safetensors' name (a .safetensors header) or a torch dtype (a .bin)."""
        readable = {**READABLE_DTYPES, **FLOAT8_DTYPES}
        return dtype in readable or dtype in readable.values()

    def _key(self, stored: str) -> str:
        """The key a tensor stored as `stored` is known by (its wrapper's prefix stripped)."""
        return next((key for key, name in self._stored.items() if name == stored), stored) if self._stored else stored

    def _strip_wrapper_prefix(self) -> None:
        """A checkpoint saved from a wrapped model (DDP, DeepSpeed, torch.compile) has the wrapper's prefix on every
        key: read its keys without it (the tensors are the same), saying so. Some keys with it and some without is a
        broken checkpoint: refused."""
        keys = list(self.key_to_file)
        for prefix, why in WRAPPER_PREFIXES.items():
            prefixed = [key for key in keys if key.startswith(prefix)]
            if not prefixed:
                continue
            if len(prefixed) < len(keys):
                others = [key for key in keys if not key.startswith(prefix)]
                raise CheckpointError(
                    f"{len(prefixed)} of {len(keys)} keys start with {prefix!r} ({why}) and {len(others)} do not: "
                    f"{name_keys(others)}"
                )
            logger.warning("The keys of %s start with %r (%s): reading them without it", self.folder, prefix, why)
            self._stored = {key.removeprefix(prefix): key for key in keys}
            self.key_to_file = {key.removeprefix(prefix): file for key, file in self.key_to_file.items()}
            self._shapes = {key.removeprefix(prefix): shape for key, shape in self._shapes.items()}
            return

    # -- discovery ----------------------------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        for index_name in (SAFE_INDEX, BIN_INDEX):
            index_path = self.folder / index_name
            if index_path.exists():
                self._index = self._load_index(index_path)
                files = sorted({self.folder / name for name in self._index.values()})
                missing = [f.name for f in files if not f.exists()]
                if missing:
                    raise CheckpointError(
                        f"{index_name} names shard(s) missing from {self.folder}: {name_keys(missing)}"
                    )
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
        """The index's tensor -> shard file map, every shard a file inside the index's folder."""
        weight_map = read_json_object(path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(
                f"{path.name} is not a valid weight index: its 'weight_map' must be an object of tensor name -> "
                f"shard file, not {type(weight_map).__name__ if weight_map is not None else 'missing'}"
            )
        if not weight_map:
            raise CheckpointError(f"{path.name}: its 'weight_map' is empty (it names no tensor)")
        for key, name in weight_map.items():
            if not isinstance(name, str) or not name:
                raise CheckpointError(f"{path.name}: weight_map[{key!r}] must be a shard file name, not {name!r}")
        for name in sorted(set(weight_map.values())):
            relative = PurePosixPath(name.replace("\\", "/"))
            if relative.is_absolute() or ".." in relative.parts:
                raise CheckpointError(f"{path.name} names shard {name!r}, a path outside {path.parent}")
            if (path.parent / relative).is_dir():
                raise CheckpointError(f"{path.name} names shard {name!r}, which is a folder, not a weights file")
        return weight_map

    def _check_index_agrees(self) -> None:
        if self._index is None:
            return
        wrong = sorted(k for k, name in self._index.items() if self.key_to_file.get(k, Path()) != self.folder / name)
        if wrong:
            raise CheckpointError(f"The index lists tensors its shards do not hold: {name_keys(wrong)}")

    def _read_header(self, file: Path) -> dict[str, tuple[tuple[int, ...], str | torch.dtype]]:
        """key -> (shape, dtype: safetensors' name, or a torch dtype for a .bin) of one weights file."""
        if file.suffix == ".safetensors":
            try:
                handle = safe_open(str(file), framework="pt")
                slices = {key: handle.get_slice(key) for key in handle.keys()}
                header = {key: (tuple(part.get_shape()), part.get_dtype()) for key, part in slices.items()}
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"Cannot read {file.name} (truncated or corrupt safetensors): {error}") from error
            self._safe_handles[file] = handle
            return header
        try:
            # mmap keeps a .bin shard out of RAM; weights_only refuses arbitrary pickled code. A legacy (pre-1.6,
            # non-zip) .bin cannot be memory-mapped: it is read whole, with the same weights_only safety.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except Exception as error:  # torch.load raises RuntimeError, UnpicklingError, EOFError... for bad files
            raise CheckpointError(
                f"Cannot read {file.name} (truncated, corrupt or not a weights file): {error}"
            ) from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{file.name} does not hold a flat dict of tensors")
        self._bin_shards[file] = state
        return {key: (tuple(value.shape), value.dtype) for key, value in state.items()}

    # -- access -------------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys in file order, then key order within each file: reading follows the shards one by one."""
        files = list(dict.fromkeys(self.key_to_file.values()))
        return [k for f in files for k in self.key_to_file if self.key_to_file[k] == f]

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) in file order; each file's memory mapping is dropped once its last tensor is read, so a
        conversion keeps at most one source shard's pages resident."""
        for file in list(dict.fromkeys(self.key_to_file.values())):
            for key in [k for k, f in self.key_to_file.items() if f == file]:
                yield key, self.get(key)
            self._safe_handles.pop(file, None)
            self._bin_shards.pop(file, None)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, key: str) -> torch.Tensor:
        file, stored = self.key_to_file[key], self._stored.get(key, key)
        if file in self._safe_handles:
            try:
                tensor = self._safe_handles[file].get_tensor(stored)
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"Cannot read tensor {key} from {file.name}: {error}") from error
        else:
            tensor = self._bin_shards[file][stored]
        # float8 widened exactly; torch has no finiteness check or most casts for it.
        return tensor.to(torch.float32) if tensor.dtype in FLOAT8_DTYPES.values() else tensor

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in dict.fromkeys(self.key_to_file.values()))


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SIZE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Z]*)")


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes; anything else, or less than one byte, is a `CheckpointError`."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.fullmatch(size.strip().upper()) if isinstance(size, str) else None
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise CheckpointError(
                f"--max-shard-size {size!r} is not a size: give bytes or a number with a unit, e.g. 5GB, 500MB, 2GiB"
            )
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if value < 1:
        raise CheckpointError(f"--max-shard-size {size!r} must be at least 1 byte")
    return value


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
# The dtypes a conversion can write, by the name users give.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def target_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CheckpointError(f"Unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def _count(values: int) -> str:
    return f"{values} value{'s' if values != 1 else ''}"


class NonfiniteCheck:
    """Counts, per source tensor, NaN/Inf already in the source and finite values that the cast to the output dtype
    turns into inf (beyond float16's +-65504, or bfloat16's rounding past float32's largest value). A conversion
    checks every tensor as it streams, then `finish` refuses the output unless the user allowed it; the atomic
    output folder makes sure nothing of a refused output remains. `torch.isfinite` is one cheap pass per tensor;
    the counting passes run only on a tensor that has a non-finite value."""

    def __init__(self, dtype: torch.dtype, option: str = "--allow-nonfinite (allow_nonfinite=True)"):
        self.dtype, self.option = dtype, option
        self.in_source: dict[str, int] = {}
        self.overflow: dict[str, int] = {}

    @staticmethod
    def _nonfinite(tensor: torch.Tensor) -> int:
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            return 0
        return int((~torch.isfinite(tensor)).sum())

    def check_source(self, key: str, tensor: torch.Tensor) -> None:
        bad = self._nonfinite(tensor)
        if bad:
            self.in_source[key] = self.in_source.get(key, 0) + bad

    def check_cast(self, key: str, before: torch.Tensor, after: torch.Tensor) -> None:
        """`after` is `before` cast to the output dtype; only values the cast made non-finite count."""
        after_bad = self._nonfinite(after)
        if after_bad:
            overflow = after_bad - self._nonfinite(before)
            if overflow:
                self.overflow[key] = self.overflow.get(key, 0) + overflow

    def message(self) -> str | None:
        problems = []
        if self.overflow:
            named = name_keys(f"{key} ({_count(n)})" for key, n in self.overflow.items())
            largest = torch.finfo(self.dtype).max
            problems.append(
                f"{len(self.overflow)} tensor(s) hold values beyond {str(self.dtype).removeprefix('torch.')}'s range "
                f"(+-{largest:.6g}) that would become inf: {named}"
            )
        if self.in_source:
            named = name_keys(f"{key} ({_count(n)})" for key, n in self.in_source.items())
            problems.append(f"{len(self.in_source)} tensor(s) of the source already hold NaN or Inf: {named}")
        return "; ".join(problems) if problems else None

    def finish(self, allow: bool) -> None:
        message = self.message()
        if message is None:
            return
        if allow:
            logger.warning("Writing non-finite weights as allowed: %s", message)
            return
        raise CheckpointError(
            f"Refusing to write non-finite weights: {message}. Pass {self.option} to write them anyway"
        )


class StreamingSafetensorsWriter:
    """Writes sharded safetensors one tensor at a time, straight to disk.

    safetensors' `save_file` needs a whole shard in memory (5 GB per shard at full size); here the shard layout is
    planned up front from the known (name, shape, dtype) sequence, each shard's header is written when it opens,
    and each tensor's bytes follow as it arrives. The format is safetensors' documented one: an 8-byte
    little-endian header length, a JSON header with data offsets (padded to 8 bytes), then the raw data.
    Shard names follow transformers (`model-00001-of-00003.safetensors` + index); one shard is `model.safetensors`.
    """

    def __init__(
        self, folder: Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int, metadata=None
    ):
        self.folder = folder
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        shard_bytes = 0
        for name, shape, dtype in plan:
            if dtype not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"Cannot write {name}: unsupported dtype {dtype}")
            size = math.prod(shape) * dtype.itemsize
            if self.shards[-1] and shard_bytes + size > max_shard_bytes:
                self.shards.append([])
                shard_bytes = 0
            self.shards[-1].append((name, tuple(shape), dtype))
            shard_bytes += size
        count = len(self.shards)
        self.names = (
            [SAFE_SINGLE] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        )
        self._expected = iter((shard, entry) for shard, entries in enumerate(self.shards) for entry in entries)
        self._open_shard, self._handle = None, None
        self.total_bytes = sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in plan)

    def _start_shard(self, shard: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {}, 0
        for name, shape, dtype in self.shards[shard]:
            size = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        header["__metadata__"] = self.metadata
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._handle = open(self.folder / self.names[shard], "wb")  # noqa: SIM115 - closed in _start_shard/finish
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._open_shard = shard

    def add(self, name: str, tensor: torch.Tensor) -> None:
        try:
            shard, (expected, shape, dtype) = next(self._expected)
        except StopIteration:
            raise CheckpointError(f"Tensor {name} was not planned for this output") from None
        if (name, tuple(tensor.shape), tensor.dtype) != (expected, shape, dtype):
            raise CheckpointError(
                f"Expected {expected} {list(shape)} {dtype}, got {name} {list(tensor.shape)} {tensor.dtype}"
            )
        if shard != self._open_shard:
            self._start_shard(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._handle.write(memoryview(data.numpy()))

    def finish(self) -> list[Path]:
        if next(self._expected, None) is not None:
            raise CheckpointError("Not every planned tensor was written")
        if self._handle is not None:
            self._handle.close()
        if len(self.names) > 1:
            weight_map = {name: self.names[i] for i, entries in enumerate(self.shards) for name, _, _ in entries}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return [self.folder / name for name in self.names]


class CheckedTensorWriter:
    """What `convert` and `export` write through: every source tensor is checked for NaN/Inf as it is read
    (`read`), cast to the output dtype with the overflow check (`cast`), written in the planned order (`add`), and
    `finish` refuses non-finite weights unless allowed, then completes the shards. The dtype and the shard size come
    from the command's options (`options`)."""

    def __init__(
        self, folder: Path, plan: list[tuple[str, tuple[int, ...], torch.dtype]], dtype: torch.dtype, shard_bytes: int
    ):
        self.dtype = dtype
        self.writer = StreamingSafetensorsWriter(folder, plan, shard_bytes)
        self.finite = NonfiniteCheck(dtype)

    def read(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        self.finite.check_source(key, tensor)
        return tensor

    def cast(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (part of source tensor `key`) in the output dtype; values the cast makes inf are counted."""
        converted = tensor.to(self.dtype)
        self.finite.check_cast(key, tensor, converted)
        return converted

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.writer.add(name, tensor)

    def finish(self, allow_nonfinite: bool) -> list[Path]:
        self.finite.finish(allow_nonfinite)
        return self.writer.finish()

    @staticmethod
    def options(dtype: str, max_shard_size: int | str) -> tuple[torch.dtype, int]:
        """A writing command's `--dtype` and `--max-shard-size` as (torch dtype, shard bytes), each checked."""
        return target_dtype(dtype), parse_size(max_shard_size)
