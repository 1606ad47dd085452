#!/usr/bin/env bash
# Fetch transformers' own common model tests (`tests/test_modeling_common.py` with `ModelTesterMixin`,
# `tests/test_configuration_common.py` with `ConfigTester`, ...) for `tests/test_transformers_common.py`.
#   scripts/fetch_transformers_tests.sh [VENV_DIR] [DEST]      (relative paths are taken from the repository root)
# Downloads the sdist of the transformers version installed in VENV_DIR (default .venv) from the package index with
# pip (no wheel, no dependencies) and extracts only its top-level `tests/*.py` into DEST (default
# .transformers-tests/<version>, where the test module looks; git-ignored). Idempotent: nothing is downloaded when
# DEST already holds the files. The sdist has no tests/generation, tests/exporters or tests/utils: the test module
# stands in for the three names the common files import from there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="$venv/bin/python"
if [ ! -x "$python" ]; then
    echo "no python at $python: create the environment first (scripts/install.sh $venv)" >&2
    exit 1
fi
version="$("$python" -c 'import transformers; print(transformers.__version__)')"
dest="${2:-.transformers-tests/$version}"
if [ -f "$dest/test_modeling_common.py" ] && [ -f "$dest/test_configuration_common.py" ]; then
    echo "transformers $version tests already in $dest"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-binary :all: --no-deps --dest "$work" "transformers==$version"
mkdir -p "$(dirname "$dest")"
# The default folder ignores itself, so the extracted files never show up in `git status`.
if [ -z "${2:-}" ] && [ ! -f .transformers-tests/.gitignore ]; then
    printf '*\n' >.transformers-tests/.gitignore
fi
# Extract into a fresh folder beside DEST, then move it into place: an interrupted run leaves no half-filled DEST.
"$python" - "$work"/transformers-*.tar.gz "$dest" <<'PY'
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

archive, dest = sys.argv[1], Path(sys.argv[2])
staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
count = 0
with tarfile.open(archive) as tar:
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts  # transformers-X.Y.Z/tests/<file>.py, top level only
        if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
            source = tar.extractfile(member)
            (staging / parts[2]).write_bytes(source.read())
            count += 1
missing = {"test_modeling_common.py", "test_configuration_common.py"} - {p.name for p in staging.iterdir()}
if missing:
    shutil.rmtree(staging)
    sys.exit(f"{archive} has no tests/{', tests/'.join(sorted(missing))}")
if dest.exists():
    shutil.rmtree(dest)
staging.rename(dest)
print(f"extracted {count} files of tests/ into {dest}")
PY
