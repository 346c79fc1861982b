"""Named training recipes shared by the demo (run/demo.py) and the quality study (bench/quality_study.py).

``QUALITY_FINETUNE`` is how the shipped quality model (raw/quality/) was made from the converged public
MobileFaceNet (raw/pretrained/): MagFace fine-tuning of the last bottlenecks and the embedding layers, with
the class-mean head and damage augmentation. Its numbers, and those of the alternatives tried, are in
``raw/quality/README.md`` and the quality study.
"""
from __future__ import annotations

from models.quality_model import PRETRAINED, QUALITY_MODEL

__all__ = ["MOBILEFACENET_START", "PRETRAINED", "QUALITY_FINETUNE", "QUALITY_FINETUNE_EPOCHS", "QUALITY_FINETUNE_FLAGS",
           "QUALITY_MODEL"]

# the backbone, its start and the fine-tune's head: every pretrained-start run of the study uses these
MOBILEFACENET_START = ["--arch", "mobilefacenet", "--embedding-size", "128", "--pretrained", str(PRETRAINED),
                       "--head-init", "class-means", "--batch-size", "64", "--channels-last", "on"]
# [l_a, u_a] = [10, 30] around the pretrained magnitudes (about 11..25 on clean LFW), lambda_g 150 >= lambda_min
# 126; the last 3 bottlenecks, the GDC and the embedding layers train; half the faces damaged by one of 10 kinds
# (the benchmark's 7 and motion blur, low contrast, colour cast: faces.degrade.ALL_KINDS)
QUALITY_FINETUNE_FLAGS = ["--l_a", "10", "--u_a", "30", "--l_margin", "0.45", "--u_margin", "0.8", "--lambda_g",
                          "150", "--lr", "0.01", "--freeze-depth", "12", "--schedule", "cosine",
                          "--degrade-prob", "0.5", "--degrade-kinds", "wide"]
QUALITY_FINETUNE = [*MOBILEFACENET_START, *QUALITY_FINETUNE_FLAGS]
QUALITY_FINETUNE_EPOCHS = 4
