#!/usr/bin/env bash
# Installs finlight into ./.venv for CPU work (Python 3.10+). Safe to run again.
# torch goes in FIRST and stays pinned by constraints.txt, so nothing below can pull a CUDA build of torch
# (several GB) or torchvision (which breaks `import torchmetrics` beside CPU torch).
# GPU machine: install your CUDA torch 2.13.0 into the venv first (pytorch.org), then run this script;
# it keeps the torch it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,lora,onnx,dendrites]"
# perforatedai declares torchvision (breaks torchmetrics beside CPU torch) and cryptography it does not need here:
# install it without its declared dependencies; its real needs come with the `dendrites` extra above.
.venv/bin/python -m pip install -q --no-deps perforatedai==3.2.9
.venv/bin/python -c "import finlight, torch, lightning, transformers; print('finlight', finlight.__version__, '| torch', torch.__version__, '| lightning', lightning.__version__, '| transformers', transformers.__version__)"
