#!/usr/bin/env bash
# One prepared GPU check of the training and evaluation commands themselves (not the benchmarks), on the
# faces bundled in raw/demo_data, so it needs nothing but the repository. Expected runtime 3-5 minutes.
#   1. run/run.sh: iresnet50, fp16 autocast (the seed's "NaN, help needed" setting), published lr 0.1,
#      compile and channels-last on by default on GPU; must finish without a skipped non-finite step.
#   2. run/run_dist.sh under torchrun (NCCL, the class-sharded head), one process, then a second
#      invocation that resumes from last.pth and trains one more epoch.
#   3. --bin evaluation (eval.bin_io packs the bundled LFW pairs) against gen_feat + --feat-list.
#   4. run/demo.sh's pipeline (python -m run.demo) on the GPU with iresnet50 at 112x112: train, gen_feat,
#      10-fold verification on 2,400 held-out LFW pairs, error-versus-reject curve.
# Run from the repository root:  bash bench/gpu_smoke.sh   (logs and JSON under $OUT, else ./gpu_check_out;
# ONLY="step names" runs a subset, e.g. ONLY="run_dist_nccl run_dist_resume pack_bin bin_eval feat_eval")
set -uo pipefail
NAME=gpu_smoke
# shellcheck source=bench/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
export PYTHON=$PY PYTHONUNBUFFERED=1
LIST=raw/demo_data/celeba/train.list
WORK=${WORK:-/tmp/magface_gpu_smoke}
rm -rf "$WORK"

SMALL=(--arch iresnet50 --last-fc-size 253 --batch-size 256 --workers 8 --print-freq 5)
OUT="$WORK/fp16" step run_sh_fp16 150 bash run/run.sh "$LIST" "${SMALL[@]}" --epochs 3 --amp fp16
OUT="$WORK/dist" MAX_RESTARTS=0 NPROC=1 MASTER_PORT=29631 step run_dist_nccl 90 bash run/run_dist.sh "$LIST" \
    "${SMALL[@]}" --epochs 1 --amp bf16 --compile off
OUT="$WORK/dist" MAX_RESTARTS=0 NPROC=1 MASTER_PORT=29632 step run_dist_resume 90 bash run/run_dist.sh "$LIST" \
    "${SMALL[@]}" --epochs 2 --amp bf16 --compile off
# .bin evaluation on the GPU = gen_feat + --feat-list on the same faces (the resumed distributed checkpoint).
step pack_bin 60 "$PY" -m eval.bin_io --img-list raw/demo_data/lfw/img.list --pair-list raw/demo_data/lfw/pair.list \
    --out "$WORK/lfw_demo.bin"
step bin_eval 90 "$PY" -m eval.verification --bin "$WORK/lfw_demo.bin" --resume "$WORK/dist/00002.pth" \
    --json "$DEST/bin_eval.json"
step feat_eval 90 bash -c "'$PY' -m inference.gen_feat --resume '$WORK/dist/00002.pth' --inf_list \
raw/demo_data/lfw/img.list --feat_list '$WORK/dist_lfw.npz' && '$PY' -m eval.verification --feat-list \
'$WORK/dist_lfw.npz' --pair-list raw/demo_data/lfw/pair.list --json '$DEST/feat_eval.json'"
step demo_gpu 180 "$PY" -m run.demo --out "$WORK/demo" --device cuda --arch iresnet50 --input-size 112 \
    --embedding-size 512 --epochs 6 --batch-size 128 --workers 8
cp "$WORK/demo/demo_summary.json" "$WORK/demo/erc.png" "$DEST"/ 2>/dev/null
grep -h "non-finite" "$LOG" | head -5 | sed 's/^/non-finite lines: /'
echo "=== done in ${SECONDS}s (status $status); logs in $DEST" | tee -a "$LOG"
exit $status
