"""Procedural trees and rays shared by the NerfTree tests."""

import numpy as np

from turbonerf.bake.nerftree import NerfTree, index_from_cells


def random_tree(coarse_res=8, fine_res=2, sh_degree=3, occupancy=0.3, seed=0, dtype=np.float16, shuffle=True) -> NerfTree:
    """A procedural tree over [-1, 1]^3: random occupancy, densities (some exactly 0) and SH."""
    rng = np.random.default_rng(seed)
    cells = np.flatnonzero(rng.random(coarse_res**3) < occupancy).astype(np.int32)
    if shuffle:
        cells = rng.permutation(cells)
    m, f = len(cells), fine_res
    dens = rng.random((m, f, f, f)) * 20 * (rng.random((m, f, f, f)) < 0.7)
    sh = rng.normal(size=(m, f, f, f, 3 * sh_degree**2))
    aabb = np.array([[-1, -1, -1], [1, 1, 1]], np.float32)
    return NerfTree.from_dense(index_from_cells(cells, coarse_res), dens.astype(dtype), sh.astype(dtype), aabb, sh_degree)


def random_rays(n=1500, seed=1, radius=3.0):
    """Rays from a sphere of ``radius`` towards random points of the box (float32 numpy)."""
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 3))
    o = o / np.linalg.norm(o, axis=1, keepdims=True) * radius
    d = rng.uniform(-0.9, 0.9, size=(n, 3)) - o
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return o.astype(np.float32), d.astype(np.float32)
