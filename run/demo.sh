#!/usr/bin/env bash
# From a fresh clone: set up .venv, train MagFace on the bundled real faces, evaluate, plot, summarise.
#   bash run/demo.sh                   # outputs in demo_out/
#   bash run/demo.sh --out /tmp/demo --epochs 4
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash run/setup_env.sh
.venv/bin/python -m run.demo "$@"
echo "demo.sh finished in $(( $(date +%s) - start ))s (set-up included)"
echo "the README's commands run inside the environment: source .venv/bin/activate (or call .venv/bin/python)"
