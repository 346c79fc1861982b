# Sourced (without arguments) by run.sh and run_dist.sh: the part of their command line they share.
# Sets REPO, DATA (first argument unless it is a flag, else $DATA), SOURCE (--rec DIR or --train_list
# FILE) and PYTHON (.venv's if present, else python3), and shifts DATA off the caller's arguments.
# --help, or no or missing data: the calling script's header comment as usage, exit 2.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=$(basename "$0")
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2; }
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then DATA=$1; shift; fi
case "${1:-}" in -h|--help) usage ;; esac
[ -n "${DATA:-}" ] || { echo "$NAME: no training data given" >&2; usage; }
[ -e "$DATA" ] || { echo "$NAME: training data $DATA does not exist" >&2; exit 2; }
if [ -d "$DATA" ]; then SOURCE=(--rec "$DATA"); else SOURCE=(--train_list "$DATA"); fi
[ -x "$REPO/.venv/bin/python" ] && PYTHON=${PYTHON:-$REPO/.venv/bin/python} || PYTHON=${PYTHON:-python3}
