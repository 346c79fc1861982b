#!/usr/bin/env bash
# One prepared GPU check of the training levers of issue #15 (H100/H200, ~16 cores): img/s and peak
# memory of each lever on the real training step (RecordIO loader, batch 256, 85,742 classes, bf16,
# compile), the first 200 losses of the baseline and the fastest lever, and the largest class count
# that fits at batch 256 for each head. Expected runtime 6-7 minutes; each step has its own time limit,
# so the whole script stays under 8.2 minutes even when one hangs. ONLY="step names" runs a subset.
# Run from the repository root:
#     bash bench/gpu_speed.sh            # results (JSON + log) under $OUT if set, else ./gpu_check_out
set -uo pipefail

NAME=gpu_speed
# shellcheck source=bench/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

COMMON=(--batch-size 256 --classes 85742 --amp bf16 --compile on --workers 12 --steps 20 --warmup 3)
# Most important first, so a run cut short keeps the headline rows (each JSON is rewritten after every row).
# Each compile mode costs one cold torch.compile (~45 s r50, ~75 s r100); the head levers reuse the cache.
step r50_levers_curve 200 "$PY" -m bench.gpu_speed --parts levers,curve --archs iresnet50 \
    --levers baseline,cudagraphs,fused_head,cudagraphs_fused --curve-steps 200 "${COMMON[@]}" \
    --json "$DEST/gpu_speed_r50.json"
# eager backbone for the search: no compile to wait for; its activations take ~2 GB more than compiled ones
step fit_r50 100 "$PY" -m bench.gpu_speed --parts fit --fit-archs iresnet50 "${COMMON[@]}" --compile off \
    --json "$DEST/gpu_speed_fit_r50.json"
# r100: the lever expected to be fastest, against the recorded baseline (3,778 img/s, results/h200_2026-11-27)
step r100_levers 110 "$PY" -m bench.gpu_speed --parts levers --archs iresnet100 --levers cudagraphs_fused \
    "${COMMON[@]}" --json "$DEST/gpu_speed_r100.json"
step r50_batch2x 80 "$PY" -m bench.gpu_speed --parts levers --archs iresnet50 --levers batch2x "${COMMON[@]}" \
    --json "$DEST/gpu_speed_r50_batch2x.json"

echo "=== done in ${SECONDS}s; results in $DEST" | tee -a "$LOG"
exit $status
