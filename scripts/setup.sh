#!/usr/bin/env bash
# Create .venv and install charrnn into it. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and pinned: this is the local CPU build. An unpinned torch would pull several GB of
# CUDA wheels; with 2.13.0 installed, the package's own "torch>=2.2" is already satisfied.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# Build the fused CPU kernels now (about a second with gcc) rather than on first use.
.venv/bin/python -c "from charrnn.kernels import build; build.available()"
# Built-in corpora are looked up in ../shared/data first when it exists (no download needed).
if [ -d ../shared/data ] && ! grep -q CHARRNN_DATA_DIR .venv/bin/activate; then
  echo "export CHARRNN_DATA_DIR=\"$(cd ../shared/data && pwd)\"" >> .venv/bin/activate
fi
echo "set up: $(.venv/bin/python -c 'import charrnn, torch; print("charrnn", charrnn.__version__, "torch", torch.__version__)')"
