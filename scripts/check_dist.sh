#!/usr/bin/env bash
# Build the wheel and the sdist, install the wheel in a fresh venv, check the command line, then run the test suite
# from the unpacked sdist (its fast part: -m "not slow").
#   scripts/check_dist.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
python3 -m venv "$work/build-env"
"$work/build-env/bin/pip" install --quiet --upgrade pip build
"$work/build-env/bin/python" -m build --outdir "$work/dist" . > "$work/build.log"
wheel=$(ls "$work"/dist/hovle-*.whl)
sdist=$(ls "$work"/dist/hovle-*.tar.gz)
echo "built $(basename "$wheel") and $(basename "$sdist")"

python3 -m venv "$work/wheel-env"
"$work/wheel-env/bin/pip" install --quiet "torch==2.13.0"
"$work/wheel-env/bin/pip" install --quiet "$wheel[test]"
for command in "" chat convert export train; do
    usage=$("$work/wheel-env/bin/hovle" $command --help | head -1)
    case "$usage" in
        "usage: hovle $command"*) echo "ok: hovle $command --help -> ${usage:0:40}" ;;
        *) echo "FAIL: hovle $command --help printed: $usage" >&2; exit 1 ;;
    esac
done
"$work/wheel-env/bin/python" -c "import hovle, hovle.training as t; assert t.accelerate_config('fsdp').is_file(); print('ok: hovle', hovle.__version__, 'with its accelerate configs')"

mkdir -p "$work/sdist" && tar -xzf "$sdist" -C "$work/sdist"
cd "$work"/sdist/hovle-*/
HF_HUB_OFFLINE=1 "$work/wheel-env/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider tests
