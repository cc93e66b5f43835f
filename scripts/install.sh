#!/usr/bin/env bash
# Install freshrec and everything it needs into ./.venv, from nothing (a fresh machine with Python 3.11).
#
# Why a script and not a bare `pip install .`: TorchRec's wheel metadata names the CUDA build `fbgemm-gpu`,
# which would pull gigabytes of CUDA; we install the CPU kernels (`fbgemm-gpu-cpu`) with everything else
# first, then TorchRec itself with --no-deps. torch is pinned to the 2.13.0 CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# The project, its runtime dependencies and the test tools.
$PIP install --quiet -e ".[dev,torchrec]"
$PIP install --quiet --no-deps "torchrec==1.8.0"
.venv/bin/python -c "import freshrec, torch, fbgemm_gpu; print('freshrec', freshrec.__version__, 'torch', torch.__version__)"
