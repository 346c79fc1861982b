"""Checkpoints: read the released MagFace / insightface files unchanged, write the released layout.

Written files follow the released MagFace layout, so the seed's own tools read them:
``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with keys ``module.features.<backbone key>`` and the
head as ``module.fc.weight`` of shape [embedding_size, num_classes]. Extra keys carry the resolved
config and the input convention. Every read uses ``torch.load(weights_only=True)``: a checkpoint can
never run code. Writes go to a temporary file that is renamed into place, so a crash mid-write leaves
the previous file intact.
"""
from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbones import build_backbone, canonical_arch
from models.iresnet import ARCHS
from utils.atomic import atomic_write
from utils.convention import MAGFACE, InputConvention

FORMAT_VERSION = 1
# Prefixes of backbone keys in the layouts we read, most specific first.
BACKBONE_PREFIXES = ("module.features.", "features.module.", "module.backbone.", "backbone.",
                     "features.", "module.")
HEAD_KEYS = ("module.fc.weight", "parallel_fc.weight")
# The first key of each backbone family: finds the wrapper prefix of a state dict.
ANCHOR_KEYS = ("conv1.weight", "stem.conv.weight")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint object: about the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (``utils.atomic.atomic_write``: temporary file, fsync, rename); a refused
    write (full disk, quota, file-size limit) is an OutputWriteError saying about how much room the file needs."""
    with atomic_write(path, "wb", expected_size=tensor_bytes(obj)) as f:
        torch.save(obj, f)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2 (the legacy torch.save format, plain pickles)


def _sniff(path: Path) -> None:
    """Reject at once what cannot be a checkpoint (text, images...): torch's own errors mislead there."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_ZIP_MAGIC) and head[:1] != bytes([_PICKLE_PROTO]):
        raise ValueError(
            f"checkpoint {path} is not a PyTorch checkpoint (it starts with {head!r}, neither a zip archive "
            f"nor a pickle): a text file, an image, or the wrong path?"
        )


def _unsupported(message: str) -> str:
    """The 'Unsupported global ...' / 'Unsupported operand ...' line of a weights_only refusal, or ''."""
    for line in message.splitlines():
        if "Unsupported" in line:
            return line.strip().removeprefix("WeightsUnpickler error:").strip()
    return ""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint safely; truncated, foreign or code-carrying files get a clear ValueError.

    ``mmap``: map the tensors instead of reading them (zip-format files only, i.e. everything this project and
    torch >= 1.6 write): cheap when only the metadata (config, input convention) is wanted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    _sniff(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = _unsupported(str(e))
        if detail.startswith("Unsupported global"):
            raise ValueError(
                f"checkpoint {path} holds Python objects other than tensors, numbers, strings and "
                f"containers; refusing to unpickle them because that could run code. Re-save it as a "
                f"plain state dict. Details: {detail}"
            ) from None
        raise ValueError(
            f"checkpoint {path} could not be read (truncated, corrupt, or a plain pickle rather than a "
            f"torch.save file): {detail or str(e).splitlines()[0][:200]}"
        ) from None
    except Exception as e:  # torch.load raises anything on foreign bytes (KeyError, IndexError, ...)
        raise ValueError(
            f"checkpoint {path} could not be read (truncated, corrupt or not a PyTorch file): "
            f"{type(e).__name__}: {str(e).splitlines()[0].split('. ')[0][:300] if str(e) else ''}"
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def _state_dict_of(obj: Mapping, path: Path) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "state_dict_backbone", "model", "backbone"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(
        f"checkpoint {path} has no state dict: expected a 'state_dict' key or a bare dict of tensors, "
        f"found keys {sorted(obj)[:10]}"
    )


def backbone_state(obj: Mapping, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The backbone's parameters and buffers, with the wrapper prefix (found via ``conv1.weight``) removed."""
    path = Path(path)
    state = _state_dict_of(obj, path)
    prefix = next((p for p in BACKBONE_PREFIXES + ("",) for a in ANCHOR_KEYS if f"{p}{a}" in state), None)
    if prefix is None:
        raise ValueError(
            f"checkpoint {path} contains no iResNet or MobileFaceNet backbone (no '<prefix>conv1.weight' or "
            f"'<prefix>stem.conv.weight' key among {len(state)} keys, e.g. {sorted(state)[:5]})"
        )
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k not in HEAD_KEYS}


def head_weight(obj: Mapping) -> torch.Tensor | None:
    """The classifier as [num_classes, embedding_size], or None when the file has none."""
    state = obj.get("state_dict", {})
    for key in HEAD_KEYS:
        if key in state:
            w = state[key]
            return w.t().contiguous() if key == "module.fc.weight" else w
    return None


def guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered architecture whose blocks and widths match these keys, if any."""
    if "gdc.conv.weight" in state and "stem.conv.weight" in state:
        return "mobilefacenet"
    blocks = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    widths = []
    for stage in range(1, 5):
        w = state.get(f"layer{stage}.0.conv1.weight")
        widths.append(int(w.shape[0]) if w is not None else 0)
    for name, (layers, arch_widths) in ARCHS.items():
        if tuple(blocks) == tuple(layers) and tuple(widths) == tuple(arch_widths):
            return name
    return None


def embedding_size_of(state: Mapping[str, torch.Tensor]) -> int | None:
    w = state.get("fc.weight")
    return int(w.shape[0]) if w is not None else None


def input_size_of(obj: Mapping, state: Mapping[str, torch.Tensor]) -> int:
    """The working resolution: from the file's config, else 112 (every released model)."""
    config = obj.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("input_size"), int):
        return int(config["input_size"])
    return 112


def _natural(key: str) -> list[tuple[int, int | str]]:
    """Sort key under which layer3.6 comes before layer3.10."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in key.split(".")]


def load_backbone_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str = "<memory>") -> None:
    """Strict load; a mismatch names the missing, unexpected and mis-shaped keys (and a likely arch)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state), key=_natural)
    unexpected = sorted(set(state) - set(own), key=_natural)
    shaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shaped:
        guess = guess_arch(state)
        hint = f" The file looks like {guess}." if guess else ""
        lines = [f"checkpoint {path} does not fit the model.{hint}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
            if keys:
                more = f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                lines.append(f"  {label} keys ({len(keys)}): {', '.join(keys[:8])}{more}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def file_convention(obj: Mapping) -> InputConvention | None:
    conv = obj.get("input_convention")
    return InputConvention.from_dict(dict(conv)) if isinstance(conv, Mapping) else None


def load_backbone(
    path: str | os.PathLike,
    arch: str | None = None,
    map_location: str | torch.device = "cpu",
    convention: InputConvention | None = None,
) -> tuple[nn.Module, InputConvention, dict]:
    """Build and load the backbone of any supported checkpoint; eval mode, on ``map_location``.

    The convention is, in order: ``convention`` (a tool's flag), the file's own, the MagFace default.
    """
    obj = read_checkpoint(path, map_location="cpu")
    state = backbone_state(obj, path)
    file_arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    name = arch or file_arch or guess_arch(state)
    if name is None:
        raise ValueError(f"checkpoint {path}: cannot tell its architecture; pass --arch")
    name = canonical_arch(name)
    emb = embedding_size_of(state) or 512
    model = build_backbone(name, embedding_size=emb, input_size=input_size_of(obj, state))
    load_backbone_state(model, state, str(path))
    stored = file_convention(obj)
    if convention is None and stored is None and "state_dict" not in obj:
        warnings.warn(
            f"{path} is a bare state dict (insightface layout) without an input convention; using the "
            "MagFace one (BGR, /255). insightface ArcFace models expect RGB, (x-127.5)/127.5: pass "
            "--input-convention insightface for those.",
            stacklevel=2,
        )
    conv = convention or stored or MAGFACE
    info = {"arch": name, "epoch": obj.get("epoch"), "embedding_size": emb,
            "input_size": model.input_size, "config": obj.get("config"), "path": str(path)}
    return model.to(map_location).eval(), conv, info


def released_state_dict(backbone: nn.Module, head_weight_full: torch.Tensor | None) -> dict:
    """The released DataParallel layout: ``module.features.*`` and ``module.fc.weight`` [D, C]."""
    state = {f"module.features.{k}": v.detach().cpu() for k, v in backbone.state_dict().items()}
    if head_weight_full is not None:
        state["module.fc.weight"] = head_weight_full.detach().float().cpu().t().contiguous()
    return state


def save_released(
    path: str | os.PathLike,
    backbone: nn.Module,
    head_weight_full: torch.Tensor | None,
    epoch: int,
    arch: str,
    optimizer_state: Mapping | None = None,
    config: Mapping | None = None,
    convention: InputConvention = MAGFACE,
) -> None:
    """Write a checkpoint the seed's ``gen_feat.py`` reads, plus our config and input convention."""
    obj = {
        "epoch": int(epoch),
        "arch": arch,
        "state_dict": released_state_dict(backbone, head_weight_full),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else {},
        "config": dict(config or {}),
        "input_convention": convention.to_dict(),
        "format_version": FORMAT_VERSION,
    }
    atomic_save(obj, path)
