#!/usr/bin/env bash
# Mag-CosFace with the published recipe under torchrun (l_m 0.35, u_m 0.8, lambda_g 150); otherwise as
# run_dist.sh, whose usage and environment variables apply (OUT defaults to work_dirs/mag_cosface).
#
#   bash run/run_dist_cos.sh DATA [extra run/train_dist.py flags...]
set -euo pipefail
OUT=${OUT:-work_dirs/mag_cosface} MARGIN_ARGS="--margin cos --l_margin 0.35 --u_margin 0.8 --lambda_g 150" \
    exec bash "$(dirname "${BASH_SOURCE[0]}")/run_dist.sh" "$@"
