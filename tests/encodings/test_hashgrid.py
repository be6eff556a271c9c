"""Multiresolution hash encoding: layout, interpolation, hashing, gradients, numba == torch."""

import itertools

import pytest
import torch

from turbonerf.encodings.hashgrid import (
    PRIMES,
    HashEncoding,
    _balanced_level_order,
    hash_encode_numba,
    hash_encode_torch,
    hashgrid_layout,
)


def _single_level(res: int, log2_table_size: int, features: int = 2, backend: str = "torch") -> HashEncoding:
    return HashEncoding(1, features, log2_table_size, res, res, backend=backend)


def _dense_index(i: int, j: int, k: int, res: int) -> int:
    return i + j * (res + 1) + k * (res + 1) ** 2


def test_layout_paper_defaults():
    lay = hashgrid_layout(16, 19, 16, 2048)
    assert lay.resolutions[0] == 16 and lay.resolutions[-1] == 2048
    assert all(b > a for a, b in zip(lay.resolutions, lay.resolutions[1:]))
    t = 1 << 19
    for res, size, hashed in zip(lay.resolutions, lay.sizes, lay.hashed):
        assert hashed == ((res + 1) ** 3 > t)
        assert size == min(t, (res + 1) ** 3)
    assert lay.offsets[0] == 0 and lay.n_entries == sum(lay.sizes)
    assert not lay.hashed[0] and lay.hashed[-1]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_exact_at_grid_vertices_of_a_dense_level(backend):
    res = 4
    enc = _single_level(res, 12, backend=backend)
    assert not enc.layout.hashed[0]
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    ijk = torch.tensor(list(itertools.product(range(res + 1), repeat=3)))
    out = enc(ijk.float() / res)
    idx = torch.tensor([_dense_index(i, j, k, res) for i, j, k in ijk.tolist()])
    torch.testing.assert_close(out, enc.table.detach()[idx], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_linear_along_an_edge_and_exact_for_linear_fields(backend):
    res = 4
    enc = _single_level(res, 12, features=2, backend=backend)
    ijk = torch.tensor(list(itertools.product(range(res + 1), repeat=3))).float()
    idx = torch.tensor([_dense_index(i, j, k, res) for i, j, k in ijk.long().tolist()])
    a = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.5]])
    with torch.no_grad():
        enc.table[idx] = ijk @ a + torch.tensor([0.1, -0.2])
    # along the edge from vertex (1, 2, 3) to (2, 2, 3): linear in the parameter
    s = torch.linspace(0, 1, 11)
    x = (torch.tensor([1.0, 2.0, 3.0]) + s[:, None] * torch.tensor([1.0, 0.0, 0.0])) / res
    out = enc(x)
    v0, v1 = enc.table.detach()[_dense_index(1, 2, 3, res)], enc.table.detach()[_dense_index(2, 2, 3, res)]
    torch.testing.assert_close(out, (1 - s[:, None]) * v0 + s[:, None] * v1, rtol=0, atol=1e-5)
    # trilinear interpolation reproduces a linear field everywhere
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(enc(x), (x * res) @ a + torch.tensor([0.1, -0.2]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_hashed_level_uses_the_papers_spatial_hash(backend):
    res, log2_t = 64, 10
    enc = _single_level(res, log2_t, features=2, backend=backend)
    assert enc.layout.hashed[0]
    t = 1 << log2_t
    with torch.no_grad():
        enc.table.copy_(torch.arange(2 * t, dtype=torch.float32).reshape(t, 2))
    verts = [(0, 0, 0), (1, 2, 3), (63, 64, 17), (64, 64, 64), (5, 40, 33)]
    out = enc(torch.tensor(verts, dtype=torch.float32) / res)
    for (i, j, k), row in zip(verts, out):
        h = ((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) & 0xFFFFFFFF  # uint32 as in the CUDA code
        assert row.tolist() == [2.0 * (h % t), 2.0 * (h % t) + 1.0]


def _touched_entries(x: torch.Tensor, enc: HashEncoding) -> set[int]:
    """Table rows read by the 8 corners of every level, computed the slow way."""
    lay = enc.layout
    touched = set()
    for p in x.tolist():
        for res, size, hashed, off in zip(lay.resolutions, lay.sizes, lay.hashed, lay.offsets):
            cell = [min(int(c * res), res - 1) for c in p]
            for bits in itertools.product((0, 1), repeat=3):
                i, j, k = (c + b for c, b in zip(cell, bits))
                if hashed:
                    idx = ((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % size
                else:
                    idx = _dense_index(i, j, k, res)
                touched.add(off + idx)
    return touched


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_gradients_reach_exactly_the_touched_table_entries(backend):
    enc = HashEncoding(4, 2, 12, 4, 64, backend=backend)
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(1))
    up = torch.randn(len(x), enc.out_dim, generator=torch.Generator().manual_seed(3))
    (enc(x) * up).sum().backward()
    grad_rows = set(torch.nonzero(enc.table.grad.abs().sum(-1) > 0)[:, 0].tolist())
    assert grad_rows == _touched_entries(x, enc)


def test_reference_gradient_also_reaches_points():
    enc = HashEncoding(2, 2, 12, 4, 8, backend="auto")
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    x = torch.rand(5, 3, requires_grad=True)
    assert not enc.uses_numba(x)
    enc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_numba_matches_reference_forward_and_table_gradients():
    enc = HashEncoding()  # paper defaults: 16 levels, 2^19 table, N_max 2048
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(3000, 3, generator=g), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.2, -0.1, 0.5]])])
    up = torch.randn(len(x), enc.out_dim, generator=g)
    grads = []
    outs = []
    for fn in (hash_encode_torch, hash_encode_numba):
        enc.table.grad = None
        out = fn(x, enc.table, enc.layout)
        (out * up).sum().backward()
        outs.append(out.detach())
        grads.append(enc.table.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_numba_table_gradient_is_the_same_on_one_and_on_all_threads():
    """The backward kernel hands levels to threads in a balanced order: the order must not change
    a single bit of the gradient (each level's slice is summed by one thread, points in order)."""
    import numba

    enc = HashEncoding()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2000, 3, generator=g)
    up = torch.randn(len(x), enc.out_dim, generator=g)
    before = torch.get_num_threads()
    grads = []
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            torch.set_num_threads(n)  # the kernels follow torch's thread count
            enc.table.grad = None
            (hash_encode_numba(x, enc.table, enc.layout) * up).sum().backward()
            grads.append(enc.table.grad.clone())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_balanced_level_order_is_a_permutation_with_even_shares(threads):
    layout = hashgrid_layout(16, 19, 16, 2048)
    order = _balanced_level_order(layout, threads)
    assert sorted(order.tolist()) == list(range(16))
    runs = [order[t * 16 // threads : (t + 1) * 16 // threads] for t in range(threads)]  # numba's contiguous shares
    work = [sum(layout.sizes[lv] for lv in run) for run in runs]
    assert max(work) - min(work) <= max(layout.sizes)  # at most one level's table apart


def test_empty_input_and_backend_choice():
    enc = HashEncoding(2, 2, 12, 4, 8)
    out = enc(torch.zeros(0, 3))
    assert out.shape == (0, 4)
    assert enc.uses_numba(torch.zeros(1, 3))
    assert not HashEncoding(2, 4, 12, 4, 8).uses_numba(torch.zeros(1, 3))  # F != 2: reference
    with pytest.raises(ValueError):
        HashEncoding(backend="cuda")


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one thread (and far faster when other processes share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hash_encoding_fits_a_smooth_3d_function(one_thread):
    torch.manual_seed(0)
    enc = HashEncoding(8, 2, 14, 4, 64)
    head = torch.nn.Sequential(torch.nn.Linear(enc.out_dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2, eps=1e-15)

    def target(p):
        return torch.sin(6.0 * p[:, 0]) * torch.cos(4.0 * p[:, 1]) + p[:, 2] ** 2

    x_test = torch.rand(1000, 3)
    for _ in range(300):
        x = torch.rand(2048, 3)
        loss = ((head(enc(x))[:, 0] - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = ((head(enc(x_test))[:, 0] - target(x_test)) ** 2).mean()
    assert mse < 2e-3, float(mse)
