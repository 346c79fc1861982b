#!/usr/bin/env bash
# The seed's IJB-B / IJB-C 1:1 evaluation, same command line and data layout.
# Run it in a folder holding data/IJBB/meta and data/IJBC/meta (insightface's meta files plus img.list).
#
# usage: ./eval_ijb.sh CKPT SUFFIX NL     e.g.  ./eval_ijb.sh magface_epoch_00025.pth official 100
#   1. gen_feat --arch iresnet${NL} --batch_size 256 on data/IJB${x}/meta/img.list
#      -> features/magface_iresnet${NL}/ijb${x}_${SUFFIX}.list (rows in ijb${x}_face_tid_mid.txt order)
#   2. python -m eval.ijb (eval_ijb.py) --base_dir data/IJB${X}/ --type ${x} --embedding_size 512:
#      TAR at FAR 1e-6 ... 1e-1.
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
for kind in b c; do
  base="data/IJB${kind^^}"
  if [[ ! -f $base/meta/img.list ]]; then
    echo "eval_ijb.sh: $base/meta/img.list not found in $(pwd); IJB-${kind^^} skipped" >&2
    continue
  fi
  found=$((found + 1))
  mkdir -p "$FEAT_PATH"
  feats="$FEAT_PATH/ijb${kind}_${FEAT_SUFFIX}.list"
  # shellcheck disable=SC2086  # GEN_FEAT_ARGS is a list of flags
  if ! "$PYTHON" -m inference.gen_feat --arch "$ARCH" --inf_list "$base/meta/img.list" --feat_list "$feats" \
      --batch_size 256 --resume "$CKPT" ${GEN_FEAT_ARGS:-}; then
    echo "eval_ijb.sh: gen_feat failed on IJB-${kind^^}" >&2
    failed=$((failed + 1))
    continue
  fi
  echo "evaluate ijb$kind"
  if ! "$PYTHON" -m eval.ijb --feat_list "$feats" --base_dir "$base/" --type "$kind" --embedding_size 512; then
    echo "eval_ijb.sh: IJB-${kind^^} evaluation failed" >&2
    failed=$((failed + 1))
  fi
done

if [[ $found -eq 0 ]]; then
  echo "eval_ijb.sh: no data/IJBB/meta/img.list or data/IJBC/meta/img.list in $(pwd)" >&2
  exit 2
fi
[[ $failed -eq 0 ]] || { echo "eval_ijb.sh: $failed step(s) failed" >&2; exit 1; }
