#!/usr/bin/env bash
# One prepared GPU check of the training levers of issue #15 (H100/H200, ~16 cores): img/s and peak
# memory of each lever on the real training step (RecordIO loader, batch 256, 85,742 classes, bf16,
# compile), the first 200 losses of the baseline and the fastest lever, and the largest class count
# that fits at batch 256 for each head. Expected runtime 5-7 minutes; each step has its own time limit,
# so the whole script stays under 8 minutes even when one hangs. Run from the repository root:
#     bash bench/gpu_speed.sh            # results (JSON + log) under $OUT if set, else ./gpu_check_out
set -uo pipefail

NAME=gpu_speed
# shellcheck source=bench/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

COMMON=(--batch-size 256 --classes 85742 --amp bf16 --compile on --workers 12 --steps 20 --warmup 3)
# Most important first, so a run cut short keeps the headline rows (each JSON is rewritten after every row).
step r50_levers_curve 240 "$PY" -m bench.gpu_speed --parts levers,curve --archs iresnet50 \
    --levers baseline,cudagraphs,fused_head,cudagraphs_fused,batch2x --curve-steps 200 "${COMMON[@]}" \
    --json "$DEST/gpu_speed_r50.json"
step fit_r50 100 "$PY" -m bench.gpu_speed --parts fit --fit-archs iresnet50 "${COMMON[@]}" \
    --json "$DEST/gpu_speed_fit_r50.json"
step r100_levers 140 "$PY" -m bench.gpu_speed --parts levers --archs iresnet100 \
    --levers baseline,cudagraphs_fused "${COMMON[@]}" --json "$DEST/gpu_speed_r100.json"

echo "=== done in ${SECONDS}s; results in $DEST" | tee -a "$LOG"
exit $status
