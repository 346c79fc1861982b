"""``--val-bin FILE... --val-every N``: 1:1 verification of insightface ``.bin`` sets while training.

Each process decodes its contiguous share of each set once (``eval.bin_io.read_bin``) and keeps it in
memory as uint8 (all of LFW's 12,000 faces: 450 MB, split over the ranks). At a validation step every rank
embeds its share with a copy of the current backbone in eval mode, BN folded (``inference.extract``),
and rank 0 gathers the embeddings and scores the set with the seed's 10-fold protocol
(``eval.verification.evaluate_pairs``); the training module is not touched.
Nothing random is drawn and the RNG states are restored around it anyway, so a run with validation
trains bit-identically to one without.

Rank 0 logs accuracy, threshold and the magnitude distribution, writes them to TensorBoard, keeps the
best per set in ``PTH_SAVE_FOLD/val_metrics.json`` (atomic) and, with ``--save-best``, ``best.pth``
(released layout) whenever the mean accuracy over the sets improves.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval.bin_io import read_bin
from eval.verification import evaluate_pairs
from inference.extract import embed_array
from models.collectives import gather_row_shards, shard_range
from utils.atomic import write_json
from utils.convention import InputConvention
from utils.dist import broadcast_object, get_world_size
from utils.logger import TensorBoard, get_logger

METRICS_FILE = "val_metrics.json"
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class ValSet:
    name: str
    images: np.ndarray  # uint8 (n, H, W, 3) BGR: this process's share of the set's 2N images
    issame: np.ndarray  # bool (N,)

    @property
    def num_images(self) -> int:
        return 2 * len(self.issame)


def load_val_sets(paths: list[str], world_size: int = 1, rank: int = 0, folds: int = 10) -> list[ValSet]:
    """Decode this rank's share (``shard_range``) of every ``.bin``; names are the file stems and must differ."""
    sets, seen = [], {}
    for path in paths:
        name = Path(path).stem
        if name in seen:
            raise ValueError(f"--val-bin: {path} and {seen[name]} have the same name {name!r}; rename one")
        seen[name] = path
        _, issame = read_bin(path, rows=range(0))
        if len(issame) < folds:
            raise ValueError(f"--val-bin {path}: {len(issame)} pairs, the {folds}-fold protocol needs {folds}")
        images, _ = read_bin(path, image_size=None, rows=range(*shard_range(2 * len(issame), world_size, rank)))
        sets.append(ValSet(name, images, issame))
    return sets


def magnitude_summary(features: np.ndarray) -> dict[str, float]:
    mags = np.linalg.norm(features.astype(np.float64), axis=1)
    summary = {"mean": float(mags.mean()), "std": float(mags.std())}
    summary.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(mags, PERCENTILES), strict=True)})
    return summary


def embed_sharded(backbone: nn.Module, val_set: ValSet, device: torch.device, convention: InputConvention,
                  dtype: torch.dtype, batch_size: int, embedding_size: int) -> np.ndarray | None:
    """Every rank embeds its share (collective under a process group); the whole set on rank 0, else None.

    A copy of the backbone is made ready for inference (BN folded, channels-last: 1.3-1.7x faster on a
    CPU than the live module in eval mode); the training module itself is never touched.
    """
    if len(val_set.images):
        local = embed_array(copy.deepcopy(backbone), val_set.images, batch_size=batch_size, device=device,
                            convention=convention, dtype=dtype, prepare=True)
    else:
        local = np.zeros((0, embedding_size), np.float32)
    if get_world_size() == 1:
        return local
    full = gather_row_shards(torch.from_numpy(local).to(device), val_set.num_images, dst=0)
    return full.cpu().numpy() if full is not None else None


class Validator:
    """Runs the validations, keeps the bests and writes ``val_metrics.json`` (rank 0)."""

    def __init__(self, sets: list[ValSet], out_dir: str | Path, embed: Callable[[ValSet], np.ndarray | None],
                 is_main: bool, tb: TensorBoard | None = None, save_best: Callable[[int], object] | None = None,
                 resume_step: int | None = None) -> None:
        self.sets, self.embed, self.is_main, self.tb, self.save_best = sets, embed, is_main, tb, save_best
        self.path = Path(out_dir) / METRICS_FILE
        self.record: dict = {"sets": {}, "best_mean_accuracy": None, "best_global_step": None, "history": []}
        if resume_step is not None and is_main and self.path.is_file():
            self._restore(resume_step)

    def _restore(self, resume_step: int) -> None:
        """Keep what the interrupted run measured up to the step it resumes from (the rest is replayed)."""
        try:
            old = json.loads(self.path.read_text())
        except ValueError as error:
            raise ValueError(f"{self.path}: not valid JSON ({error}); move it away to start afresh") from None
        history = [h for h in old.get("history", []) if h["global_step"] <= resume_step]
        for entry in history:
            self._update_bests(entry)
        self.record["history"] = history

    def _update_bests(self, entry: dict) -> bool:
        for name, result in entry["sets"].items():
            best = self.record["sets"].setdefault(name, {"best_accuracy": -1.0})
            if result["accuracy"] > best["best_accuracy"]:
                best.update(best_accuracy=result["accuracy"], best_threshold=result["threshold"],
                            best_global_step=entry["global_step"])
        best_mean = self.record["best_mean_accuracy"]
        improved = best_mean is None or entry["mean_accuracy"] > best_mean
        if improved:
            self.record.update(best_mean_accuracy=entry["mean_accuracy"], best_global_step=entry["global_step"])
        return improved

    def __call__(self, epochs_done: int, global_step: int, distributed: bool) -> dict | None:
        """Collective under a process group; returns the new history entry on rank 0.

        ``save_best(epochs_done)`` (collective too) runs on every rank when the mean accuracy improved."""
        started = time.perf_counter()
        results = {}
        for val_set in self.sets:
            feats = self.embed(val_set)
            if feats is not None:
                results[val_set.name] = self._score(val_set, feats)
        improved, entry = False, None
        if self.is_main:
            entry = {"global_step": global_step, "epochs_done": epochs_done, "sets": results,
                     "mean_accuracy": float(np.mean([r["accuracy"] for r in results.values()])),
                     "seconds": round(time.perf_counter() - started, 3)}
            improved = self._update_bests(entry)
            self.record["history"].append(entry)
            self.record["last"] = entry
            write_json(self.path, self.record, nan_as_null=True)
            self._report(entry, global_step)
        if distributed:
            improved = broadcast_object(improved)
        if improved and self.save_best is not None:
            self.save_best(epochs_done)
        return entry

    @staticmethod
    def _score(val_set: ValSet, feats: np.ndarray) -> dict:
        report = evaluate_pairs(feats[0::2], feats[1::2], val_set.issame)
        return {"accuracy": report["accuracy_mean"], "accuracy_std": report["accuracy_std"],
                "threshold": report["threshold"], "auc": report["auc"], "magnitude": magnitude_summary(feats)}

    def _report(self, entry: dict, global_step: int) -> None:
        log = get_logger()
        if len(self.record["history"]) == 1:
            log.info("validation magnitudes come from eval mode (BatchNorm's running statistics); early in training "
                     "those differ from the batch statistics of the training steps, so these magnitudes can be far "
                     "from the training ones ('mag' in the progress lines) until the statistics settle")
        for name, r in entry["sets"].items():
            m = r["magnitude"]
            best = self.record["sets"][name]
            log.info(f"val {name} at global step {global_step}: accuracy {100 * r['accuracy']:.2f}% +- "
                     f"{100 * r['accuracy_std']:.2f} threshold {r['threshold']:.3f} magnitude mean {m['mean']:.2f} "
                     f"[p5 {m['p5']:.2f}, p50 {m['p50']:.2f}, p95 {m['p95']:.2f}] (best "
                     f"{100 * best['best_accuracy']:.2f}% at step {best['best_global_step']})")
            if self.tb is not None:
                self.tb.scalars({f"val/{name}/accuracy": r["accuracy"], f"val/{name}/threshold": r["threshold"]}
                                | {f"val/{name}/magnitude_{k}": v for k, v in m.items()}, global_step)
        log.info(f"validation took {entry['seconds']:.2f} s (mean accuracy {100 * entry['mean_accuracy']:.2f}%, "
                 f"best {100 * self.record['best_mean_accuracy']:.2f}% at step {self.record['best_global_step']})")
