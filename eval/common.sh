# Sourced by the eval shell scripts: REPO (this checkout), PYTHON (the interpreter), PYTHONPATH, and
# print_header FILE (the script's leading comment block, for --help).
# PYTHON from the environment wins; else the repository's .venv; else python3 on the PATH.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

print_header() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }
