"""Backbones and heads. ``build_backbone`` is the registry; ``MagFaceHead`` the dense head."""
from models.iresnet import ARCHS, IResNet, build_backbone, canonical_arch
from models.magface import ClassWeightHead, MagFaceConfig, MagFaceHead
from models.sharded import ShardedMagFaceHead

__all__ = ["ARCHS", "ClassWeightHead", "IResNet", "MagFaceConfig", "MagFaceHead", "ShardedMagFaceHead",
           "build_backbone", "canonical_arch"]
