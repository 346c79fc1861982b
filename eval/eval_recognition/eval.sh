#!/usr/bin/env bash
# The seed's 1:1 evaluation on LFW, CFP-FP and AgeDB-30, same command line and data layout.
# Run it in a folder holding data/{lfw,cfp,agedb}/{img.list,pair.list} (like the seed: in this one).
#
# usage: ./eval.sh CKPT [SUFFIX] [NL]    e.g.  ./eval.sh magface_epoch_00025.pth official
#   ARCH: the backbone the checkpoint records (its "arch"; a bare state dict: the one its weights fit), so
#   any of our checkpoints works as it is. NL, the seed's third argument, is still accepted: the iresnet
#   depth suffix (100 -> iresnet100, 18_w32 -> iresnet18_w32) or a backbone name (mobilefacenet); one that
#   disagrees with the checkpoint is a one-line error naming the right one (exit 2). SUFFIX: official.
#   1. gen_feat --arch ARCH --batch_size 256 on data/${set}/img.list
#      -> features/magface_${ARCH}/${set}_${SUFFIX}.list (the seed's text feature format and folder)
#   2. python -m eval.verification (eval_1v1.py) with data/${set}/pair.list: MagFace protocol, 10 folds,
#      "Accuracy: mean+-std" as the seed prints it.
#   A set whose img.list is absent is skipped with a line; exit 1 when a step fails, 2 when no set is found
#   or the checkpoint cannot be used. A features folder that a failed run made and left empty is removed.
#   PYTHON          interpreter (default: the repository's .venv, else python3)
#   GEN_FEAT_ARGS   extra gen_feat flags, e.g. "--cpu-mode --dtype bf16"
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # REPO, PYTHON, PYTHONPATH, print_header, seed_*

seed_args "${BASH_SOURCE[0]}" "$@"

found=0 failed=0
for set in lfw cfp agedb; do
  seed_list eval.sh "data/$set/img.list" "$set" || continue
  found=$((found + 1))
  feats="$FEAT_PATH/${set}_${FEAT_SUFFIX}.list"
  seed_gen_feat eval.sh "$set" "data/$set/img.list" "$feats" || { failed=$((failed + 1)); continue; }
  echo "evaluate $set"
  "$PYTHON" -m eval.verification --feat-list "$feats" --pair-list "data/$set/pair.list" || failed=$((failed + 1))
done
seed_finish eval.sh "$found" "$failed" "data/{lfw,cfp,agedb}/img.list"
