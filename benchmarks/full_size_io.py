"""Full-size conversion and loading, measured side by side with their physical floors in one run.

    python benchmarks/make_full_size.py /big/original          # once: 10.4 GB random checkpoint, release layout
    python benchmarks/full_size_io.py /big/original /big/work [--llama-reference] [--json out.json]

Each measured step runs in a fresh child process that reports its own wall time and peak RSS (`ru_maxrss`):
* conversion fp32 -> bf16 (`hovle.conversion.to_transformers`) vs a plain read-and-write copy of the same source files
  (the source is read once first so both start from the same warm page cache);
* `from_pretrained` of the converted bf16 folder vs reading the same safetensors files into tensors with
  `safetensors` alone, both touching every weight byte once. Cold (page cache dropped before each run; needs root)
  and warm (alternating, 3 cold and 7 warm runs each by default), medians compared.
* with `--llama-reference`: the same warm comparison for a plain transformers `LlamaForCausalLM` of the same size,
  to separate the library's per-call costs from this model's.
Library imports, and the table of checkpoint conversion rules that transformers builds once per process on its first
`from_pretrained` of any model, are timed apart (`import_seconds`, `library_init_seconds`); ratios are reported
without and with that one-off init.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from common import BENCHMARKS_DIR, argument_parser, write_json

# Library imports happen before the timer starts (a one-off per process, not part of loading); each step's
# `IMPORTS` are listed with it. Their cost is reported separately by `import_seconds`.
CHILD_PREAMBLE = (
    "import json, resource, sys, time\nimport_start = time.perf_counter()\n{imports}\n"
    "init_start = time.perf_counter()\n{library_init}\nstart = time.perf_counter()\n"
)
CHILD_REPORT = textwrap.dedent(
    """
    print("RESULT" + json.dumps({"seconds": time.perf_counter() - start, "import_seconds": init_start - import_start,
                                 "library_init_seconds": start - init_start,
                                 "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
    """
)

STEPS = {
    "copy": """
import shutil
src, dst = sys.argv[1], sys.argv[2]
for file in sorted(__import__("pathlib").Path(src).glob("*")):
    with open(file, "rb") as reader, open(f"{dst}/{file.name}", "wb") as writer:
        shutil.copyfileobj(reader, writer, 64 << 20)
""",
    "convert": """
from hovle.conversion.to_transformers import convert
convert(sys.argv[1], sys.argv[2], dtype="bfloat16", progress=False)
""",
    "safetensors_read": """
from pathlib import Path
from safetensors.torch import load_file
tensors = {}
for file in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    tensors.update(load_file(str(file)))
for tensor in tensors.values():  # load_file maps lazily: touch every byte so the data is really read
    tensor.sum()
""",
    "from_pretrained": """
import torch
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.bfloat16)
assert next(model.parameters()).dtype == torch.bfloat16
for parameter in model.parameters():  # same touch as the baseline: every weight byte read once
    parameter.sum()
""",
    # Reference: a plain transformers model of the same size (LlamaForCausalLM, 32 layers of the same width and
    # vocabulary), to tell the library's own per-call costs from ours.
    "llama_from_pretrained": """
import torch
from transformers import LlamaForCausalLM
model = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
for parameter in model.parameters():
    parameter.sum()
""",
    # Writes that reference model (random bf16 weights) once; not timed.
    "make_llama": f"""
from transformers import AutoConfig
sys.path.insert(0, {str(BENCHMARKS_DIR)!r})
from common import llama_like
config = AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)
llama_like(config, torch.bfloat16).save_pretrained(sys.argv[2])
""",
}


IMPORTS = {
    "copy": "import shutil",
    "convert": "import torch, transformers",
    "safetensors_read": "import torch, safetensors.torch",
    # The model's code (and the transformers modules it pulls in) imported up front: a fixed per-process cost,
    # the same for any transformers model, reported as import_seconds.
    "from_pretrained": (
        "import torch\nfrom transformers import AutoModelForImageTextToText\n"
        "from transformers.dynamic_module_utils import get_class_from_dynamic_module\n"
        "get_class_from_dynamic_module('modeling_hovle.HoVLEForConditionalGeneration', sys.argv[1])"
    ),
    "llama_from_pretrained": "import torch\nfrom transformers import LlamaForCausalLM",
    "make_llama": "import torch",
}


# One-off work of the library on the first `from_pretrained` of ANY model in a process, independent of the model
# and its size: transformers (5.2x) builds its table of checkpoint conversion rules for every model type
# (~0.5 s of regex compilation) on first use. Timed on its own (`library_init_seconds`); the ratios are reported
# with and without it.
_CONVERSION_TABLE = (
    "from transformers import conversion_mapping\n"
    "if hasattr(conversion_mapping, 'get_checkpoint_conversion_mapping'):\n"
    "    conversion_mapping.get_checkpoint_conversion_mapping('legacy')"
)
LIBRARY_INIT = {"from_pretrained": _CONVERSION_TABLE, "llama_from_pretrained": _CONVERSION_TABLE}


def run_step(name: str, *args: str) -> dict:
    preamble = CHILD_PREAMBLE.format(imports=IMPORTS[name], library_init=LIBRARY_INIT.get(name, "pass"))
    code = preamble + STEPS[name] + CHILD_REPORT
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=None)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.split("RESULT", 1)[1])


def drop_page_cache() -> bool:
    """Empty the kernel's page cache so the next step reads from disk (needs root; False where refused)."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def load_summary(reading: list[dict], loading: list[dict]) -> dict:
    """Medians of alternating runs; the load ratio with and without the library's one-off per-process init."""
    read_s = statistics.median(r["seconds"] for r in reading)
    load_s = statistics.median(r["seconds"] for r in loading)
    init_s = statistics.median(r["library_init_seconds"] for r in loading)
    return {
        "safetensors_read_s": [r["seconds"] for r in reading],
        "from_pretrained_s": [r["seconds"] for r in loading],
        "library_init_s": init_s,
        "ratio": load_s / read_s,
        "ratio_first_load_in_process": (load_s + init_s) / read_s,
        "peak_rss_gb": max(r["peak_rss_gb"] for r in loading),
    }


def alternate(folder: Path, loading_step: str, repeats: int) -> tuple[list[dict], list[dict]]:
    """Warm runs of the safetensors read and of `loading_step`, alternating, after one read to fill the page cache."""
    run_step("safetensors_read", str(folder))
    reading, loading = [], []
    for _ in range(repeats):
        reading.append(run_step("safetensors_read", str(folder)))
        loading.append(run_step(loading_step, str(folder)))
    return reading, loading


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern))


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--json")
    parser.add_argument("--loading-only", action="store_true", help="reuse WORK/converted-bf16 from a previous run")
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--warm-repeats", type=int, default=7)
    parser.add_argument(
        "--llama-reference", action="store_true", help="also load a plain LlamaForCausalLM of the same size (warm)"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    copy_dir, converted = args.work / "copy", args.work / "converted-bf16"
    results = {}
    if not args.loading_only:
        for folder in (copy_dir, converted):
            shutil.rmtree(folder, ignore_errors=True)
        copy_dir.mkdir()
        run_step("safetensors_read", str(args.source))  # warm the page cache with the source
        copy = run_step("copy", str(args.source), str(copy_dir))
        shutil.rmtree(copy_dir)
        conversion = run_step("convert", str(args.source), str(converted))
        largest_shard = max(f.stat().st_size for f in args.source.glob("*.safetensors")) / 1e9
        results.update(
            source_gb=folder_bytes(args.source) / 1e9,
            largest_source_shard_gb=largest_shard,
            copy=copy,
            convert=conversion,
            convert_time_ratio_to_copy=conversion["seconds"] / copy["seconds"],
            convert_peak_rss_minus_largest_shard_gb=conversion["peak_rss_gb"] - largest_shard,
        )
    weight_bytes = folder_bytes(converted)
    results["converted_gb"] = weight_bytes / 1e9
    # Cold: the first load after a reboot or download, files read from disk (the case that matters for users).
    # Disk reads can vary by +-30 % from run to run, so the two sides alternate and medians are compared.
    if drop_page_cache():
        cold_reading, cold_loading = [], []
        for _ in range(args.cold_repeats):
            drop_page_cache()
            cold_reading.append(run_step("safetensors_read", str(converted)))
            drop_page_cache()
            cold_loading.append(run_step("from_pretrained", str(converted)))
        results["cold"] = load_summary(cold_reading, cold_loading)
    # Warm: files already in the page cache; fixed per-call overheads dominate a read of a few tenths of a second,
    # which can vary by +-50 % from process to process: the two sides alternate, more often than cold.
    warm_reading, warm_loading = alternate(converted, "from_pretrained", args.warm_repeats)
    results["warm"] = load_summary(warm_reading, warm_loading)
    if args.llama_reference:
        llama = args.work / "llama-32-layers-bf16"
        if not llama.exists():
            run_step("make_llama", str(converted), str(llama))
        results["warm_plain_llama_reference"] = load_summary(
            *alternate(llama, "llama_from_pretrained", args.warm_repeats)
        )
    results["load_peak_rss_ratio_to_weights"] = max(r["peak_rss_gb"] for r in warm_loading) / (weight_bytes / 1e9)
    print(json.dumps(results, indent=2))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
