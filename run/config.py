"""Training configuration: one dataclass whose defaults are the published MagFace recipe.

argparse is generated from the dataclass; the seed's flag names (``--batch-size``, ``--l_a``,
``--arc-scale``...) are the primary spellings so existing launch scripts keep working.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from dataloader.augment import DegradeAugment, parse_kinds
from models.magface import VARIANTS, MagFaceConfig
from run.preempt import parse_signals
from utils.atomic import write_json
from utils.cli import HelpFormatter
from utils.convention import convention_name, parse_convention

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_HEAD = MagFaceConfig()  # the published loss defaults live there; the flags below take them from it


@dataclass
class TrainConfig:
    # data
    arch: str = "iresnet100"
    train_list: str = ""
    rec: str = ""
    synthetic: int = 0
    workers: int = -1  # -1: from the cores this process may use (dataloader.builder.train_workers)
    skip_bad_images: bool = False
    max_bad_fraction: float = 0.01
    # optional damage augmentation (off in the published recipe; dataloader/augment.py)
    degrade_prob: float = 0.0
    degrade_kinds: str = "all"
    degrade_max_severity: float = 1.0
    # schedule (published: 25 epochs, lr 0.1 x0.1 at 10/18/22, total batch 512)
    epochs: int = 25
    start_epoch: int = 0
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_drop_epoch: list[int] = field(default_factory=lambda: [10, 18, 22])
    lr_drop_ratio: float = 0.1
    schedule: str = "step"
    warmup_epochs: float = 0.0
    max_steps: int = 0
    grad_clip: float = 0.0
    # model and head
    embedding_size: int = 512
    last_fc_size: int = 85742
    dropout: float = 0.0
    input_size: int = 112
    input_convention: str = "auto"
    # the MagFace loss (models.magface.MagFaceConfig; --margin is its variant, --arc-scale its scale)
    l_a: float = _HEAD.l_a
    u_a: float = _HEAD.u_a
    l_margin: float = _HEAD.l_margin
    u_margin: float = _HEAD.u_margin
    lambda_g: float = _HEAD.lambda_g
    arc_scale: float = _HEAD.scale
    margin: str = _HEAD.variant
    easy_margin: bool = _HEAD.easy_margin
    # execution
    device: str = "auto"
    amp: str = "none"
    channels_last: str = "auto"
    compile: str = "auto"
    compile_mode: str = "default"
    head_impl: str = "dense"
    head_chunk: int = 16384
    sample_rate: float = 1.0
    seed: int = 0
    deterministic: bool = False
    max_nonfinite: int = 20
    dist_timeout: float = 1800.0
    preempt_signals: str = "SIGTERM,SIGUSR1"
    slurm_requeue: bool = False
    on_save_error: str = "stop"
    # outputs
    pth_save_fold: str = "work_dirs/magface"
    pth_save_epoch: int = 1
    save_every_steps: int = 0
    print_freq: int = 100
    tensorboard: bool = True
    resume: str = ""
    overwrite: bool = False
    pretrained: str = ""
    # fine-tuning a pretrained backbone (run/head_init.py)
    head_init: str = "random"
    freeze_depth: int = 0
    backbone_lr_mult: float = 1.0
    # monitoring (run/vis_mag.py, run/validate.py): never changes the optimisation
    vis_mag: int = 0
    vis_mag_start: int = 10000
    vis_mag_every: int = 100
    val_bin: list[str] = field(default_factory=list)
    val_every: int = 0
    val_batch_size: int = 128
    save_best: bool = False

    def validate(self) -> None:
        if self.input_convention != "auto":
            parse_convention(self.input_convention)
        parse_signals(self.preempt_signals)
        sources = sum(bool(x) for x in (self.train_list, self.rec, self.synthetic))
        if sources != 1:
            raise ValueError("give exactly one data source: --train_list LIST, --rec DIR or --synthetic N")
        choices = {"schedule": ("step", "cosine"), "amp": ("none", "bf16", "fp16"),
                   "margin": VARIANTS, "channels_last": ("auto", "on", "off"),
                   "compile": ("auto", "on", "off"), "on_save_error": ("stop", "continue"),
                   "compile_mode": COMPILE_MODES, "head_impl": ("dense", "fused"),
                   "head_init": ("random", "class-means")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"--{key.replace('_', '-')} must be one of {allowed}, got {getattr(self, key)!r}")
        positive = ("epochs", "batch_size", "embedding_size", "last_fc_size", "print_freq", "head_chunk")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        at_least = {"workers": -1, "max_steps": 0, "save_every_steps": 0, "grad_clip": 0.0, "warmup_epochs": 0.0,
                    "dropout": 0.0, "max_nonfinite": 1, "pth_save_epoch": 1, "freeze_depth": 0,
                    "backbone_lr_mult": 0.0}
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise ValueError(f"--{key.replace('_', '-')} must be >= {low}, got {getattr(self, key)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"--sample-rate must lie in (0, 1], got {self.sample_rate}")
        if self.sample_rate < 1.0 and self.head_impl != "dense":
            raise ValueError(f"--sample-rate {self.sample_rate} needs the class-sharded head; --head-impl "
                             f"{self.head_impl} always scores every class")
        if self.lr <= 0 or self.dist_timeout <= 0:
            raise ValueError(f"--lr and --dist-timeout must be positive, got {self.lr} and {self.dist_timeout}")
        DegradeAugment(self.degrade_prob, parse_kinds(self.degrade_kinds), self.degrade_max_severity)
        self._validate_monitoring()
        if not 0 <= self.start_epoch < self.epochs:
            raise ValueError(f"--start-epoch {self.start_epoch} must lie in [0, epochs={self.epochs})")

    def _validate_monitoring(self) -> None:
        for key, low in {"vis_mag_start": 0, "vis_mag_every": 1, "val_every": 0, "val_batch_size": 1}.items():
            if getattr(self, key) < low:
                raise ValueError(f"--{key.replace('_', '-')} must be >= {low}, got {getattr(self, key)}")
        if self.save_best and not self.val_bin:
            raise ValueError("--save-best needs --val-bin FILE...")
        for path in self.val_bin:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--val-bin: verification set not found: {path}")

    def resolve_input_convention(self, resume_file: str | Path | None, pretrained: Mapping | None = None) -> str:
        """Replace ``auto`` by the convention of the resumed file, else of the --pretrained one (``pretrained``: that
        file already read), else magface. The resume file's tensors are only mapped, not read: resuming reads it."""
        if self.input_convention == "auto":
            from models.checkpoint import file_convention, read_checkpoint

            stored = file_convention(read_checkpoint(resume_file, mmap=True)) if resume_file else None
            if stored is None and pretrained is not None:
                stored = file_convention(pretrained)
            self.input_convention = convention_name(stored) if stored is not None else "magface"
        return self.input_convention

    def head_config(self) -> MagFaceConfig:
        """The loss hyper-parameters as the heads take them."""
        return MagFaceConfig(l_a=self.l_a, u_a=self.u_a, l_margin=self.l_margin, u_margin=self.u_margin,
                             lambda_g=self.lambda_g, scale=self.arc_scale, variant=self.margin,
                             easy_margin=self.easy_margin)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path, **extra) -> None:
        """The resolved config (plus ``extra`` facts such as the world size), written atomically."""
        write_json(path, self.to_dict() | extra, sort_keys=True)


# dataclass field -> (flag spellings, help). The first spelling is the seed's where it had one.
FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "arch": (("--arch", "-a"), "backbone name (iresnet18/34/50/100/200, iresnet18_w16, ...)"),
    "train_list": (("--train_list", "--train-list"), "training list: 'path 0 id 0' per line"),
    "rec": (("--rec",), "folder with insightface train.rec/train.idx"),
    "synthetic": (("--synthetic",), "use N synthetic images (smoke runs, benchmarks)"),
    "workers": (("--workers", "-j"), "data loading worker processes per rank; -1: the cores this process may use, "
                "shared among the ranks of this node, less one for the training process (at most 8)"),
    "skip_bad_images": (("--skip-bad-images",), "log and skip unreadable images instead of stopping"),
    "max_bad_fraction": (("--max-bad-fraction",), "with --skip-bad-images: stop past this fraction"),
    "degrade_prob": (("--degrade-prob",), "damage each training face with this probability (0 = off, published)"),
    "degrade_kinds": (("--degrade-kinds",), "damage kinds for --degrade-prob: 'all' (the benchmark's blur,downscale,"
                      "jpeg,dark,bright,noise,occlusion), 'wide' (those + motion_blur,contrast,colour_cast) or a "
                      "comma list"),
    "degrade_max_severity": (("--degrade-max-severity",), "damage severity is uniform in [0, this]"),
    "epochs": (("--epochs",), "number of epochs"),
    "start_epoch": (("--start-epoch",), "epoch to start from (the seed's manual restart)"),
    "batch_size": (("--batch-size", "-b"), "TOTAL batch size over all GPUs/processes"),
    "lr": (("--lr", "--learning-rate"), "initial learning rate"),
    "momentum": (("--momentum",), "SGD momentum"),
    "weight_decay": (("--weight-decay", "--wd"), "weight decay"),
    "lr_drop_epoch": (("--lr-drop-epoch",), "epochs where the step schedule multiplies lr"),
    "lr_drop_ratio": (("--lr-drop-ratio",), "factor applied at each drop epoch"),
    "schedule": (("--schedule",), "step (published) or cosine"),
    "warmup_epochs": (("--warmup-epochs",), "linear warm-up length in epochs (0 = none, published)"),
    "max_steps": (("--max-steps",), "stop at global step N, counted from the run's start (a resumed run goes on to "
                  "N, not N more); writes last.pth and a released-layout checkpoint (step_N.pth mid-epoch); 0: off"),
    "grad_clip": (("--grad-clip",), "clip the global gradient norm (0 = off)"),
    "embedding_size": (("--embedding-size",), "embedding dimension"),
    "last_fc_size": (("--last-fc-size",), "number of identities (classifier rows)"),
    "dropout": (("--dropout",), "dropout before the embedding layer"),
    "input_convention": (("--input-convention",), "pixel convention the backbone expects: auto (the one stored "
                         "in the --resume or --pretrained file, else magface), magface (BGR, /255), insightface "
                         "(RGB, (x-127.5)/127.5), imagenet (RGB, ImageNet mean/std: the shipped MobileFaceNet) or "
                         "ORDER:m,m,m:s,s,s"),
    "input_size": (("--input-size",), "input side in pixels (112 for the released models)"),
    "l_a": (("--l_a",), "lower magnitude bound l_a"),
    "u_a": (("--u_a",), "upper magnitude bound u_a"),
    "l_margin": (("--l_margin",), "margin at l_a"),
    "u_margin": (("--u_margin",), "margin at u_a"),
    "lambda_g": (("--lambda_g",), "weight of the magnitude regulariser g(a)"),
    "arc_scale": (("--arc-scale",), "logit scale s"),
    "margin": (("--margin",), "arc (Mag-ArcFace) or cos (Mag-CosFace)"),
    "easy_margin": (("--easy-margin",), "apply the margin only where cos > 0 (the seed's default)"),
    "device": (("--device",), "auto, cpu, cuda or cuda:N"),
    "amp": (("--amp",), "mixed precision: none, bf16 or fp16 (head and loss always fp32)"),
    "channels_last": (("--channels-last",), "auto (on for GPU), on, off"),
    "compile": (("--compile",), "torch.compile the backbone: auto (on for GPU), on, off"),
    "compile_mode": (("--compile-mode",), "torch.compile mode: default, reduce-overhead (CUDA graphs), "
                     "max-autotune, max-autotune-no-cudagraphs"),
    "head_impl": (("--head-impl",), "single-process head: dense (the logits matrix) or fused (matmul, margin and "
                  "softmax cross-entropy in one pass over chunks of classes; same loss, less memory)"),
    "head_chunk": (("--head-chunk",), "--head-impl fused: classes per chunk"),
    "sample_rate": (("--sample-rate",), "PartialFC-style class sampling: each step's softmax runs over the batch's "
                    "classes and random others, this share of each rank's classes (1.0: all, the exact softmax); "
                    "margin and regulariser unchanged (models/sharded.py)"),
    "seed": (("--seed",), "random seed (data order, flips, init)"),
    "deterministic": (("--deterministic",), "deterministic kernels (slower; for exact resume checks)"),
    "max_nonfinite": (("--max-nonfinite",), "abort after this many consecutive non-finite losses"),
    "dist_timeout": (("--dist-timeout",), "seconds before a hung collective is reported"),
    "preempt_signals": (("--preempt-signals",), "signals that stop the run after the current step with last.pth "
                        "saved and exit status 75 ('' = none)"),
    "slurm_requeue": (("--slurm-requeue",), "after a preemption signal under SLURM, 'scontrol requeue' the job"),
    "on_save_error": (("--on-save-error",), "a checkpoint write fails (disk full, quota, read-only): stop "
                      "(exit 5) or continue (keeps the previous last.pth)"),
    "pth_save_fold": (("--pth-save-fold",), "output folder for checkpoints and logs"),
    "pth_save_epoch": (("--pth-save-epoch",), "write {epoch:05d}.pth every N epochs"),
    "save_every_steps": (("--save-every-steps",), "also write last.pth every N steps (0 = off)"),
    "print_freq": (("--print-freq", "-p"), "log progress every N steps (at least every tenth of a shorter run)"),
    "tensorboard": (("--tensorboard",), "write TensorBoard scalars and histograms"),
    "resume": (("--resume",), "resume from a last.pth, or 'auto' for PTH_SAVE_FOLD/last.pth if present"),
    "overwrite": (("--overwrite",), "start a new run in a PTH_SAVE_FOLD that holds one, deleting its last.pth, "
                  "best.pth and epoch checkpoints first (without it, and without --resume, such a folder is refused)"),
    "pretrained": (("--pretrained",), "initialise the backbone from any supported checkpoint (a released MagFace "
                   "or insightface model, one of ours, raw/pretrained/mobilefacenet.pth)"),
    "head_init": (("--head-init",), "classifier rows at the start: random, or class-means (each row the mean "
                  "direction of its class's faces embedded by the starting backbone: the fine-tune's first steps "
                  "then do not wreck a pretrained backbone)"),
    "freeze_depth": (("--freeze-depth",), "keep the first N backbone units fixed (weights and BatchNorm "
                     "statistics): iresnet stem, layer1..4; mobilefacenet stem, 15 bottlenecks, widen, GDC"),
    "backbone_lr_mult": (("--backbone-lr-mult",), "backbone learning rate = this x --lr (the head keeps --lr); "
                         "below 1 for fine-tuning, 0 trains the head alone"),
    "vis_mag": (("--vis_mag", "--vis-mag"), "1 = the seed's magnitude dump: OUT/vis/epoch_E_iterI.npz (magnitude, "
                "target probability, s*cos of the target) plus a magnitude-vs-cosine PNG and TensorBoard figure"),
    "vis_mag_start": (("--vis-mag-start",), "--vis_mag: only at steps-in-epoch above this (the seed's 10000)"),
    "vis_mag_every": (("--vis-mag-every",), "--vis_mag: every N steps-in-epoch (the seed's 100)"),
    "val_bin": (("--val-bin",), "verification .bin sets (lfw.bin, cfp_fp.bin...) scored during training"),
    "val_every": (("--val-every",), "with --val-bin: validate every N global steps (0 = at each epoch's end)"),
    "val_batch_size": (("--val-batch-size",), "images per forward pass when validating (per process)"),
    "save_best": (("--save-best",), "keep PTH_SAVE_FOLD/best.pth: the model with the best mean --val-bin accuracy"),
}


def _str2bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0, true/false), got {text!r}")


def get_args_parser(description: str = "Train MagFace") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=HelpFormatter)
    for f in fields(TrainConfig):
        names, help_text = FLAGS[f.name]
        default = f.default if f.default is not MISSING else f.default_factory()
        kwargs: dict = {"dest": f.name, "default": default, "help": help_text}
        if f.type in ("bool", bool):
            kwargs.update(type=_str2bool, nargs="?", const=True, metavar="0|1")
        elif f.name == "lr_drop_epoch":
            kwargs.update(type=int, nargs="+")
        elif f.name == "val_bin":
            kwargs.update(type=str, nargs="+", metavar="FILE")
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
        parser.add_argument(*names, **kwargs)
    # the seed's trainer_dist.py switches, accepted by both trainers and mapped onto --amp / --margin
    parser.add_argument("--fp16", type=int, default=None, metavar="0|1",
                        help="the seed's switch: 1 = --amp fp16 (prefer --amp bf16 on GPUs that have it)")
    parser.add_argument("--arc", type=int, default=None, metavar="0|1",
                        help="the seed's switch: 1 = Mag-ArcFace, 0 = Mag-CosFace (= --margin cos)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if getattr(args, "fp16", None):
        args.amp = "fp16"
    if getattr(args, "arc", None) is not None:
        args.margin = "arc" if args.arc else "cos"
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    cfg.validate()
    return cfg


# Keys whose change between a run and its resumption does not alter the optimisation.
BENIGN_KEYS = {"world_size", "resume", "overwrite", "data", "workers", "print_freq",
               "tensorboard", "pth_save_fold", "max_steps",
               "start_epoch", "dist_timeout", "save_every_steps", "pth_save_epoch", "compile", "compile_mode",
               "head_impl", "head_chunk",
               "device", "pretrained", "channels_last", "epochs", "max_nonfinite", "deterministic",
               "skip_bad_images", "max_bad_fraction", "preempt_signals", "slurm_requeue", "on_save_error",
               "vis_mag", "vis_mag_start", "vis_mag_every", "val_bin", "val_every", "val_batch_size", "save_best"}


# Options added after checkpoints were first written; a checkpoint without them ran with these defaults.
DEFAULT_FOR_OLD_CHECKPOINTS = {"input_convention": "magface", "degrade_prob": 0.0, "degrade_kinds": "all",
                               "degrade_max_severity": 1.0, "head_init": "random", "freeze_depth": 0,
                               "backbone_lr_mult": 1.0, "sample_rate": 1.0}


def config_differences(saved: dict, current: TrainConfig) -> list[str]:
    """Human-readable differences in hyper-parameters between a checkpoint's run and this one."""
    now = current.to_dict()
    saved = DEFAULT_FOR_OLD_CHECKPOINTS | saved
    diffs = []
    for key in sorted(set(saved) | set(now)):
        if key in BENIGN_KEYS:
            continue
        if saved.get(key, "<absent>") != now.get(key, "<absent>"):
            old, new = saved.get(key, "<absent>"), now.get(key, "<absent>")
            diffs.append(f"{key}: checkpoint {old!r} -> now {new!r}")
    return diffs
