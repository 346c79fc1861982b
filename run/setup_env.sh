#!/usr/bin/env bash
# Create ./.venv (if missing) and install requirements.txt, requirements-nodeps.txt (with --no-deps) and the test
# tools into it. Idempotent: reinstalls only when one of the three files changed.
#   bash run/setup_env.sh            # uses python3
#   PYTHON=python3.11 bash run/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha"
want=$(cat requirements.txt requirements-dev.txt requirements-nodeps.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-dev.txt
    # packages whose declared dependencies clash with ours (see the file): installed without them
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
    echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import torch, cv2, numpy, sklearn, retinaface; print(f'environment ready: torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
