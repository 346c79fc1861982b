"""The backbone registry: every architecture a checkpoint, a flag or a test may name.

iResNets (``models.iresnet``) and MobileFaceNet (``models.mobilefacenet``) share one interface: a module
mapping aligned (B, 3, 112, 112) faces to the un-normalised embedding, with ``embedding_size`` and
``input_size`` attributes.
"""
from __future__ import annotations

from torch import nn

from models.iresnet import ALIASES, ARCHS, IResNet, build_iresnet
from models.mobilefacenet import MobileFaceNet, build_mobilefacenet

OTHER_ARCHS = {"mobilefacenet": build_mobilefacenet}
ALL_ARCHS = tuple(ARCHS) + tuple(OTHER_ARCHS)


def canonical_arch(name: str) -> str:
    """``r50`` -> ``iresnet50``; an unknown name is a ValueError that lists the valid ones."""
    key = ALIASES.get(name, name)
    if key not in ARCHS and key not in OTHER_ARCHS:
        valid = ", ".join(sorted(ALL_ARCHS) + sorted(ALIASES))
        raise ValueError(f"unknown backbone {name!r}; valid names: {valid}")
    return key


def build_backbone(
    name: str,
    embedding_size: int = 512,
    dropout: float = 0.0,
    input_size: int = 112,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a backbone by name (``iresnet50``, ``r50``, ``mobilefacenet``, ...)."""
    key = canonical_arch(name)
    if key in OTHER_ARCHS:
        return OTHER_ARCHS[key](embedding_size, dropout, input_size, zero_init_residual)
    return build_iresnet(key, embedding_size, dropout, input_size, zero_init_residual)


def backbone_units(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone as an input-to-output list of units (each a list of modules), for ``--freeze-depth``.

    iResNet: stem, layer1..layer4, head (BN, dropout, fc, features). MobileFaceNet: stem, each of the 15
    bottlenecks, the 1x1 widening conv, the GDC, head (dropout, fc, features).
    """
    if isinstance(model, IResNet):
        return [[model.conv1, model.bn1, model.prelu], [model.layer1], [model.layer2], [model.layer3],
                [model.layer4], [model.bn2, model.dropout, model.fc, model.features]]
    if isinstance(model, MobileFaceNet):
        return [[model.stem, model.stem_dw, model.stem_pw], *[[block] for block in model.blocks], [model.widen],
                [model.gdc], [model.dropout, model.fc, model.features]]
    raise ValueError(f"no unit list for a {type(model).__name__} backbone")
