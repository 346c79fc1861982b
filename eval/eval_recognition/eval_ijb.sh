#!/usr/bin/env bash
# The seed's IJB-B / IJB-C 1:1 evaluation, same command line and data layout.
# Run it in a folder holding data/IJBB/meta and data/IJBC/meta (insightface's meta files plus img.list).
#
# usage: ./eval_ijb.sh CKPT [SUFFIX] [NL]     e.g.  ./eval_ijb.sh magface_epoch_00025.pth official
#   ARCH and NL as in eval.sh: the checkpoint's recorded arch; NL (100, 18_w32, mobilefacenet), when given,
#   must agree with it. SUFFIX: official.
#   1. gen_feat --arch ARCH --batch_size 256 on data/IJB${x}/meta/img.list
#      -> features/magface_${ARCH}/ijb${x}_${SUFFIX}.list (rows in ijb${x}_face_tid_mid.txt order)
#   2. python -m eval.ijb (eval_ijb.py) --base_dir data/IJB${X}/ --type ${x} --embedding_size D (the
#      checkpoint's; the seed fixed 512):
#      TAR at FAR 1e-6 ... 1e-1.
#   A set whose img.list is absent is skipped with a line; exit 1 when a step fails, 2 when no set is found
#   or the checkpoint cannot be used. A features folder that a failed run made and left empty is removed.
#   PYTHON          interpreter (default: the repository's .venv, else python3)
#   GEN_FEAT_ARGS   extra gen_feat flags, e.g. "--cpu-mode --dtype bf16"
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # REPO, PYTHON, PYTHONPATH, print_header, seed_*

seed_args "${BASH_SOURCE[0]}" "$@"

found=0 failed=0
for kind in b c; do
  base="data/IJB${kind^^}"
  seed_list eval_ijb.sh "$base/meta/img.list" "IJB-${kind^^}" || continue
  found=$((found + 1))
  feats="$FEAT_PATH/ijb${kind}_${FEAT_SUFFIX}.list"
  seed_gen_feat eval_ijb.sh "IJB-${kind^^}" "$base/meta/img.list" "$feats" || { failed=$((failed + 1)); continue; }
  echo "evaluate ijb$kind"
  "$PYTHON" -m eval.ijb --feat_list "$feats" --base_dir "$base/" --type "$kind" --embedding_size "$EMBEDDING_SIZE" \
    || failed=$((failed + 1))
done
seed_finish eval_ijb.sh "$found" "$failed" "data/IJBB/meta/img.list or data/IJBC/meta/img.list"
