#!/usr/bin/env bash
# Mag-ArcFace with the published recipe under torchrun: DDP backbone, classifier sharded over the ranks.
#
#   bash run/run_dist.sh DATA [extra run/train_dist.py flags...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 NPROC=8 bash run/run_dist.sh /data/faces_emore   # on each node
#
# DATA: a training list ('path 0 identity 0' per line) or an insightface RecordIO folder (train.rec/.idx).
# Environment (defaults): NPROC processes per node (the number of GPUs, 1 without nvidia-smi); NNODES (1);
# NODE_RANK (0); MASTER_ADDR (127.0.0.1); MASTER_PORT (29500); MAX_RESTARTS (3) restarts after a rank
# dies, each resuming from OUT/last.pth; OUT (work_dirs/mag_arcface, shared by all nodes); PYTHON
# (.venv/bin/python if present, else python3). --batch-size is the total over all ranks (512).
set -euo pipefail
# shellcheck source=run/launch_args.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_args.sh"
if [ -x "$REPO/.venv/bin/torchrun" ] && [ "$PYTHON" = "$REPO/.venv/bin/python" ]; then LAUNCH=("$REPO/.venv/bin/torchrun")
elif command -v torchrun >/dev/null 2>&1; then LAUNCH=(torchrun)
else LAUNCH=("$PYTHON" -m torch.distributed.run); fi
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Preemption: torchrun forwards these signals to every rank and waits up to 300 s for last.pth before
# SIGKILL (its --signals-to-handle / --shutdown-timeout, read from the environment; older torchruns ignore them).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export PET_SHUTDOWN_TIMEOUT=${PET_SHUTDOWN_TIMEOUT:-300}
# The margin family; run_dist_cos.sh sets Mag-CosFace's.
MARGIN_ARGS=${MARGIN_ARGS:---margin arc --l_margin 0.45 --u_margin 0.8 --lambda_g 35}

# shellcheck disable=SC2086  # MARGIN_ARGS is a list of flags
exec "${LAUNCH[@]}" --nproc_per_node "${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}" --nnodes "${NNODES:-1}" \
    --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --max-restarts "${MAX_RESTARTS:-3}" \
    -m run.train_dist "${SOURCE[@]}" --pth-save-fold "${OUT:-work_dirs/mag_arcface}" \
    --arch iresnet100 --embedding-size 512 --last-fc-size 85742 --batch-size 512 \
    --lr 0.1 --lr-drop-epoch 10 18 22 --epochs 25 --momentum 0.9 --weight-decay 5e-4 \
    --arc-scale 64 --l_a 10 --u_a 110 $MARGIN_ARGS --resume auto "$@"
