"""Backbones and heads. ``build_backbone`` is the registry; ``MagFaceHead`` the dense head."""
from models.backbones import ALL_ARCHS, build_backbone, canonical_arch
from models.iresnet import ARCHS, IResNet
from models.magface import ClassWeightHead, MagFaceConfig, MagFaceHead
from models.mobilefacenet import MobileFaceNet
from models.sharded import ShardedMagFaceHead

__all__ = ["ALL_ARCHS", "ARCHS", "ClassWeightHead", "IResNet", "MagFaceConfig", "MagFaceHead", "MobileFaceNet",
           "ShardedMagFaceHead", "build_backbone", "canonical_arch"]
