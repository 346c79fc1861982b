"""Helpers shared by the training tests (no tests here): small real-face lists, launch and compare. Plain
functions rather than fixtures: tests call them with arguments, from module-level helpers and from the worker
functions of spawned processes, where no fixture exists. The fixtures are in conftest.py.

Training tests use a narrow iResNet (iresnet18_w16) at a 56-pixel working resolution (the model
downsamples the 112x112 faces itself) and a few identities, so that a step costs a fraction of a
second on a 2-core CPU.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ARCH = "iresnet18_w16"
INPUT_SIZE = 56


def write_list(celeba_dir: Path, out: Path, identities: int, per_identity: int) -> Path:
    """A train list of the first ``per_identity`` faces of identities 0..identities-1 (absolute paths)."""
    seen: dict[int, int] = {}
    lines = []
    for line in (celeba_dir / "train.list").read_text().splitlines():
        rel, _, label, _ = line.split()
        label = int(label)
        if label < identities and seen.get(label, 0) < per_identity:
            seen[label] = seen.get(label, 0) + 1
            lines.append(f"{celeba_dir / rel} 0 {label} 0")
    out.write_text("\n".join(lines) + "\n")
    return out


def train_args(train_list: Path, out_dir: Path, classes: int, batch: int = 8, epochs: int = 2,
               extra: tuple[str, ...] = ()) -> list[str]:
    """Arguments of a small deterministic CPU run."""
    return ["--arch", ARCH, "--embedding-size", "64", "--input-size", str(INPUT_SIZE),
            "--train_list", str(train_list), "--last-fc-size", str(classes), "--batch-size", str(batch),
            "--epochs", str(epochs), "--workers", "0", "--device", "cpu", "--deterministic", "--seed", "3",
            "--print-freq", "1", "--tensorboard", "0", "--pth-save-fold", str(out_dir), *extra]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a training subprocess: the repo importable, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGFACE_FAULT_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_python(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repo root; stdout and stderr together in ``.stdout``."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def train_module(entry: str, faults: bool) -> list[str]:
    """``-m ENTRY`` (run.train, run.train_dist), or the same under tests/fault_launch.py when ``faults``: the
    MAGFACE_FAULT_* variables of the child's environment then act."""
    return ["-m", "tests.fault_launch", entry] if faults else ["-m", entry]


def torchrun(nproc: int, module_args: list[str], timeout: float, env: dict[str, str] | None = None,
             max_restarts: int = 0, faults: bool = False) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "--max-restarts", str(max_restarts), "--monitor-interval", "0.5"]
    return run_python([*launcher, *train_module("run.train_dist", faults), *module_args], timeout, env)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    """Every backbone tensor (parameters and BN statistics) and the head are bit-identical."""
    sa, sb = state_dict_of(a), state_dict_of(b)
    assert sorted(sa) == sorted(sb)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ between {a} and {b}, e.g. {differ[:4]}"


def head_step(head: torch.nn.Module, weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> tuple:
    """One forward and backward of a classifier head with its weight set to ``weight``: (outputs, gradient of the
    embeddings, gradient of the weight), for comparing heads (dense, sharded, sampled) on the same inputs."""
    with torch.no_grad():
        head.weight.copy_(weight)
    x = emb.clone().requires_grad_(True)
    out = head(x, labels)
    out["loss"].backward()
    return out, x.grad, head.weight.grad
