"""The class rows every MagFace head holds: which rows a rank owns (``shard_range``), their initial values
(``init_rows``, independent of the sharding) and the whole-weight API resume and the epoch saves use."""
from __future__ import annotations

import pytest
import torch

from models.collectives import shard_range
from models.magface import MagFaceHead, init_rows
from models.sharded import ShardedMagFaceHead

DIM = 8


@pytest.mark.parametrize("num_classes", [1, 2, 3, 10, 11, 85742])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_shard_range_covers_classes(num_classes: int, world: int) -> None:
    bounds = [shard_range(num_classes, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_classes
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    sizes = [end - start for start, end in bounds]
    extra = num_classes % world
    assert sizes == [num_classes // world + (1 if r < extra else 0) for r in range(world)]


def test_shard_range_examples_and_errors() -> None:
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(2, 3, r) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    for args in ((10, 0, 0), (10, 3, 3), (10, 3, -1), (-1, 2, 0)):
        with pytest.raises(ValueError):
            shard_range(*args)


def test_full_weight_round_trip_across_world_sizes() -> None:
    """What resume does at another world size: every rank takes its rows of the whole weight and momentum."""
    num_classes = 11
    full, momentum = torch.randn(num_classes, DIM), torch.randn(num_classes, DIM)
    for world in (1, 2, 3, 4, 12):
        heads = [ShardedMagFaceHead(DIM, num_classes, r, world) for r in range(world)]
        for head in heads:
            head.load_full_weight(full)
        assert torch.equal(torch.cat([h.weight.detach() for h in heads]), full)
        assert torch.equal(torch.cat([h.local_rows(momentum) for h in heads]), momentum)
        assert [(h.start, h.end) for h in heads] == [shard_range(num_classes, world, r) for r in range(world)]
    with pytest.raises(ValueError, match="shape"):
        heads[0].load_full_weight(full[:-1])
    with pytest.raises(ValueError, match="shape"):
        heads[0].local_rows(momentum[:, :-1])


def test_initialisation_does_not_depend_on_sharding() -> None:
    num_classes = 140_000  # spans three init blocks
    whole = ShardedMagFaceHead(4, num_classes, 0, 1, init_seed=3).weight.detach()
    parts = [ShardedMagFaceHead(4, num_classes, r, 3, init_seed=3).weight.detach() for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    assert 0.009 < whole.std().item() < 0.011
    assert not torch.equal(parts[0][:10], parts[1][:10])
    assert not torch.equal(whole, ShardedMagFaceHead(4, num_classes, 0, 1, init_seed=4).weight.detach())


def test_dense_head_rows_are_the_whole_matrix() -> None:
    head = MagFaceHead(DIM, 5, init_seed=2)
    assert (head.start, head.end) == (0, 5)
    assert torch.equal(head.weight.detach(), init_rows(0, 5, DIM, seed=2))
    full, momentum = torch.randn(5, DIM), torch.randn(5, DIM)
    head.load_full_weight(full)
    assert torch.equal(head.gather_full_weight(), full) and torch.equal(head.gather_rows(momentum), momentum)
    assert torch.equal(head.local_rows(momentum), momentum)
    assert head.gather_rows(momentum) is not momentum  # a copy: the caller may keep it while training goes on
