#!/usr/bin/env bash
# The seed's 1:1 evaluation on LFW, CFP-FP and AgeDB-30, same command line and data layout.
# Run it in a folder holding data/{lfw,cfp,agedb}/{img.list,pair.list} (like the seed: in this one).
#
# usage: ./eval.sh CKPT SUFFIX NL        e.g.  ./eval.sh magface_epoch_00025.pth official 100
#   1. gen_feat --arch iresnet${NL} --batch_size 256 on data/${set}/img.list
#      -> features/magface_iresnet${NL}/${set}_${SUFFIX}.list (the seed's text feature format)
#   2. python -m eval.verification (eval_1v1.py) with data/${set}/pair.list: MagFace protocol, 10 folds,
#      "Accuracy: mean+-std" as the seed prints it.
#   A set whose img.list is absent is skipped with a line; exit 1 when a step fails, 2 when no set is found.
#   PYTHON          interpreter (default: the repository's .venv, else python3)
#   GEN_FEAT_ARGS   extra gen_feat flags, e.g. "--cpu-mode --dtype bf16"
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # REPO, PYTHON, PYTHONPATH, print_header

if [[ $# -ne 3 || "$1" == -h || "$1" == --help ]]; then
  print_header "${BASH_SOURCE[0]}"
  [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]] && exit 0
  exit 2
fi
CKPT=$1 FEAT_SUFFIX=$2 NL=$3
ARCH=iresnet${NL}
FEAT_PATH=./features/magface_${ARCH}

found=0 failed=0
for set in lfw cfp agedb; do
  if [[ ! -f data/$set/img.list ]]; then
    echo "eval.sh: data/$set/img.list not found in $(pwd); $set skipped" >&2
    continue
  fi
  found=$((found + 1))
  mkdir -p "$FEAT_PATH"
  feats="$FEAT_PATH/${set}_${FEAT_SUFFIX}.list"
  # shellcheck disable=SC2086  # GEN_FEAT_ARGS is a list of flags
  if ! "$PYTHON" -m inference.gen_feat --arch "$ARCH" --inf_list "data/$set/img.list" --feat_list "$feats" \
      --batch_size 256 --resume "$CKPT" ${GEN_FEAT_ARGS:-}; then
    echo "eval.sh: gen_feat failed on $set" >&2
    failed=$((failed + 1))
    continue
  fi
  echo "evaluate $set"
  if ! "$PYTHON" -m eval.verification --feat-list "$feats" --pair-list "data/$set/pair.list"; then
    echo "eval.sh: verification failed on $set" >&2
    failed=$((failed + 1))
  fi
done

if [[ $found -eq 0 ]]; then
  echo "eval.sh: no data/{lfw,cfp,agedb}/img.list in $(pwd) (run it in the folder holding data/)" >&2
  exit 2
fi
[[ $failed -eq 0 ]] || { echo "eval.sh: $failed step(s) failed" >&2; exit 1; }
