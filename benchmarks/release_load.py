"""Loading the release as it is vs loading its converted copy, side by side in one run (full size).

    python benchmarks/make_full_size.py /big/release                     # once: 10.4 GB random release, float32
    python benchmarks/release_load.py /big/release /big/work [--json out.json]

The converted copy is written once by `hovle convert` in the release's own dtype (float32), so both loads read the
same 10.4 GB. Each load runs in a fresh child process (`import hovle` and the model code imported before the timer)
that calls `AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16)`, the README's call, and
touches every weight once; it reports its wall time and peak RSS (`ru_maxrss`). The release load converts the
weights while loading (renames, and the fused `wqkv` of 32 + 8 layers split per stack). Runs alternate: cold (page
cache dropped before each run, needs root) and warm; medians compared. transformers' one-off table of conversion
rules is built before the timer in both (`library_init_seconds`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from full_size_io import CHILD_PREAMBLE, CHILD_REPORT, LIBRARY_INIT, drop_page_cache

from common import argument_parser, cpu_environment, write_json

IMPORTS = (
    "import torch, hovle\nfrom transformers import AutoModelForImageTextToText\n"
    "import hovle.modeling_hovle, hovle.release_loading, hovle.release_weights\n"
    "hovle.register_auto_classes()"  # the converted folder with the package's classes too, not its copy of the code
)
LOAD = """
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
assert next(model.parameters()).dtype == torch.bfloat16
assert type(model.config).__name__ == sys.argv[2], type(model.config).__name__
for parameter in model.parameters():  # every weight byte read once
    parameter.sum()
"""
CONVERT = """
from hovle.conversion.to_transformers import convert
convert(sys.argv[1], sys.argv[2], dtype="float32", progress=False)
"""
CONFIG_CLASS = {"release": "HoVLEReleaseConfig", "converted": "HoVLEConfig"}


def run_child(body: str, *args: str) -> dict:
    code = CHILD_PREAMBLE.format(imports=IMPORTS, library_init=LIBRARY_INIT["from_pretrained"]) + body + CHILD_REPORT
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.split("RESULT", 1)[1])


def load(kind: str, folder: Path) -> dict:
    return run_child(LOAD, str(folder), CONFIG_CLASS[kind])


def compare(runs: dict[str, list[dict]]) -> dict:
    medians = {kind: statistics.median(r["seconds"] for r in results) for kind, results in runs.items()}
    peaks = {kind: max(r["peak_rss_gb"] for r in results) for kind, results in runs.items()}
    return {
        "seconds": {kind: [r["seconds"] for r in results] for kind, results in runs.items()},
        "median_seconds": medians,
        "peak_rss_gb": peaks,
        "time_ratio_release_to_converted": medians["release"] / medians["converted"],
        "rss_ratio_release_to_converted": peaks["release"] / peaks["converted"],
    }


def alternating(folders: dict[str, Path], repeats: int, cold: bool) -> dict | None:
    if repeats == 0:
        return None
    runs: dict[str, list[dict]] = {kind: [] for kind in folders}
    for index in range(repeats):
        order = list(folders) if index % 2 == 0 else list(folders)[::-1]  # neither always goes first
        for kind in order:
            if cold and not drop_page_cache():
                return None
            if not cold:
                load(kind, folders[kind])  # fill the page cache with this folder
            runs[kind].append(load(kind, folders[kind]))
    return compare(runs)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("release", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--json")
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--warm-repeats", type=int, default=5)
    args = parser.parse_args()
    converted = args.work / "converted-float32"
    if not (converted / "config.json").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        print(f"converting once into {converted} ...", flush=True)
        run_child(CONVERT, str(args.release), str(converted))
    folders = {"release": args.release, "converted": converted}
    results = {"machine": cpu_environment(), "target": {"time_ratio": 1.3, "rss_ratio": 1.1}}
    results["cold"] = alternating(folders, args.cold_repeats, cold=True)
    results["warm"] = alternating(folders, args.warm_repeats, cold=False)
    for mode in ("cold", "warm"):
        summary = results[mode]
        if summary is None:
            print(f"{mode}: skipped (no repeats, or dropping the page cache needs root)")
            continue
        print(
            f"{mode}: release {summary['median_seconds']['release']:.2f} s vs converted "
            f"{summary['median_seconds']['converted']:.2f} s ({summary['time_ratio_release_to_converted']:.3f}x); "
            f"peak RSS {summary['peak_rss_gb']['release']:.2f} vs {summary['peak_rss_gb']['converted']:.2f} GB "
            f"({summary['rss_ratio_release_to_converted']:.3f}x)"
        )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
