#!/usr/bin/env bash
# The seed's quality evaluation (error-versus-reject curve), same command line: run it in this folder
# (or any folder beside an eval_recognition/ that holds features/ and data/), after eval_recognition/eval.sh.
#
# usage: ./eval_quality.sh DATA [SUFFIX] [NL]     e.g.  ./eval_quality.sh lfw
#   python -m eval.quality (eval_quality.py) --feat-list
#     ../eval_recognition/features/magface_${ARCH}/${DATA}_${SUFFIX:-official}.list
#     --pair-list ../eval_recognition/data/${DATA}/pair.list
#   ARCH: the folder eval.sh wrote for DATA and SUFFIX (eval.sh names it after the checkpoint's arch); when
#   features of several archs are there, NL picks one (as in eval.sh: 100 -> iresnet100, 18_w32, mobilefacenet).
#   FNMR at FMR 1e-3 against the ratio of rejected pairs, for the magnitude, random and (when the images
#   are found) sharpness qualities; a row that too few remaining pairs leave undefined prints nan, and a
#   note line under the table says which rows and why. SUFFIX and NL are additions: the seed fixes them to
#   official and 100.
#   PYTHON        interpreter (default: the repository's .venv, else python3)
#   QUALITY_ARGS  extra eval.quality flags, e.g. "--fmr 1e-2 --plot erc.png" (a pair list too small for
#                 FMR 1e-3 is an error)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # REPO, PYTHON, PYTHONPATH, print_header, feature_folders

if [[ $# -lt 1 || $# -gt 3 || "$1" == -h || "$1" == --help ]]; then
  print_header "${BASH_SOURCE[0]}"
  [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]] && exit 0
  exit 2
fi
DATA=$1 NAME=${2:-official} NL=${3:-}
FEATURES=../eval_recognition/features
if [[ -n "$NL" ]]; then
  if [[ "$NL" =~ ^[0-9] ]]; then folder=magface_iresnet$NL; else folder=magface_$NL; fi
else
  mapfile -t folders < <(feature_folders "$FEATURES" "$DATA" "$NAME")
  if [[ ${#folders[@]} -eq 0 ]]; then
    echo "eval_quality.sh: no $FEATURES/magface_*/${DATA}_${NAME}.list in $(pwd): run eval_recognition/eval.sh" \
         "CKPT $NAME first" >&2
    exit 2
  fi
  if [[ ${#folders[@]} -gt 1 ]]; then
    nls=()
    for f in "${folders[@]}"; do f=${f#magface_}; nls+=("${f#iresnet}"); done
    echo "eval_quality.sh: ${DATA}_${NAME}.list of several models in $FEATURES (${folders[*]}): pass NL, one" \
         "of ${nls[*]} (e.g. ./eval_quality.sh $DATA $NAME ${nls[0]})" >&2
    exit 2
  fi
  folder=${folders[0]}
fi

echo "evaluate $DATA"
# shellcheck disable=SC2086  # QUALITY_ARGS is a list of flags
exec "$PYTHON" -m eval.quality \
  --feat-list "$FEATURES/$folder/${DATA}_${NAME}.list" \
  --pair-list "../eval_recognition/data/${DATA}/pair.list" \
  --model-name "${folder#magface_} (features $folder/${DATA}_${NAME}.list)" --data-name "$DATA pair.list" \
  ${QUALITY_ARGS:-}
