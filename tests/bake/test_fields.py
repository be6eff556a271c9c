import math

import torch

from turbonerf.bake.fields import baking_fields, cap_directions, fibonacci_directions, viewing_directions, field_baking_fields, hash_field_color_logits, nerf_mlp_color_logits
from turbonerf.cameras import Cameras, camera_rays
from turbonerf.encodings.sh import eval_sh
from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.methods.vanilla_nerf import VanillaNeRF, VanillaNeRFConfig
from turbonerf.render.paths import look_at

AABB = torch.tensor([[-1.5] * 3, [1.5] * 3])


def _points(n=64, seed=0):
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) - 0.5) * 2.0


def test_vanilla_fields_split_the_view_branch_exactly():
    model = VanillaNeRF(VanillaNeRFConfig(depth=2, width=32, color_width=16), AABB).eval()
    x, dirs = _points(), fibonacci_directions(5).float()
    with torch.no_grad():
        # float64, so that the comparison is about the algebra, not about which matmul kernel the host picks
        # (a CI host summed the float32 products in another order and differed by 6e-5)
        model64 = VanillaNeRF(VanillaNeRFConfig(depth=2, width=32, color_width=16), AABB.double()).double().eval()
        model64.load_state_dict(model.state_dict())
        logits = nerf_mlp_color_logits(model64.fine, model64.fine.trunk_features(x.double()), dirs.double())
        for j in range(5):
            _, rgb = model64.fine(x.double(), dirs[j].double().expand(len(x), 3))
            torch.testing.assert_close(torch.sigmoid(logits[:, j]).float(), rgb, atol=1e-6, rtol=0)  # forward returns float32
        fields = baking_fields(model, sh_degree=3)
        sigma, sh = fields.voxel_fn(x)
    assert sigma.shape == (64,) and sh.shape == (64, 3, 9) and fields.candidate_fn is None
    torch.testing.assert_close(sigma, model.fine.density(x))


def test_sh_projection_recovers_a_colour_that_is_already_low_order():
    """A field whose colour logit is an SH expansion of the baked degree is baked exactly."""
    coeffs = torch.randn(3, 9, generator=torch.Generator().manual_seed(1))

    class Field(torch.nn.Module):
        def density(self, x):
            return torch.ones(len(x))

        def forward(self, x, d):
            return torch.ones(len(x)), torch.sigmoid(eval_sh(coeffs.expand(len(x), 3, 9), d) * 0.3)

    fields = field_baking_fields(Field(), sh_degree=3)
    _, sh = fields.voxel_fn(_points(4))
    torch.testing.assert_close(sh, (coeffs * 0.3).expand(4, 3, 9), atol=1e-4, rtol=0)


def test_efficient_nerf_keeps_its_own_sh_and_grid():
    cfg = EfficientNeRFConfig(coarse_depth=2, coarse_width=16, coarse_skip=1, fine_depth=2, fine_width=16, fine_skip=1, grid_resolution=8)
    model = EfficientNeRF(cfg, AABB).eval()
    x, d = _points(), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        fields = baking_fields(model, sh_degree=cfg.sh_degree)
        sigma, sh = fields.voxel_fn(x)
        raw, rgb = model.fine(x, d)
    torch.testing.assert_close(torch.sigmoid(eval_sh(sh, d)), rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(sigma, torch.nn.functional.softplus(raw))
    assert fields.candidate_fn is not None and "native" in fields.description
    assert baking_fields(model, sh_degree=2).voxel_fn(x)[1].shape == (64, 3, 4)  # truncated to fewer bands


def test_instant_ngp_fields_share_the_encoding_across_directions():
    cfg = InstantNGPConfig(n_levels=2, log2_table_size=8, max_resolution=32, hidden=16, grid_resolution=8, hash_backend="torch")
    model = InstantNGP(cfg, AABB).eval()
    x, dirs = _points(), fibonacci_directions(4).float()
    with torch.no_grad():
        sigma, h = model.field.geometry(x)
        logits = hash_field_color_logits(model.field, h, dirs)
        for j in range(4):
            _, rgb = model.field(x, dirs[j].expand(len(x), 3))
            torch.testing.assert_close(torch.sigmoid(logits[:, j]), rgb, atol=1e-5, rtol=0)
        fields = baking_fields(model)
    assert fields.candidate_fn is not None and fields.voxel_fn(x)[1].shape == (64, 3, 9)


def test_nerfacto_fields_split_the_colour_mlp_with_the_mean_appearance():
    """nerfacto's colour MLP split as the HashField's, with the mean appearance embedding that
    renders every view that is not a training image."""
    from turbonerf.methods.nerfacto import Nerfacto, NerfactoConfig

    cfg = NerfactoConfig(scene_contraction="box", n_images=3, n_levels=2, log2_table_size=8, max_resolution=32,
                         hidden=16, color_hidden=16, appearance_dim=4, hash_backend="torch")
    model = Nerfacto(cfg, AABB).eval()
    x, dirs = _points(), fibonacci_directions(4).float()
    with torch.no_grad():
        fields = baking_fields(model, sh_degree=3, n_dirs=16)
        sigma, sh = fields.voxel_fn(x)
        torch.testing.assert_close(sigma, model.field.density(x))
        _, h = model.field.geometry(x)
        logits = hash_field_color_logits(model.field, h, dirs, model.field.appearance_codes(None, 1)[0])
        for j in range(4):
            _, rgb = model.field(x, dirs[j].expand(len(x), 3))
            torch.testing.assert_close(torch.sigmoid(logits[:, j]), rgb, atol=1e-5, rtol=0)
    assert sh.shape == (64, 3, 9) and "nerfacto" in fields.description


def test_voxel_fn_colours_only_the_selected_voxels():
    """``select`` limits the colour work to some voxels; their coefficients equal the full pass's."""
    ngp = InstantNGP(InstantNGPConfig(n_levels=2, log2_table_size=8, max_resolution=32, hidden=16, grid_resolution=8, hash_backend="torch"), AABB)
    vanilla = VanillaNeRF(VanillaNeRFConfig(depth=2, width=32, color_width=16), AABB)
    x = _points()
    for model in (ngp.eval(), vanilla.eval()):
        fields = baking_fields(model, sh_degree=3, n_dirs=16)
        with torch.no_grad():
            sigma, sh = fields.voxel_fn(x)
            pick = torch.arange(64) % 3 == 0
            sigma2, sh2 = fields.voxel_fn(x, lambda s: pick)
        torch.testing.assert_close(sigma2, sigma)
        assert sh2.shape == (int(pick.sum()), 3, 9)
        torch.testing.assert_close(sh2, sh[pick], atol=1e-5, rtol=1e-5)


def _cameras_at(eyes: torch.Tensor, size: int = 32) -> Cameras:
    """Pinhole cameras (60-degree field of view) at ``eyes`` [N, 3], looking at the origin."""
    c2w = torch.stack([look_at(e, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])) for e in eyes])
    n, f = len(eyes), torch.full((len(eyes),), size / (2 * math.tan(math.radians(30))))
    return Cameras(c2w, f, f.clone(), torch.full((n,), size / 2), torch.full((n,), size / 2), size, size)


def test_cap_directions_lie_in_their_cap():
    axis = torch.tensor([0.3, -0.5, 0.8])
    dirs = cap_directions(40, axis, math.radians(25))
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(40, dtype=torch.float64))
    cos = dirs @ (axis.double() / axis.double().norm())
    assert cos.min() >= math.cos(math.radians(25)) - 1e-9 and cos.max() > math.cos(math.radians(3))


def test_viewing_directions_cover_a_forward_facing_capture_and_fall_back_to_the_sphere():
    # forward-facing: cameras on a small patch of the plane y = 4, all looking at the origin
    eyes = torch.tensor([[x, 4.0, z] for x in (-0.5, 0.0, 0.5) for z in (-0.3, 0.3)])
    cams = _cameras_at(eyes)
    dirs, cap = viewing_directions(cams, 16)
    assert math.radians(30) < cap < math.radians(90) and dirs.shape == (16, 3)
    axis = dirs.mean(0) / dirs.mean(0).norm()
    _, seen = camera_rays(cams, torch.arange(6).repeat_interleave(4), torch.tensor([0, 31, 0, 31] * 6), torch.tensor([0, 0, 31, 31] * 6))
    assert (seen.double() @ axis).min() > math.cos(cap)  # every corner ray lies inside the fitted cone
    # 360 degrees: a ring of cameras around the origin -> the whole sphere
    ring = torch.stack([torch.tensor([4 * math.cos(a), 4 * math.sin(a), 1.0]) for a in torch.linspace(0, 2 * math.pi, 9)[:-1]])
    dirs, cap = viewing_directions(_cameras_at(ring), 16)
    assert cap == math.pi
    torch.testing.assert_close(dirs, fibonacci_directions(16))
