"""torch.distributed helpers: process-group setup from torchrun's environment, barriers, object broadcast.

Every helper also works without a process group (a plain single-process run), so library code can
call them unconditionally. Nothing happens at import: the process group is created only by
``init_distributed``.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

_ENV_INT_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global and local rank, the world size and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """--device value -> torch.device: "auto" is the GPU when there is one; a bare "cuda" is this
    process's GPU (``local_rank``), made the current device. Names the flag when CUDA is missing."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def default_backend(device_type: str | None = None) -> str:
    """nccl for CUDA devices when CUDA is available, gloo otherwise."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"


def init_distributed(
    backend: str | None = None, timeout_s: float = 1800.0, device_type: str | None = None
) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without WORLD_SIZE in the environment this is a single-process run: no group is created and the
    returned info says rank 0 of 1. With nccl the CUDA device of this process is set to LOCAL_RANK.
    """
    if dist.is_available() and dist.is_initialized():  # joined already: where this process stands in that group
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    if "WORLD_SIZE" not in os.environ:
        return DistInfo()
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", default=rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"environment variable RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(f"environment variable {key} is not set (launch with torchrun)")
    backend = backend or default_backend(device_type)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        store=attempt_store(rank, world_size, timeout),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    return DistInfo(rank, world_size, local_rank, backend)


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The env:// rendezvous store, its keys prefixed with torchrun's restart count.

    torchrun's static rendezvous (``--master_addr/--master_port``, the multi-node set-up) keeps one
    TCPStore in the agent for the whole job, and torch does not prefix the workers' keys per attempt.
    After ``--max-restarts`` restarted the workers, the new ones read the dead workers' gloo addresses
    left in that store: rank 0 failed with "Connection refused" or waited forever. A prefix per attempt
    (``TORCHELASTIC_RESTART_COUNT``, the same on every rank of an attempt) gives each attempt a clean
    namespace; outside torchrun the count is 0.
    """
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", default=0)
    return dist.PrefixStore(f"magface/attempt_{attempt}", store)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a process that has finished its distributed work without running C++ static destructors.

    After a finished gloo run, the teardown at interpreter exit sometimes aborts the process
    ("terminate called without an active exception", SIGABRT; seen on loaded 2-core machines, cause
    inside torch/gloo not established), which torchrun or mp.spawn then report as a failed rank. Call this
    only when everything is written: checkpoints are atomic and fsynced; logs and streams are flushed here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable object on every rank (the object itself without a process group)."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
