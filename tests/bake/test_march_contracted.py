"""Contracted NerfTrees (unbounded scenes): the numba kernel against the numpy reference, the
skip bound, the bounded special case, and the file format."""

import numpy as np
import pytest
import torch

from tree_helpers import random_tree
from turbonerf.bake.march_cpu import CONTRACTION_LIPSCHITZ, march_cpu_contracted
from turbonerf.bake.march_numpy import cone_edges, march_numpy, march_numpy_contracted
from turbonerf.bake.nerftree import CONTRACTED_BOX, NerfTree, index_from_cells, load_tree, read_tree_header, save_tree
from turbonerf.bake.render import TreeRenderer
from turbonerf.errors import TurboNerfError
from turbonerf.fields.contraction import contract_inf
from turbonerf.samplers.occupancy import cone_positions

INNER = np.array([[-1.0, -0.5, 0.0], [2.0, 2.5, 3.0]], np.float32)  # a 3-unit box, off the origin
BG = np.array([1.0, 0.5, 0.0])


def contracted_tree(coarse_res=32, fine_res=2, seed=0, density_scale=1.0) -> NerfTree:
    """Occupied cells in two clusters of contracted space (one inside [-1, 1]^3, one in the outer
    shell) so that rays cross empty macro blocks, occupied ones and the shell."""
    rng = np.random.default_rng(seed)
    c = (np.arange(coarse_res) + 0.5) / coarse_res * 4.0 - 2.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    inner = (np.abs(x - 0.3) < 0.5) & (np.abs(y + 0.2) < 0.4) & (np.abs(z) < 0.6)
    shell = (np.maximum(np.abs(x), np.maximum(np.abs(y), np.abs(z))) > 1.6) & (x > 0.5)
    cand = np.flatnonzero((inner | shell).reshape(-1) & (rng.random(coarse_res**3) < 0.6)).astype(np.int32)
    m, f = len(cand), fine_res
    dens = rng.random((m, f, f, f)) * 8 * density_scale * (rng.random((m, f, f, f)) < 0.7)
    sh = rng.normal(size=(m, f, f, f, 27))
    tree = NerfTree.from_dense(index_from_cells(cand, coarse_res), dens.astype(np.float16), sh.astype(np.float16), CONTRACTED_BOX, 3)
    tree.inner_box = INNER.copy()
    return tree


def capture_rays(n=600, seed=1):
    """Rays from inside the inner box in all directions (a phone capture's cameras stand inside)."""
    rng = np.random.default_rng(seed)
    o = INNER.mean(0) + rng.uniform(-1.0, 1.0, size=(n, 3))
    d = rng.normal(size=(n, 3))
    return o.astype(np.float32), (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def test_cone_edges_match_the_samplers_cone_positions():
    near, dt = np.array([0.05, 1.0, 3.0]), np.array([0.005, 0.01, 0.005])
    k = np.arange(0, 1025, 7, dtype=np.float64)
    ref = cone_positions(torch.tensor(near), torch.tensor(dt), torch.tensor(k), 1.0 / 256).numpy()
    np.testing.assert_allclose(cone_edges(near, dt, k, 1.0 / 256), ref, rtol=1e-12)


def test_the_contraction_moves_points_at_most_four_thirds_as_far():
    """The skip of the contracted kernel relies on this bound (L-inf in, L-inf out)."""
    torch.manual_seed(0)
    worst = 0.0
    for s in (0.6, 1.5, 4.0, 50.0):
        x = torch.randn(100_000, 3, dtype=torch.float64) * s
        d = torch.randn(100_000, 3, dtype=torch.float64) * 1e-5
        ratio = (contract_inf(x + d) - contract_inf(x)).abs().amax(-1) / d.abs().amax(-1)
        worst = max(worst, float(ratio.max()))
    assert 1.2 < worst <= CONTRACTION_LIPSCHITZ + 1e-6


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_numba_matches_numpy_on_a_contracted_tree(lookup):
    tree = contracted_tree()
    o, d = capture_rays()
    args = (o, d, d, np.full(len(o), 0.05, np.float32), np.full(len(o), 1e4, np.float32), BG, 0.02, 1.0 / 64)
    ref = march_numpy_contracted(tree, *args, lookup)
    assert 0.1 < ref["opacity"].mean() < 0.9 and ref["samples"].max() > 10  # neither empty nor trivial
    out = march_cpu_contracted(tree, tree.inner_box, *args, lookup)
    np.testing.assert_array_equal(out["samples"], ref["samples"])
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-4, rtol=1e-5)


def test_soft_long_rays_and_a_step_cap():
    """More samples with density than one colour batch, and rays cut by ``max_steps``."""
    tree = contracted_tree(density_scale=0.02, seed=2)
    o, d = capture_rays(seed=3)
    for max_steps in (1024, 40):
        args = (o, d, d, np.full(len(o), 0.05, np.float32), np.full(len(o), 1e4, np.float32), BG, 0.01, 1.0 / 128)
        ref = march_numpy_contracted(tree, *args, "nearest", max_steps=max_steps)
        out = march_cpu_contracted(tree, tree.inner_box, *args, "nearest", max_steps=max_steps)
        np.testing.assert_array_equal(out["samples"], ref["samples"])
        np.testing.assert_allclose(out["rgb"], ref["rgb"], atol=1e-4, rtol=1e-5)
    assert ref["samples"].max() <= 40


def test_inside_the_inner_box_a_contracted_tree_renders_as_the_bounded_tree():
    """Without cone stepping and with content only where the contraction is the identity, the
    contracted march is the bounded march of the same voxels over the inner box."""
    small = random_tree(coarse_res=8, fine_res=2, occupancy=0.4, seed=5)  # over [-1, 1]^3
    cells = np.argwhere(small.index >= 0)
    big_index = np.full((16, 16, 16), -1, np.int32)
    big_index[cells[:, 0] + 4, cells[:, 1] + 4, cells[:, 2] + 4] = small.index[small.index >= 0]
    contracted = NerfTree(big_index, small.density, small.sh, CONTRACTED_BOX, 3, inner_box=INNER.copy())
    bounded = NerfTree(small.index, small.density, small.sh, INNER.copy(), 3)
    rng = np.random.default_rng(6)
    o = (INNER.mean(0) + rng.normal(size=(300, 3)) * 4).astype(np.float32)
    d = INNER.mean(0) + rng.uniform(-1, 1, size=(300, 3)) - o
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    near, far = np.full(300, 0.5, np.float32), np.full(300, 12.0, np.float32)
    a = march_numpy(bounded, o, d, d, near, far, BG, 0.01, "trilinear")
    b = march_cpu_contracted(contracted, INNER, o, d, d, near, far, BG, 0.01, 0.0, "trilinear", max_steps=2000)
    assert a["opacity"].mean() > 0.1
    np.testing.assert_allclose(b["rgb"], a["rgb"], atol=1e-3)
    np.testing.assert_allclose(b["opacity"], a["opacity"], atol=1e-3)


def test_contracted_trees_are_saved_as_version_3_and_refused_when_inconsistent(tmp_path):
    tree = contracted_tree()
    save_tree(tmp_path / "c.safetensors", tree)
    assert read_tree_header(tmp_path / "c.safetensors")["version"] == 3
    back = load_tree(tmp_path / "c.safetensors")
    assert back.contracted and np.array_equal(back.inner_box, tree.inner_box)
    assert back.voxel_size() == pytest.approx(1.5 * 4.0 / (32 * 2))  # world units inside the inner box
    bounded = random_tree()
    save_tree(tmp_path / "b.safetensors", bounded)
    assert read_tree_header(tmp_path / "b.safetensors")["version"] == 2 and not load_tree(tmp_path / "b.safetensors").contracted
    tree.aabb = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
    with pytest.raises(TurboNerfError, match="contracted tree's box"):
        save_tree(tmp_path / "bad.safetensors", tree)


def test_tree_renderer_marches_contracted_trees_on_the_cpu_and_refuses_torch():
    tree = contracted_tree()
    o, d = capture_rays(n=50)
    r = TreeRenderer(tree, backend="auto", step=0.02, cone_angle=1.0 / 64)
    assert r.backend == "numba"
    out = r.render_rays(torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(d), torch.tensor(0.05), torch.tensor(1e4), torch.tensor(BG))
    ref = TreeRenderer(tree, backend="numpy", step=0.02, cone_angle=1.0 / 64).render_rays(
        torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(d), torch.tensor(0.05), torch.tensor(1e4), torch.tensor(BG)
    )
    torch.testing.assert_close(out["rgb"], ref["rgb"], atol=1e-4, rtol=1e-5)
    with pytest.raises(TurboNerfError, match="torch NerfTree marcher"):
        TreeRenderer(tree, backend="torch")
