"""Training list, image-list dataset, sampler, synthetic data and the loader on real faces."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloader import (
    EpochShuffleSampler,
    ImageListDataset,
    SyntheticDataset,
    TensorImageDataset,
    build_train_dataset,
    build_train_loader,
    read_train_list,
)
from dataloader.image_list import PathTable, find_missing
from run.engine import StepConfig, flip_mask, prepare_batch
from utils.convention import to_model_input


def _bgr_chw(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_COLOR).transpose(2, 0, 1)


# ---- training list ------------------------------------------------------------------------------

def test_reads_celeba_list(celeba_dir, full_data):
    tl = read_train_list(celeba_dir / "train.list")
    ref = [ln.split() for ln in (celeba_dir / "train.list").read_text().splitlines()]
    assert (len(tl), len(ref), tl.num_classes) == ((6299, 6299, 299) if full_data else (4837, 4837, 253))
    assert tl.labels.dtype == np.int64
    assert tl.labels.tolist() == [int(r[2]) for r in ref]
    assert tl.paths[0] == str(celeba_dir / ref[0][0]) and tl.paths[-1] == str(celeba_dir / ref[-1][0])
    assert tl.lines[10] == 11


def test_relative_and_absolute_paths(tmp_path, celeba_dir):
    sub = tmp_path / "lists"
    sub.mkdir()
    img = sub / "imgs" / "a.jpg"
    img.parent.mkdir()
    real = celeba_dir / (celeba_dir / "train.list").read_text().split()[0]
    img.write_bytes(real.read_bytes())
    (sub / "l.txt").write_text(f"imgs/a.jpg 0 3 0\n{real}\t0\t1\t0\n./imgs/../imgs/a.jpg 0 0 0\n")
    tl = read_train_list(sub / "l.txt")
    assert list(tl.paths) == [str(img), str(real), str(img)]
    assert all(os.path.isabs(p) for p in tl.paths)
    assert tl.labels.tolist() == [3, 1, 0] and tl.num_classes == 4
    assert tl.where(1) == f"{real} (line 2 of {sub / 'l.txt'})"


def test_path_table_is_a_sequence():
    names = ["/a/b.jpg", "/c/é.jpg", "/d"]
    t = PathTable(names)
    assert len(t) == 3 and list(t) == names and t[-1] == "/d" and t[0:2] == names[:2]
    with pytest.raises(IndexError):
        t[3]


def test_find_missing(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"1")
    paths = [str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg"), str(tmp_path / "no" / "z.jpg")]
    assert find_missing(paths) == [1, 2]


# ---- image-list dataset -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_list(tmp_path_factory, celeba_dir) -> Path:
    lines = (celeba_dir / "train.list").read_text().splitlines()[::130]
    path = tmp_path_factory.mktemp("lists") / "small.txt"
    path.write_text("".join(f"{celeba_dir / ln.split()[0]} 0 {ln.split()[2]} 0\n" for ln in lines))
    return path


def test_image_list_pixels_equal_cv2(small_list):
    tl = read_train_list(small_list)
    ds = ImageListDataset(tl)
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 112, 112) and img.is_contiguous()
        assert np.array_equal(img.numpy(), _bgr_chw(tl.paths[i])) and label == tl.labels[i]


def test_training_mirrors_about_half_by_seed_and_step(small_list):
    """Datasets return faces as stored; the loop mirrors on the device where ``flip_mask(seed, step)`` says."""
    tl = read_train_list(small_list)
    ref = torch.from_numpy(_bgr_chw(tl.paths[0]).copy())
    batch = ref.unsqueeze(0).repeat(200, 1, 1, 1)
    prep = StepConfig(torch.device("cpu"), batch_size=200)
    x, _ = prepare_batch(batch, torch.zeros(200, dtype=torch.long), prep, global_step=7)
    plain, flipped = to_model_input(ref[None])[0], to_model_input(ref.flip(2)[None])[0]
    mirrored = torch.tensor([torch.equal(img, flipped) for img in x])
    assert all(m or torch.equal(img, plain) for m, img in zip(mirrored, x, strict=True))
    assert torch.equal(mirrored, flip_mask(seed=0, step=7, n=200))
    assert 70 < int(mirrored.sum()) < 130
    assert torch.equal(flip_mask(0, 7, 200), flip_mask(0, 7, 200))
    assert not torch.equal(flip_mask(0, 7, 200), flip_mask(0, 8, 200))


def test_loader_batches(small_list):
    ds = build_train_dataset(train_list=str(small_list), num_classes=299)
    sampler = EpochShuffleSampler(len(ds), shuffle=False)
    loader = build_train_loader(ds, batch_size=16, workers=2, sampler=sampler, pin_memory=False,
                                persistent_workers=False)
    batches = list(loader)
    assert len(batches) == len(ds) // 16
    images, labels, n_bad = batches[1]
    assert images.shape == (16, 3, 112, 112) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == ds.train_list.labels[16:32].tolist()
    assert n_bad == 0 and np.array_equal(images[0].numpy(), _bgr_chw(ds.train_list.paths[16]))


def test_build_train_dataset_needs_one_source(small_list):
    with pytest.raises(ValueError, match="exactly one"):
        build_train_dataset(train_list=str(small_list), synthetic=10, num_classes=3)
    with pytest.raises(ValueError, match="exactly one"):
        build_train_dataset()
    assert len(build_train_dataset(synthetic=10, num_classes=3)) == 10


# ---- sampler ------------------------------------------------------------------------------------

def _shares(n, replicas, epoch=0, **kw):
    out = []
    for r in range(replicas):
        s = EpochShuffleSampler(n, num_replicas=replicas, rank=r, seed=7, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_sampler_covers_every_index_with_wrap_padding():
    n, r = 10, 3
    shares = _shares(n, r)
    assert [len(s) for s in shares] == [4, 4, 4]
    counts = Counter(i for s in shares for i in s)
    assert set(counts) == set(range(n)) and sum(counts.values()) == 12
    order = EpochShuffleSampler(n, num_replicas=r, seed=7).epoch_order().tolist()
    assert sorted(order[:10]) == list(range(10)) and order[10:] == order[:2]  # padding wraps around
    assert [i for i, c in counts.items() if c == 2] == [i for i in counts if i in order[:2]]
    interleaved = [shares[k % r][k // r] for k in range(12)]
    assert interleaved == order


def test_sampler_drop_last_and_tiny_sets():
    shares = _shares(10, 3, drop_last=True)
    assert [len(s) for s in shares] == [3, 3, 3] and len({i for s in shares for i in s}) == 9
    shares = _shares(2, 3)  # fewer samples than ranks: still one index each, wrapped
    assert all(len(s) == 1 for s in shares) and {i for s in shares for i in s} == {0, 1}


def test_sampler_epochs_differ_and_ranks_agree():
    e0, e1 = _shares(100, 3, epoch=0), _shares(100, 3, epoch=1)
    assert e0 != e1 and _shares(100, 3, epoch=0) == e0
    orders = []
    for rank in range(3):
        s = EpochShuffleSampler(100, num_replicas=3, rank=rank, seed=7)
        s.set_epoch(5)
        orders.append(s.epoch_order().tolist())
    assert orders[0] == orders[1] == orders[2]
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_sampler_set_start_resumes_exactly_for_one_epoch():
    s = EpochShuffleSampler(50, num_replicas=2, rank=1, seed=3)
    s.set_epoch(4)
    full = list(s)
    s.set_start(8)
    assert list(s) == full[8:] and len(s) == 17
    s.set_epoch(5)
    fresh = EpochShuffleSampler(50, num_replicas=2, rank=1, seed=3)
    fresh.set_epoch(5)
    assert len(s) == 25 and list(s) == list(fresh)
    with pytest.raises(ValueError, match="outside"):
        s.set_start(26)


def test_sampler_resumes_mid_epoch_at_another_world_size():
    """What resume does: set_epoch(e) and set_start(step * per-rank batch). With the same total batch the ranks of
    a new world size together skip exactly the global prefix the old ranks consumed."""
    n = 48
    old = [EpochShuffleSampler(n, num_replicas=2, rank=r, seed=11) for r in range(2)]
    for s in old:
        s.set_epoch(3)
    seen = {i for s in old for i in list(s)[:6]}  # 3 steps of a total batch of 4: 6 per rank, 12 in all
    new = [EpochShuffleSampler(n, num_replicas=4, rank=r, seed=11) for r in range(4)]
    for s in new:
        s.set_epoch(3)
        s.set_start(3)  # 3 steps x 1 per rank
    rest = [i for s in new for i in s]
    assert len(rest) == n - 12 and set(rest) | seen == set(range(n)) and not set(rest) & seen
    same = EpochShuffleSampler(n, num_replicas=2, rank=1, seed=11)
    same.set_epoch(3)
    same.set_start(6)
    assert list(same) == list(old[1])[6:]
    same.set_epoch(4)  # the start applies to its epoch only
    assert len(same) == same.per_rank
    with pytest.raises(ValueError, match="outside this rank's epoch share"):
        same.set_start(25)


def test_sampler_resume_in_dataloader():
    ds = SyntheticDataset(40, 5, image_size=8)
    s = EpochShuffleSampler(len(ds), seed=1)
    s.set_epoch(2)
    loader = build_train_loader(ds, batch_size=4, workers=0, sampler=s, pin_memory=False)
    full = [b[1].tolist() for b in loader]
    s.set_start(3 * 4)
    assert [b[1].tolist() for b in loader] == full[3:]


# ---- synthetic data -----------------------------------------------------------------------------

def test_synthetic_is_deterministic():
    a, b = SyntheticDataset(20, 4, seed=5), SyntheticDataset(20, 4, seed=5)
    img, label = a[13]
    assert img.dtype == torch.uint8 and img.shape == (3, 112, 112) and label == 1
    assert torch.equal(img, b[13][0]) and not torch.equal(img, a[12][0])
    assert not torch.equal(img, SyntheticDataset(20, 4, seed=6)[13][0])
    same_class = (a[1][0].float() - a[5][0].float()).abs().mean()
    other_class = (a[1][0].float() - a[2][0].float()).abs().mean()
    assert same_class < 0.5 * other_class  # a per-identity pattern: learnable in smoke runs


def test_tensor_dataset(small_list):
    ds = ImageListDataset(read_train_list(small_list))
    mem = TensorImageDataset.from_dataset(ds, limit=5)
    assert len(mem) == 5 and torch.equal(mem[3][0], ds[3][0]) and mem[3][1] == ds[3][1]
    rnd = TensorImageDataset.random(10, 3, image_size=16)
    assert rnd.images.shape == (10, 3, 16, 16) and rnd[4][1] == 1
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2))
