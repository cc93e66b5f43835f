#!/usr/bin/env bash
# Install freshrec and everything it needs into ./.venv, from nothing (a fresh machine with Python 3.11).
#
# Why a script and not a bare `pip install .`: one place to pin the interpreter and the venv, and to say
# that torch is pinned to the 2.13.0 CPU build (an unpinned torch pulls a multi-GB CUDA build); the
# embedding kernels are fbgemm's CPU build, `fbgemm-gpu-cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# The project, its runtime dependencies and the test tools (Playwright's Python package among them: it
# drives the system's chromium, which .ci/run installs with apt-get; no browser is downloaded here).
$PIP install --quiet -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1; then
    echo "note: chromium is missing; tests/e2e/test_dashboard_browser.py needs it: apt-get install -y chromium" >&2
fi
.venv/bin/python -c "import freshrec, torch, fbgemm_gpu; print('freshrec', freshrec.__version__, 'torch', torch.__version__)"
