#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install the package with its test tools.
#   scripts/install.sh [VENV_DIR] [TRANSFORMERS_VERSION]
# torch 2.13.0 is pinned because a CPU build of it lies on this project's machines (an unpinned torch pulls a
# multi-GB CUDA build); elsewhere pip fetches it from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
transformers_pin="${2:-}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet -e ".[test]"
if [ -n "$transformers_pin" ]; then
    "$venv/bin/pip" install --quiet "transformers==$transformers_pin"
fi
"$venv/bin/python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
