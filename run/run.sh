#!/usr/bin/env bash
# Mag-ArcFace with the published recipe in ONE process: one GPU, DataParallel over the visible GPUs, or CPU.
#
#   bash run/run.sh DATA [extra run/train.py flags...]
#   DATA=/data/faces_emore OUT=work_dirs/r50 bash run/run.sh --arch iresnet50
#
# DATA: a training list ('path 0 identity 0' per line) or an insightface RecordIO folder (train.rec/.idx).
# Environment (defaults): OUT (work_dirs/mag_arcface) output folder; PYTHON (.venv/bin/python if present,
# else python3); CUDA_VISIBLE_DEVICES chooses the GPUs. Extra flags come last and override the recipe.
set -euo pipefail
# shellcheck source=run/launch_args.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_args.sh"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" -m run.train "${SOURCE[@]}" --pth-save-fold "${OUT:-work_dirs/mag_arcface}" \
    --arch iresnet100 --embedding-size 512 --last-fc-size 85742 --batch-size 512 \
    --lr 0.1 --lr-drop-epoch 10 18 22 --epochs 25 --momentum 0.9 --weight-decay 5e-4 \
    --margin arc --arc-scale 64 --l_a 10 --u_a 110 --l_margin 0.45 --u_margin 0.8 --lambda_g 35 \
    --resume auto "$@"
