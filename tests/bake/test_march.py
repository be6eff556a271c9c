import numpy as np
import pytest
import torch

from tree_helpers import random_rays, random_tree
from turbonerf.bake.march_cpu import (
    COLOUR_BATCH,
    half_bits_to_f64,
    march_cpu,
    prepare_cpu,
    sh_basis_numba,
    tile_index,
    transmittance_table,
    voxel_masks,
)
from turbonerf.bake.march_numpy import march_numpy
from turbonerf.bake.march_torch import march_torch
from turbonerf.bake.nerftree import NerfTree, index_from_cells, sh_rows
from turbonerf.bake.render import TreeRenderer, close_terminated, render_tree
from turbonerf.encodings.sh import sh_basis
from turbonerf.rays import RayBundle

STEP = 0.01


@pytest.fixture
def tree():
    return random_tree()


def _reference(tree, o, d, lookup, near=1.0, far=5.0, bg=(1.0, 0.5, 0.0)):
    n = len(o)
    return march_numpy(tree, o, d, d, np.full(n, near, np.float32), np.full(n, far, np.float32), np.array(bg), STEP, lookup)


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_numba_matches_numpy_reference(tree, lookup):
    o, d = random_rays()
    ref = _reference(tree, o, d, lookup)
    assert 0.2 < ref["opacity"].mean() < 0.95 and ref["samples"].max() > 5  # the scene is neither empty nor trivial
    out = march_cpu(tree, o, d, d, 1.0, 5.0, np.array([1.0, 0.5, 0.0]), STEP, lookup)
    np.testing.assert_array_equal(out["samples"], ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sh_degree", [1, 2, 4])
def test_numba_matches_numpy_reference_for_every_sh_degree(sh_degree):
    """Degrees 2 and 3 have constant-size colour loops the compiler unrolls; the others the
    general loop."""
    tree = random_tree(sh_degree=sh_degree, seed=sh_degree)
    o, d = random_rays()
    ref = _reference(tree, o, d, "nearest")
    assert ref["opacity"].mean() > 0.2
    out = march_cpu(tree, o, d, d, 1.0, 5.0, np.array([1.0, 0.5, 0.0]), STEP, "nearest")
    np.testing.assert_array_equal(out["samples"], ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fine_res", [2, 3])
def test_numba_matches_reference_on_soft_long_rays(fine_res):
    """Rays with more samples of density than one colour batch (COLOUR_BATCH), and a fine
    resolution that is not a power of two (the kernel's general voxel arithmetic)."""
    tree = random_tree(coarse_res=12, fine_res=fine_res, occupancy=0.5, seed=3)
    tree.density[...] = (tree.density.astype(np.float32) * 0.02).astype(tree.density.dtype)
    o, d = random_rays(n=400, seed=4)
    ref = _reference(tree, o, d, "nearest")
    assert ref["samples"].max() > 2 * COLOUR_BATCH
    out = march_cpu(tree, o, d, d, 1.0, 5.0, np.array([1.0, 0.5, 0.0]), STEP, "nearest")
    np.testing.assert_array_equal(out["samples"], ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, fine_res", [(np.float32, 2), (np.float16, 5)])
def test_numba_matches_reference_for_float32_pools_and_blocks_without_masks(dtype, fine_res):
    """float32 pools take the exponential instead of the float16 table; D_f = 5 blocks (125 voxels)
    have no 64-bit occupancy mask and read sh_row and the density instead."""
    tree = random_tree(coarse_res=10, fine_res=fine_res, dtype=dtype, seed=5)
    assert (prepare_cpu(tree).vox_mask.size > 0) == (fine_res**3 <= 64)
    o, d = random_rays(n=300, seed=6)
    ref = _reference(tree, o, d, "nearest")
    out = march_cpu(tree, o, d, d, 1.0, 5.0, np.array([1.0, 0.5, 0.0]), STEP, "nearest")
    np.testing.assert_array_equal(out["samples"], ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0)


def test_voxel_masks_give_every_voxels_sh_row():
    tree = random_tree(coarse_res=8, fine_res=4, occupancy=0.4, seed=7)
    tree.density[tree.density < np.median(tree.density)] = 0  # blocks with empty voxels among full ones
    mask, base = voxel_masks(tree.density)
    rows = sh_rows(tree.density).reshape(len(mask), -1)
    for m in range(len(mask)):
        for voxel in range(64):
            has = bool((int(mask[m]) >> voxel) & 1)
            assert has == (tree.density.reshape(len(mask), -1)[m, voxel] > 0)
            if has:
                assert base[m] + bin(int(mask[m]) & ((1 << voxel) - 1)).count("1") == rows[m, voxel]
    empty = voxel_masks(np.zeros((0, 4, 4, 4), np.float16))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="64-bit"):
        voxel_masks(np.ones((2, 5, 5, 5), np.float16))


def test_transmittance_table_is_the_exponential_of_every_float16_density():
    step = 0.0173
    table = transmittance_table(step)
    sigma = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    positive = np.isfinite(sigma) & (sigma > 0)
    # float32 arithmetic as the kernel's _exp32: relative error ~1e-6 only where the transmittance is below 1e-10
    np.testing.assert_allclose(table[positive], np.exp(-sigma[positive] * step), rtol=1e-6, atol=1e-12)
    assert (table[~positive & ~np.isinf(sigma)] == 1.0).all()  # zero, negative and NaN densities: no density


@pytest.fixture
def one_torch_thread():
    """Many small ops: on a shared 2-core machine OpenMP barriers dominate with 2 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_torch_matches_numpy_reference(tree, lookup, one_torch_thread):
    o, d = random_rays(800)
    ref = _reference(tree, o, d, lookup)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    n = len(o)
    args = (t(o), t(d), t(d), torch.full((n,), 1.0), torch.full((n,), 5.0), torch.tensor([1.0, 0.5, 0.0]), STEP, lookup)
    exact = march_torch(tree, *args, dtype=torch.float64, samples_per_round=48)
    np.testing.assert_array_equal(exact["samples"].numpy(), ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(exact[key].numpy(), ref[key], atol=1e-5, rtol=0)
    # float32 (the GPU setting) differs only where a sample sits within rounding of a voxel face
    fast = march_torch(tree, *args)
    assert np.abs(fast["rgb"].numpy() - ref["rgb"]).mean() < 1e-4
    assert np.quantile(np.abs(fast["rgb"].numpy() - ref["rgb"]).max(1), 0.99) < 1e-4


def test_render_tree_backends_agree_and_return_like_input(tree):
    o, d = random_rays(300)
    outs = {b: render_tree(tree, o, d, 1.0, 5.0, np.ones(3), STEP, backend=b) for b in ("numpy", "numba", "torch")}
    for b in ("numba", "torch"):
        assert isinstance(outs[b][0], np.ndarray) and outs[b][0].shape == (300, 3)
        np.testing.assert_allclose(outs[b][0], outs["numpy"][0], atol=2e-3)
    rgb, depth, opac = render_tree(tree, torch.from_numpy(o), torch.from_numpy(d), 1.0, 5.0, torch.ones(3), STEP, backend="auto")
    assert isinstance(rgb, torch.Tensor) and depth.shape == (300,) and opac.shape == (300,)


def test_tile_layout_and_empty_tree_and_missing_rays():
    tree = random_tree(coarse_res=10, occupancy=0.05, seed=3)  # 10 is not a multiple of the 8-cell tile
    macro_tile, tiles = tile_index(tree.index)
    dense = np.full((16, 16, 16), -1, np.int32)
    for a, b, c in np.argwhere(macro_tile >= 0):
        dense[8 * a : 8 * a + 8, 8 * b : 8 * b + 8, 8 * c : 8 * c + 8] = tiles[macro_tile[a, b, c]]
    np.testing.assert_array_equal(dense[:10, :10, :10], tree.index)
    # rays that miss the box, and a tree with no blocks at all, give the background
    o = np.array([[3.0, 3.0, 3.0], [0.0, 0.0, 3.0]], np.float32)
    d = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], np.float32)
    empty = random_tree(occupancy=0.0)
    assert empty.n_blocks == 0
    out = march_cpu(empty, o, d, d, 0.0, 10.0, np.array([0.2, 0.3, 0.4]), STEP)
    np.testing.assert_allclose(out["rgb"], [[0.2, 0.3, 0.4]] * 2, atol=1e-6)
    assert out["opacity"].max() == 0 and out["samples"].max() == 0
    out = march_cpu(tree, o[:1], d[:1], d[:1], 0.0, 10.0, np.zeros(3), STEP)
    assert out["opacity"][0] == 0


def test_numba_half_decode_matches_numpy_for_every_bit_pattern():
    """The kernel decodes float16 pools with the CPU's half -> float conversion: all 65536 patterns
    (zeros, subnormals, infinities, NaNs) must give numpy's value."""
    bits = np.arange(65536, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float64)
    got = half_bits_to_f64(bits)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], want[~nan])


def test_numba_sh_basis_matches_torch():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(64, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for degree in range(1, 6):
        np.testing.assert_allclose(sh_basis_numba(v, degree), sh_basis(torch.from_numpy(v), degree).numpy(), atol=1e-12)


def test_tree_renderer_is_a_render_fn_and_counts_samples(tree):
    o, d = random_rays(200)
    rays = RayBundle(torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(d), torch.full((200,), 1.0), torch.full((200,), 5.0))
    rend = TreeRenderer(tree, "numba", step=STEP)
    out = rend(rays, torch.ones(3))
    assert set(out) == {"rgb", "depth", "opacity"} and out["rgb"].shape == (200, 3)
    assert rend.name == "nerftree-numba" and rend.samples_per_ray() > 0
    prepared = prepare_cpu(tree)  # a prepared tree can be reused directly
    again = march_cpu(prepared, o, d, d, 1.0, 5.0, np.ones(3), STEP)
    closed = close_terminated({k: torch.from_numpy(v) for k, v in again.items()}, torch.ones(3), rend.t_min)
    np.testing.assert_allclose(closed["rgb"].numpy(), out["rgb"].numpy(), atol=1e-6)


def uniform_tree(colour, density=50.0, coarse_res=4):
    """Every cell occupied by a medium of one density and one (view-independent) colour."""
    cells = np.arange(coarse_res**3, dtype=np.int32)
    logit = np.log(np.asarray(colour) / (1 - np.asarray(colour))) / 0.28209479177387814  # sigmoid(C0 * sh) = colour
    dens = np.full((len(cells), 2, 2, 2), density, np.float32)
    sh = np.broadcast_to(logit, (len(cells), 2, 2, 2, 3)).astype(np.float32)
    aabb = np.array([[-1, -1, -1], [1, 1, 1]], np.float32)
    return NerfTree.from_dense(index_from_cells(cells, coarse_res), dens, sh, aabb, 1)


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_a_ray_stopped_early_shows_the_surface_not_the_background(backend):
    colour = np.array([0.2, 0.6, 0.4])
    tree = uniform_tree(colour)
    o = np.array([[0.0, 0.0, -3.0], [0.0, 0.0, -3.0]], np.float32)
    d = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    near, far = np.array([1.0, 1.0], np.float32), np.array([5.0, 2.02], np.float32)  # the second ray barely enters
    bg = np.ones(3, np.float32)
    raw = march_numpy(tree, o, d, d, near, far, bg, 0.05, t_min=0.1)
    assert raw["opacity"][0] >= 0.9 and np.abs(raw["rgb"][0] - colour).max() > 0.01  # the background shows through T
    rgb, depth, opacity = render_tree(tree, o, d, near, far, bg, step=0.05, backend=backend, t_min=0.1)
    np.testing.assert_allclose(rgb[0], colour, atol=1e-5)  # stopped: the medium's colour
    assert opacity[0] == 1.0 and 2.0 < depth[0] < 2.5
    assert opacity[1] < 0.9  # not stopped: unchanged
    np.testing.assert_allclose(rgb[1], raw["rgb"][1], atol=1e-6)
    np.testing.assert_allclose(opacity[1], raw["opacity"][1], atol=1e-6)


def test_task_order_deals_every_task_once_and_gives_each_thread_every_band():
    from turbonerf.bake.march_cpu import task_order

    order = task_order(n_rays=64 * 1000, block=64, threads=2, run=10)
    assert sorted(order.tolist()) == list(range(1000))
    first, second = order[:500], order[500:]  # what each of 2 threads gets from numba's static split
    assert set((first // 10) % 2) == {0} and set((second // 10) % 2) == {1}  # alternate runs of 10
    for share in (first, second):  # every band of the image, in order
        assert (share < 500).sum() == 250 and np.all(np.diff(share) > 0)
    assert task_order(100, 64, 1).tolist() == [0, 1] and task_order(0, 64, 2).size == 0
