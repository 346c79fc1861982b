"""Backbones and heads. ``build_backbone`` is the registry; ``MagFaceHead`` the dense head."""
from models.iresnet import ARCHS, IResNet, build_backbone, canonical_arch
from models.magface import MagFaceHead, MagMargin
from models.sharded import ShardedMagFaceHead

__all__ = ["ARCHS", "IResNet", "MagFaceHead", "MagMargin", "ShardedMagFaceHead", "build_backbone", "canonical_arch"]
