# Sourced by the GPU check scripts after they set NAME (the log's name). Sets PY (.venv's python, else
# python3), DEST ($OUT when set, else ./gpu_check_out) and LOG, stops with exit 2 when PY has no CUDA,
# and defines `step NAME LIMIT_S CMD...`: CMD runs under a time limit, its output is appended to
# $LOG, and a failure sets status=1 without stopping the commands after it. ONLY="NAME ..." runs just
# the steps named.
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${OUT:-gpu_check_out}
mkdir -p "$DEST"
LOG="$DEST/$NAME.log"
: > "$LOG"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "$NAME: CUDA is not available to $PY (no GPU, driver or CUDA build of torch); nothing run." | tee -a "$LOG" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
nproc | sed 's/^/cores: /' | tee -a "$LOG"

status=0
step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        echo "=== $name: skipped (not in ONLY=$ONLY)" | tee -a "$LOG"
        return 0
    fi
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}
