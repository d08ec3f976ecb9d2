#!/usr/bin/env bash
# Installs the peers of the side-by-side comparison into benches/compare/.venv (git-ignored),
# from PyPI, pinned: PyTorch (with its CUDA wheels: PyPI has no CPU-only build; about 3 GB),
# ONNX + ONNX Runtime, safetensors, numpy. Builds the release CLI the comparison runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.5.1 onnx==1.17.0 onnxruntime==1.20.1 onnxscript==0.1.0 safetensors==0.4.5 numpy==2.1.3
(cd ../.. && cargo build --release --bin clca)
.venv/bin/python -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
