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
    # the environment is about 6.5 GB (torch's CUDA build): say what the disk has, so that "No space left on
    # device" from pip reads as what it is; no pip cache, which would keep a second copy of the downloads
    free_gb=$(df -Pk "$VENV" | awk 'NR == 2 {printf "%.1f", $4 / 1048576}')
    echo "installing requirements into $VENV ($free_gb GB free there; about 6.5 GB needed)"
    pip_install=("$VENV/bin/python" -m pip install -q --no-cache-dir)
    "${pip_install[@]}" --upgrade pip
    "${pip_install[@]}" -r requirements.txt -r requirements-dev.txt
    # packages whose declared dependencies clash with ours (see the file): installed without them
    "${pip_install[@]}" --no-deps -r requirements-nodeps.txt
    echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import torch, cv2, numpy, sklearn, retinaface; print(f'environment ready: torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
