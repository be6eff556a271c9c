"""An unbounded (contracted) Instant-NGP bakes into a contracted NerfTree that renders like it."""

import numpy as np
import torch

from turbonerf.bake.fields import baking_fields
from turbonerf.bake.nerftree import CONTRACTED_BOX, bake
from turbonerf.bake.render import TreeRenderer
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.rays import RayBundle


def test_a_contracted_instant_ngp_bakes_into_a_tree_that_renders_like_it():
    torch.manual_seed(0)
    # a smooth field (coarse hash levels) so that a 64^3 x 2^3 tree resolves it
    cfg = InstantNGPConfig(n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=24, hidden=16,
                           grid_resolution=16, steps_per_diagonal=256)
    model = InstantNGP(cfg, torch.tensor([[-24.0] * 3, [24.0] * 3])).eval()
    with torch.no_grad():  # a varying thin medium, not a uniform wall: features away from 0, raw densities < 0
        model.field.encoding.table.uniform_(-1.0, 1.0)
        model.field.density_mlp[-1].weight[0].abs_().mul_(-16.0)
    inner = model.baking_inner_box()
    assert inner is not None
    fields = baking_fields(model, sh_degree=4, n_dirs=32)
    tree = bake(fields, CONTRACTED_BOX, coarse_res=64, fine_res=2, threshold=1e-3, dtype="float32", progress=False,
                inner_box=inner.numpy())
    assert tree.contracted and np.allclose(tree.inner_box, inner.numpy())
    n = 400
    o = torch.rand(n, 3) - 0.5  # cameras inside the inner box, looking everywhere
    d = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    rays = RayBundle(o, d, d, torch.full((n,), 0.05), torch.full((n,), 4.0))  # into the contracted shell
    bg = torch.tensor([0.0, 0.0, 0.0])
    with torch.no_grad():
        ref = model(rays, bg)
    renderer = TreeRenderer(tree, backend="numba", step=model.step_size, t_min=1e-4, cone_angle=cfg.cone_angle)
    out = renderer(rays, bg)
    assert 0.2 < float(ref["opacity"].mean()) < 0.999  # neither empty nor a wall
    assert float((out["opacity"] - ref["opacity"]).abs().mean()) < 0.01
    assert float((out["rgb"] - ref["rgb"]).abs().mean()) < 0.02
