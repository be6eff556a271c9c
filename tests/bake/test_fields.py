import torch

from turbonerf.bake.fields import baking_fields, fibonacci_directions, field_baking_fields, hash_field_color_logits, nerf_mlp_color_logits
from turbonerf.encodings.sh import eval_sh
from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.methods.vanilla_nerf import VanillaNeRF, VanillaNeRFConfig

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
