import pytest
import torch

from turbonerf.distill.hard_examples import HardExamplePool, hardest


def test_hardest_returns_the_top_fraction_by_loss():
    losses = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5, 0.0, 0.8, 0.2, 0.4, 0.6])
    assert hardest(losses, 0.3).tolist() == [1, 6, 3]
    assert hardest(losses, 0.05).numel() == 0


def test_pool_keeps_the_highest_loss_rays():
    pool = HardExamplePool(capacity=8, width=2)
    rows = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 2)  # row i holds i
    losses = torch.rand(20, generator=torch.Generator().manual_seed(0))
    n = pool.add_hardest(rows, losses, 0.25)
    assert n == 5 and pool.size == 5 and not pool.full
    expected = set(torch.topk(losses, 5).indices.tolist())
    assert set(pool.rows[: pool.size, 0].long().tolist()) == expected
    drawn = pool.draw(3, torch.Generator().manual_seed(1))
    assert drawn.shape == (3, 2) and set(drawn[:, 0].long().tolist()) <= expected
    assert len(set(drawn[:, 0].tolist())) == 3  # without replacement
    assert pool.draw(100).shape == (5, 2)


def test_pool_is_a_bounded_fifo():
    pool = HardExamplePool(capacity=4, width=1)
    for start in (0, 3, 6):
        pool.push(torch.arange(start, start + 3, dtype=torch.float32)[:, None])
    assert pool.full and pool.size == 4
    assert sorted(pool.rows[:, 0].long().tolist()) == [5, 6, 7, 8]  # the oldest left first
    pool.push(torch.arange(100, 110, dtype=torch.float32)[:, None])
    assert sorted(pool.rows[:, 0].long().tolist()) == [106, 107, 108, 109]
    with pytest.raises(ValueError):
        HardExamplePool(0, 1)
