#!/usr/bin/env bash
# Set up, train the tutorial's model for one epoch on Shakespeare, and generate from "ROMEO:".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
charrnn train --run runs/quickstart --epochs 1 "$@"
charrnn generate runs/quickstart --prompt "ROMEO:" --length 500 --temperature 0.8 --seed 1
