#!/usr/bin/env bash
# Verification accuracy of one checkpoint on every insightface .bin set (lfw, cfp_fp, agedb_30, ...)
# found in a folder: one JSON per set, then a summary table.
#
# usage: eval/eval.sh CKPT [ARCH] [--data-dir DIR] [--out DIR] [--protocol magface|insightface]
#                     [--flip] [--device DEV] [--dtype fp32|bf16|fp16] [--batch-size N]
#                     [--input-convention NAME]
#   ARCH        default: the checkpoint's recorded arch; given (a name, or the seed's depth suffix: 100), it
#               must agree with the checkpoint (one line naming the right one otherwise, exit 2)
#   --data-dir  folder searched for *.bin (default: eval/data of this repository)
#   --out       folder of the JSON reports (default: eval_<checkpoint name> beside the checkpoint; one this run
#               made is removed again when no report lands in it)
#   PYTHON      interpreter to use (default: the repository's .venv, else python3)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # REPO, PYTHON, PYTHONPATH, print_header, make_dir

usage() { print_header "${BASH_SOURCE[0]}"; }

CKPT="" ARCH="" DATA_DIR="$REPO/eval/data" OUT="" EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --data-dir) DATA_DIR="${2:?--data-dir needs a folder}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --protocol|--device|--dtype|--batch-size|--input-convention) EXTRA+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --flip) EXTRA+=("$1"); shift ;;
    -*) echo "eval.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      if [[ -z "$CKPT" ]]; then CKPT="$1"
      elif [[ -z "$ARCH" ]]; then ARCH="$1"
      else echo "eval.sh: unexpected argument $1" >&2; exit 2
      fi
      shift ;;
  esac
done

if [[ -z "$CKPT" ]]; then usage >&2; exit 2; fi
if [[ ! -f "$CKPT" ]]; then echo "eval.sh: checkpoint not found: $CKPT" >&2; exit 2; fi
if [[ ! -d "$DATA_DIR" ]]; then echo "eval.sh: data folder not found: $DATA_DIR" >&2; exit 2; fi

shopt -s nullglob
BINS=("$DATA_DIR"/*.bin)
if [[ ${#BINS[@]} -eq 0 ]]; then
  echo "eval.sh: no .bin verification sets in $DATA_DIR (expected e.g. lfw.bin, cfp_fp.bin, agedb_30.bin;" \
       "pass --data-dir)" >&2
  exit 2
fi

found=$("$PYTHON" -m eval.checkpoint_arch --prog eval.sh "$CKPT" ${ARCH:+"$ARCH"}) || exit 2
read -r ARCH _ <<<"$found"

if [[ -z "$OUT" ]]; then
  name="$(basename "$CKPT")"
  OUT="$(dirname "$CKPT")/eval_${name%.*}"
fi
make_dir "$OUT"

failed=0
JSONS=()
for bin in "${BINS[@]}"; do
  set_name="$(basename "$bin" .bin)"
  echo "== $set_name"
  args=(--bin "$bin" --resume "$CKPT" --arch "$ARCH" --json "$OUT/$set_name.json")
  if "$PYTHON" -m eval.verification "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}; then
    JSONS+=("$OUT/$set_name.json")
  else
    echo "eval.sh: $set_name failed" >&2
    failed=$((failed + 1))
  fi
done

echo
if [[ ${#JSONS[@]} -eq 0 ]]; then
  echo "Summary ($CKPT, $ARCH): no set evaluated"
else
  echo "Summary ($CKPT, $ARCH), reports in $OUT"
  "$PYTHON" - "${JSONS[@]}" <<'EOF'
import json
import sys

from utils.table import format_table

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        r = json.load(f)
    rows.append([r["set"], r["protocol"], r["num_pairs"], f"{100 * r['accuracy_mean']:.2f}",
                 f"{100 * r['accuracy_std']:.2f}", f"{r['threshold']:.4f}"])
print(format_table(["set", "protocol", "pairs", "accuracy %", "std %", "threshold"], rows))
EOF
fi
if [[ $failed -gt 0 ]]; then
  echo "eval.sh: $failed set(s) failed" >&2
  exit 1
fi
