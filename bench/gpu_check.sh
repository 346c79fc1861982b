#!/usr/bin/env bash
# One prepared GPU check (H100/H200, ~16 cores): training-step throughput of the real trainer and
# gen_feat end to end. Expected runtime 4-7 minutes; every command has its own time limit, so the
# whole script stays under ~9 minutes even when one of them hangs. Run from the repository root:
#     bash bench/gpu_check.sh            # results (JSON + log) under $OUT if set, else ./gpu_check_out
set -uo pipefail

NAME=gpu_check
# shellcheck source=bench/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

COMMON=(--batch-size 256 --classes 85742 --steps 30 --warmup 5 --workers 12 --channels-last on)
# Most important first, so a run cut short keeps the headline rows.
# r50 compiled: the RecordIO loader (JPEG decode in 12 workers), then pre-decoded tensors.
step train_r50_compiled 200 "$PY" -m bench.bench_train --archs iresnet50 --amp bf16 --compile on \
    --data rec,tensor "${COMMON[@]}" --json "$DEST/bench_train_r50_compile.json"
# eager rows: bf16 (what compile buys) and fp16 (insightface arcface_torch's setting).
step train_r50_eager 80 "$PY" -m bench.bench_train --archs iresnet50 --amp bf16,fp16 --compile off \
    --data tensor "${COMMON[@]}" --json "$DEST/bench_train_r50_eager.json"
step gen_feat 60 "$PY" -m bench.bench_gen_feat --arch iresnet50 --limit 3000 --dtypes fp32,bf16 \
    --batch-size 256 --baseline-batch 256 --json "$DEST/bench_gen_feat_gpu.json"
step train_r100_compiled 180 "$PY" -m bench.bench_train --archs iresnet100 --amp bf16 --compile on \
    --data rec "${COMMON[@]}" --json "$DEST/bench_train_r100_compile.json"

echo "=== done in ${SECONDS}s; results in $DEST" | tee -a "$LOG"
exit $status
