# Sourced by the eval shell scripts: REPO (this checkout), PYTHON (the interpreter), PYTHONPATH, print_header
# FILE (the script's leading comment block, for --help), make_dir (folders removed at exit while still empty)
# and the seed scripts' steps.
# PYTHON from the environment wins; else the repository's .venv; else python3 on the PATH.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

print_header() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }

# make_dir DIR: mkdir -p DIR, remembering the folders it made; at exit (also on Ctrl-C or a kill) those that are
# still empty are removed, so a failed run leaves no empty features/ or report folder behind
MADE_DIRS=()
make_dir() {
  local d=$1 new=()
  while [[ ! -d "$d" ]]; do new=("$d" ${new[@]+"${new[@]}"}); d=$(dirname "$d"); done
  mkdir -p "$1" || return 1
  MADE_DIRS+=(${new[@]+"${new[@]}"})
}
remove_empty_made_dirs() {
  local i
  for ((i = ${#MADE_DIRS[@]} - 1; i >= 0; i--)); do rmdir "${MADE_DIRS[i]}" 2>/dev/null || true; done
  return 0
}
trap remove_empty_made_dirs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The seed scripts' shared steps (eval_recognition/eval.sh, eval_ijb.sh). Each returns non-zero on failure.
# seed_list PROG LIST NAME: is LIST there? else one line saying NAME is skipped
seed_list() {
  [[ -f "$2" ]] && return 0
  echo "$1: $2 not found in $(pwd); $3 skipped" >&2
  return 1
}

# seed_gen_feat PROG NAME LIST FEATS: features as the seed's scripts make them (--arch $ARCH, batch 256,
# --resume $CKPT) plus $GEN_FEAT_ARGS; a line naming NAME when it fails
seed_gen_feat() {
  make_dir "$(dirname "$4")" || return 1
  # shellcheck disable=SC2086  # GEN_FEAT_ARGS is a list of flags
  "$PYTHON" -m inference.gen_feat --arch "$ARCH" --inf_list "$3" --feat_list "$4" --batch_size 256 \
    --resume "$CKPT" ${GEN_FEAT_ARGS:-} && return 0
  echo "$1: gen_feat failed on $2" >&2
  return 1
}

# seed_finish PROG FOUND FAILED WHAT: the exit status: 2 when no set was found, 1 when a step failed
seed_finish() {
  if [[ $2 -eq 0 ]]; then
    echo "$1: no $4 in $(pwd) (run it in the folder holding data/)" >&2
    return 2
  fi
  [[ $3 -eq 0 ]] || { echo "$1: $3 step(s) failed" >&2; return 1; }
}

# seed_args SCRIPT CKPT [SUFFIX] [NL]: sets CKPT, FEAT_SUFFIX (default official), ARCH, EMBEDDING_SIZE and
# FEAT_PATH=./features/magface_$ARCH. ARCH is the checkpoint's recorded arch (eval.checkpoint_arch); NL (the
# seed's iresnet depth suffix, or a backbone name) may name it too, and one that disagrees with the checkpoint
# is a one-line error (exit 2), as is a checkpoint that cannot be read. -h/--help prints the script's header
# (exit 0), another argument count prints it to stderr (exit 2)
seed_args() {
  local script=$1
  shift
  if [[ $# -eq 1 && ( "$1" == -h || "$1" == --help ) ]]; then print_header "$script"; exit 0; fi
  if [[ $# -lt 1 || $# -gt 3 ]]; then print_header "$script" >&2; exit 2; fi
  CKPT=$1 FEAT_SUFFIX=${2:-official}
  local found
  found=$("$PYTHON" -m eval.checkpoint_arch --prog "$(basename "$script")" "$CKPT" ${3:+"$3"}) || exit 2
  read -r ARCH EMBEDDING_SIZE <<<"$found"
  FEAT_PATH=./features/magface_${ARCH}
}

# feature_folders ROOT DATA SUFFIX: the magface_* folders under ROOT holding DATA_SUFFIX.list (eval.sh's output)
feature_folders() {
  local f
  for f in "$1"/magface_*/"$2_$3.list"; do [[ -f "$f" ]] && basename "$(dirname "$f")"; done
  return 0
}
