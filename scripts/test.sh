#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed), one pytest worker per core (pytest-xdist). Extra
# arguments go to pytest; `-n 0` runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source .venv/bin/activate
exec python -m pytest -q -n auto "$@"
