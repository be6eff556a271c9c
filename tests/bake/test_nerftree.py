import json
import math

import numpy as np
import pytest
import torch

from tree_helpers import random_tree
from turbonerf.bake.nerftree import (
    BakeShare,
    BakingFields,
    bake,
    cells_from_index,
    load_tree,
    read_tree_header,
    save_tree,
    tile_order,
    visible_cells,
)
from turbonerf.bake.render import TreeRenderer, render_tree
from turbonerf.cameras import Cameras
from turbonerf.data.synthetic import look_at
from turbonerf.encodings.sh import sh_basis
from turbonerf.errors import TurboNerfError
from turbonerf.rays import image_ray_bundle


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_save_load_round_trip_is_bit_exact(tmp_path, dtype):
    tree = random_tree(dtype=dtype)
    path = tmp_path / "t.safetensors"
    save_tree(path, tree, info={"note": "test"})
    back = load_tree(path)
    for name in ("index", "density", "sh", "aabb", "sh_row"):
        a, b = getattr(tree, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    assert back.sh_degree == tree.sh_degree and back.version == 2
    header = read_tree_header(path)
    assert header["info"] == {"note": "test"} and header["n_blocks"] == tree.n_blocks
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind
    # the sparse on-disk index holds 4 bytes per block, not a dense grid
    assert path.stat().st_size < tree.nbytes() + 4096


def test_the_pool_stores_colour_only_for_voxels_with_density():
    tree = random_tree()  # about 30% of its voxels have density 0
    has = tree.density.reshape(-1) > 0
    assert 0 < has.mean() < 0.9 and tree.sh.shape == (int(has.sum()), 3 * tree.n_coeffs)
    rows = tree.sh_row.reshape(-1)
    assert np.array_equal(rows[has], np.arange(has.sum())) and np.all(rows[~has] == -1)
    dense = tree.dense_sh()
    assert np.all(dense.reshape(-1, dense.shape[-1])[~has] == 0)
    assert np.array_equal(dense.reshape(-1, dense.shape[-1])[has], tree.sh)
    assert tree.nbytes() < 4 * tree.n_blocks + tree.density.nbytes * (1 + 3 * tree.n_coeffs)


def test_version_1_files_with_a_dense_sh_pool_are_still_read(tmp_path):
    from safetensors.numpy import save_file

    tree = random_tree()
    dense = tree.dense_sh()
    dense[tree.density == 0] = 7.0  # v1 kept (meaningless) colour for empty voxels: it is dropped
    header = {"version": 1, "coarse_res": tree.coarse_res, "fine_res": tree.fine_res, "n_blocks": tree.n_blocks,
              "sh_degree": tree.sh_degree, "dtype": "float16", "color_activation": "sigmoid", "info": {}}
    arrays = {"cells": cells_from_index(tree.index), "density": tree.density, "sh": dense, "aabb": tree.aabb}
    path = tmp_path / "v1.safetensors"
    save_file(arrays, str(path), metadata={"turbonerf_nerftree": json.dumps(header)})
    back = load_tree(path)
    assert back.version == 1 and np.array_equal(back.sh, tree.sh) and np.array_equal(back.index, tree.index)
    save_tree(tmp_path / "v2.safetensors", back)  # re-saved in the current format
    assert read_tree_header(tmp_path / "v2.safetensors")["version"] == 2


def test_truncated_or_foreign_or_newer_files_are_refused(tmp_path):
    tree = random_tree()
    path = tmp_path / "t.safetensors"
    save_tree(path, tree)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(TurboNerfError, match="cut.safetensors"):
        load_tree(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tree at all")
    with pytest.raises(TurboNerfError, match="junk.safetensors"):
        load_tree(junk)
    with pytest.raises(TurboNerfError, match="not found"):
        load_tree(tmp_path / "missing.safetensors")
    # a header from the future, and a header whose shapes lie
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path))
    for change, message in ((dict(version=99), "newer"), (dict(fine_res=3), "do not match")):
        header = {**read_tree_header(path), **change}
        bad = tmp_path / "bad.safetensors"
        save_file(arrays, str(bad), metadata={"turbonerf_nerftree": json.dumps(header)})
        with pytest.raises(TurboNerfError, match=message):
            load_tree(bad)


def test_validate_catches_inconsistent_trees():
    tree = random_tree()
    tree.validate()
    bad = random_tree()
    bad.index[bad.index >= 0] = 0  # every cell points at block 0
    with pytest.raises(TurboNerfError, match="one-to-one|occupied cells"):
        bad.validate()
    with pytest.raises(TurboNerfError, match="SH pool"):
        type(tree)(tree.index, tree.density, tree.sh[..., :-1], tree.aabb, tree.sh_degree).validate()
    with pytest.raises(TurboNerfError, match="SH pool"):  # one row per voxel with density, no more
        type(tree)(tree.index, tree.density, np.concatenate([tree.sh, tree.sh[:1]]), tree.aabb, tree.sh_degree).validate()


def test_tile_order_groups_cells_by_tile():
    cells = np.arange(16**3)
    order = tile_order(cells, 16)
    ijk = np.stack(np.unravel_index(cells[order], (16,) * 3), -1)
    tiles = (ijk // 8) @ np.array([4, 2, 1])
    assert np.all(np.diff(tiles) >= 0)  # tile by tile
    assert np.array_equal(np.sort(cells[order]), cells)
    tree = random_tree()
    assert np.array_equal(np.sort(cells_from_index(tree.index)), np.flatnonzero(tree.index.reshape(-1) >= 0))


def _camera(res: int, eye=(0.0, -3.0, 0.0)) -> Cameras:
    f = 0.5 * res / math.tan(0.5 * 0.69)
    c2w = torch.tensor(look_at(eye), dtype=torch.float32)[None]
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(c2w, t(f), t(f), t(res / 2), t(res / 2), res, res)


def _red_sphere_fields(radius=0.5) -> BakingFields:
    """An analytic field: density 100 inside a sphere, colour pure red from every direction."""
    red_logit = torch.tensor([8.0, -8.0, -8.0]) / sh_basis(torch.zeros(1, 3), 1)[0, 0]

    def density_fn(x):
        return 100.0 * (x.norm(dim=-1) < radius).float()

    def voxel_fn(x, select=None):
        sigma = density_fn(x)
        n = x.shape[0] if select is None else int(select(sigma).sum())
        return sigma, red_logit.to(x.device).expand(n, 3)[:, :, None].clone()

    return BakingFields(density_fn, voxel_fn, sh_degree=1, description="red sphere")


def test_baked_analytic_sphere_renders_a_red_disc():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    tree = bake(_red_sphere_fields(), aabb, coarse_res=16, fine_res=4, progress=False)
    assert 0 < tree.occupied_fraction() < 0.2
    res = 48
    cams = _camera(res)
    rays = image_ray_bundle(cams, 0, 1.0, 5.0)
    bg = torch.ones(3)
    for lookup in ("nearest", "trilinear"):
        rend = TreeRenderer(tree, "numba", lookup=lookup)
        out = rend(rays, bg)
        rgb = out["rgb"].reshape(res, res, 3)
        centre = rgb[res // 2, res // 2]
        assert centre[0] > 0.95 and centre[1] < 0.05 and centre[2] < 0.05
        assert torch.allclose(rgb[0, 0], bg) and torch.allclose(rgb[-1, -1], bg)
        # silhouette: projected radius f * r / sqrt(d^2 - r^2) of the true sphere
        r_px = float(cams.fx[0]) * 0.5 / math.sqrt(3.0**2 - 0.5**2)
        area = float((out["opacity"] > 0.5).sum())
        assert abs(math.sqrt(area / math.pi) - r_px) < 0.1 * r_px
        depth = out["depth"].reshape(res, res)[res // 2, res // 2]
        assert abs(float(depth) - 2.5) < 0.05  # the front of the sphere


def _smooth_fields() -> BakingFields:
    """A field with a different density and colour at every point (so a misplaced block shows)."""

    def density_fn(x):
        return 50.0 * torch.relu(0.6 - x.norm(dim=-1)) * (1.0 + torch.sin(7.0 * x[:, 0]) ** 2)

    def voxel_fn(x, select=None):
        sigma = density_fn(x)
        keep = torch.ones_like(sigma, dtype=torch.bool) if select is None else select(sigma)
        rows = torch.stack([torch.sin(3.0 * x[keep] + k) for k in range(4)], -1)  # [S, 3, 4]
        return sigma, rows

    return BakingFields(density_fn, voxel_fn, sh_degree=2, description="smooth")


def test_a_bake_shared_by_two_processes_is_the_tree_one_bakes():
    """Two threads stand in for two ranks; the shares meet at barriers, as the app's gloo calls do."""
    import threading

    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    kw = dict(coarse_res=16, fine_res=2, batch=256, progress=False)  # 32 cells per batch: 5 batches to share
    whole = bake(_smooth_fields(), aabb, **kw)
    world, meet = 2, threading.Barrier(2)
    occs, parts, trees = [None] * world, [None] * world, [None] * world

    def share(rank: int) -> BakeShare:
        def slices(d):
            return (np.arange(d) // 4) % world == rank

        def combine(occ):
            occs[rank] = occ
            meet.wait()
            return np.logical_or(*occs)

        def span(n, align):
            chunks = -(-n // align)
            return min(n, rank * chunks // world * align), min(n, (rank + 1) * chunks // world * align)

        def join(blocks):
            parts[rank] = blocks
            meet.wait()
            return parts if rank == 0 else None

        return BakeShare(slices, combine, span, join)

    def run(rank):
        trees[rank] = bake(_smooth_fields(), aabb, share=share(rank), **kw)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trees[1] is None and all(p.cells.size for p in parts)  # both ranks baked some blocks
    assert not occs[0][4:8].any() and occs[1][4:8].any()  # rank 0 did not test slices 4..7
    for name in ("index", "density", "sh", "sh_row"):
        assert np.array_equal(getattr(trees[0], name), getattr(whole, name)), name


def _looking(eye, target, like: Cameras) -> Cameras:
    c2w = torch.tensor(look_at(eye, target), dtype=torch.float32)[None]
    return Cameras(c2w, like.fx, like.fy, like.cx, like.cy, like.width, like.height)


def test_visibility_culling_drops_cells_no_camera_sees():
    aabb = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
    cams = _camera(32, eye=(0.0, -3.0, 0.0))
    assert visible_cells(aabb, 8, cams).all()  # the whole box is in view
    assert not visible_cells(aabb, 8, _looking((0.0, -3.0, 0.0), (0.0, -6.0, 0.0), cams)).any()  # looking away
    inside = visible_cells(aabb, 8, _looking((0.0, -0.9, 0.0), (0.0, -5.0, 0.0), cams))
    assert inside[:, :2, :].any() and not inside[:, 4:, :].any()  # only what lies in front of it
    culled = bake(_red_sphere_fields(), torch.as_tensor(aabb), coarse_res=8, fine_res=2, cameras=_looking((0.0, -3.0, 0.0), (0.0, -6.0, 0.0), cams), progress=False)
    assert culled.n_blocks == 0
    kept = bake(_red_sphere_fields(), torch.as_tensor(aabb), coarse_res=8, fine_res=2, cameras=cams, progress=False)
    full = bake(_red_sphere_fields(), torch.as_tensor(aabb), coarse_res=8, fine_res=2, progress=False)
    assert kept.n_blocks == full.n_blocks > 0


def test_visibility_of_contracted_cells_is_tested_in_the_world():
    """A camera inside the inner box looking down -y sees the contracted cells in front of it, out
    to the far shell, and not those close behind it (far-shell cells span so much of the world that
    their bounding spheres reach everywhere: the test stays conservative there)."""
    box = np.array([[-1.0] * 3, [1.0] * 3])
    cams = _looking((0.0, 0.0, 0.0), (0.0, -5.0, 0.0), _camera(32))
    seen = visible_cells(np.array([[-2.0] * 3, [2.0] * 3]), 16, cams, inner_box=box)
    assert seen[7:9, 0, 7:9].all() and seen[7:9, 4, 7:9].all()  # ahead: the far shell and the inner box
    assert not seen[5:11, 10:12, 5:11].any()  # behind the camera, inside the inner box
    assert 0.05 < seen.mean() < 0.6


def test_render_tree_matches_between_backends_on_the_baked_sphere():
    tree = bake(_red_sphere_fields(), torch.tensor([[-1.0] * 3, [1.0] * 3]), coarse_res=8, fine_res=2, progress=False)
    rays = image_ray_bundle(_camera(16), 0, 1.0, 5.0)
    a = render_tree(tree, rays.origins, rays.directions, 1.0, 5.0, torch.zeros(3), backend="numba")
    b = render_tree(tree, rays.origins, rays.directions, 1.0, 5.0, torch.zeros(3), backend="torch")
    assert torch.allclose(a[0], b[0], atol=1e-3) and torch.allclose(a[2], b[2], atol=1e-3)
