#!/usr/bin/env bash
# Create (or reuse) the virtual environment of the demo and evaluation tests (tests/ui): the package with gradio,
# Selenium and lmms-eval, plus Chromium and its chromedriver from the system's packages (Debian; run as root).
#   scripts/install_demo.sh [VENV_DIR] [SPACE_VENV_DIR]
# SPACE_VENV_DIR (default .venv-space) gets what a Hugging Face Space has: the package and gradio, nothing else
# (tests/ui runs app.py in it when HOVLE_SPACE_PYTHON names its python).
# lmms-eval's own dependency list would replace the CPU torch with a CUDA 13 build (several GB) and adds many
# task-specific packages (video, audio, OCR, judges): it is installed without them, with what its CLI, its task
# loader and the generation tasks' metrics import. lmms-eval 0.7.3 imports `filelock._api`, gone in filelock 4.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-demo}"
space_venv="${2:-.venv-space}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet -e ".[demo,demo-test,test]"
"$venv/bin/pip" install --quiet --no-deps "lmms-eval==0.7.3"
"$venv/bin/pip" install --quiet "torch==2.13.0" "filelock<4" accelerate datasets evaluate jsonlines loguru \
    pytablewriter sacrebleu tenacity
if [ ! -x "$space_venv/bin/python" ]; then
    python3 -m venv "$space_venv"
fi
"$space_venv/bin/pip" install --quiet --upgrade pip
"$space_venv/bin/pip" install --quiet "torch==2.13.0"
"$space_venv/bin/pip" install --quiet -e ".[demo]"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi
"$venv/bin/python" -c "import torch, transformers, gradio, selenium, lmms_eval; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| gradio', gradio.__version__, '| selenium', selenium.__version__)"
chromium --version
