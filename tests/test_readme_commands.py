"""The README's commands run as written (issue 27).

Two kinds of command blocks: ```bash (and ```python) blocks run as written in a clone (after the two set-up
commands, inside the environment), so this test runs every one of them, in order, from the root of a copy of
the repository;
```sh blocks are templates on the user's own data (CKPT, /data/...) or the set-up itself, so for those the test
checks that every flag they pass exists in the named command's ``--help``.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(bash|sh|python)\n(.*?)^```", re.S | re.M)
LEFT_OUT = {".git", ".venv", "work_dirs", "demo_out", "__pycache__", ".pytest_cache", ".ruff_cache"}


def commands(kind: str) -> list[str]:
    """The commands of the README's ``kind`` blocks, continuation lines joined, comment-only lines dropped."""
    found = []
    for block_kind, body in BLOCK.findall(README.read_text()):
        if block_kind != kind:
            continue
        for command in body.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                found.append(command.strip())
    return found


def test_the_readme_has_runnable_commands():
    assert len(commands("bash")) >= 20 and len(commands("sh")) >= 5


def _copy_of_the_repository(dest: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in LEFT_OUT or n.endswith(".pyc")}

    return Path(shutil.copytree(REPO, dest / "clone", ignore=ignore))


@pytest.mark.slow
def test_every_bash_block_runs_as_written(tmp_path):
    clone = _copy_of_the_repository(tmp_path)
    bin_dir = str(Path(sys.executable).parent)  # what `source .venv/bin/activate` puts first on PATH
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGFACE_", "PYTHON"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    for command in commands("bash"):
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        assert done.returncode == 0, f"README command failed ({done.returncode}): {command}\n{done.stdout[-3000:]}"
    snippet = "\n".join(commands("python"))  # the README's Python lines, as one script
    done = subprocess.run(["python", "-c", snippet], cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, f"README Python snippet failed:\n{snippet}\n{done.stdout[-3000:]}"


def _python_command(words: list[str]) -> list[str] | None:
    """``python -m MOD`` / ``python FILE.py`` at the start of ``words`` (after VAR=value words), else None."""
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if len(words) >= 3 and words[0] == "python" and words[1] == "-m":
        return words[:3]
    if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
        return words[:2]
    return None


def test_template_commands_use_existing_flags():
    helps: dict[tuple[str, ...], str] = {}
    checked = 0
    for command in commands("sh"):
        words = shlex.split(command, comments=True)
        head = _python_command(words)
        if head is None:
            continue
        key = tuple(head)
        if key not in helps:
            done = subprocess.run([sys.executable, *head[1:], "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-2000:]
            helps[key] = done.stdout
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", helps[key]), f"{' '.join(head)} has no {flag}: {command}"
        checked += 1
    assert checked >= 1
