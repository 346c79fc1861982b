#!/usr/bin/env bash
# The seed's quality evaluation (error-versus-reject curve), same command line: run it in this folder
# (or any folder beside an eval_recognition/ that holds features/ and data/), after eval_recognition/eval.sh.
#
# usage: ./eval_quality.sh DATA [SUFFIX] [NL]     e.g.  ./eval_quality.sh lfw
#   python -m eval.quality (eval_quality.py) --feat-list
#     ../eval_recognition/features/magface_iresnet${NL:-100}/${DATA}_${SUFFIX:-official}.list
#     --pair-list ../eval_recognition/data/${DATA}/pair.list
#   FNMR at FMR 1e-3 against the ratio of rejected pairs, for the magnitude, random and (when the images
#   are found) sharpness qualities. SUFFIX and NL are additions: the seed fixes them to official and 100.
#   PYTHON        interpreter (default: the repository's .venv, else python3)
#   QUALITY_ARGS  extra eval.quality flags, e.g. "--fmr 1e-2" (a pair list too small for FMR 1e-3 is an error)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # REPO, PYTHON, PYTHONPATH, print_header

if [[ $# -lt 1 || $# -gt 3 || "$1" == -h || "$1" == --help ]]; then
  print_header "${BASH_SOURCE[0]}"
  [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]] && exit 0
  exit 2
fi
DATA=$1 NAME=${2:-official} NL=${3:-100}

echo "evaluate $DATA"
# shellcheck disable=SC2086  # QUALITY_ARGS is a list of flags
exec "$PYTHON" -m eval.quality \
  --feat-list "../eval_recognition/features/magface_iresnet${NL}/${DATA}_${NAME}.list" \
  --pair-list "../eval_recognition/data/${DATA}/pair.list" ${QUALITY_ARGS:-}
