"""The single-process Replicas are no-ops; fingerprints tell identical states from different ones."""

import torch
from torch import nn

from turbonerf.engine.distributed import Replicas, rank_seed, replicas_from_env, rows_pay, state_fingerprint


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("grid", torch.zeros(4, 4))
        self.register_buffer("bits", torch.zeros(5, dtype=torch.bool))


def test_one_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    replicas = replicas_from_env(torch.device("cpu"))
    assert replicas == Replicas() and replicas.is_main and not replicas.distributed
    model = Tiny()
    model.lin.weight.grad = torch.ones_like(model.lin.weight)
    assert replicas.average_gradients(list(model.parameters())) == 0
    assert torch.equal(model.lin.weight.grad, torch.ones_like(model.lin.weight))
    assert replicas.agree([1.0, 2.5]) == [1.0, 2.5]
    assert replicas.gather({"a": 1}) == [{"a": 1}]
    assert replicas.shard(5) == [0, 1, 2, 3, 4]
    grid = torch.tensor([True, False])
    assert replicas.maximum(grid) is grid and replicas.gather_to_main(grid)[0] is grid


def test_shards_cover_every_item_once():
    shards = [Replicas(rank=r, world_size=3).shard(10) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert shards[1] == [1, 4, 7]


def test_spans_are_consecutive_aligned_and_cover_every_item_once():
    for n, world, align in [(10, 3, 1), (100, 2, 16), (5, 4, 8), (0, 2, 4), (64, 2, 32)]:
        spans = [Replicas(rank=r, world_size=world).span(n, align) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(s % align == 0 or s == n for s, _ in spans)
    assert Replicas().span(7, 4) == (0, 7)


def test_rank_seeds_differ_and_rank_0_keeps_the_seed():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8


def test_fingerprint_sees_one_changed_bit_in_a_parameter_or_a_buffer():
    torch.manual_seed(0)
    a = Tiny()
    b = Tiny()
    b.load_state_dict(a.state_dict())
    assert state_fingerprint(a) == state_fingerprint(b)
    with torch.no_grad():
        b.lin.weight[0, 0] = torch.nextafter(b.lin.weight[0, 0], torch.tensor(1.0))
    assert state_fingerprint(a) != state_fingerprint(b)
    b.load_state_dict(a.state_dict())
    b.bits[3] = True
    assert state_fingerprint(a) != state_fingerprint(b)


def test_rows_are_exchanged_only_while_they_move_fewer_bytes_than_the_whole_table():
    rows, row = 6_100_000, 2 * 4  # Instant-NGP's lego table: 6.1 M rows of 2 fp32 gradients
    touched = rows * 22 // 100  # what 512 rays per rank touch on a trained model
    assert rows_pay(touched, 2, row, rows * row) and rows_pay(touched, 4, row, rows * row)
    assert not rows_pay(touched, 8, row, rows * row)  # the all-gather grows with N: the ring wins
    assert not rows_pay(rows, 2, row, rows * row)  # every row touched: the dense all-reduce is cheaper
