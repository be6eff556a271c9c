import pytest
import torch

from turbonerf.cameras import Cameras
from turbonerf.data.formats import load_scene
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.errors import TurboNerfError
from turbonerf.methods.image_student import example_camera, grid_rays, lowres_cameras
from turbonerf.methods.registry import get_method
from turbonerf.rays import image_ray_bundle, make_rays

AABB = torch.tensor([[-1.5] * 3, [1.5] * 3])
# tiny configurations: every student at a size a test trains in seconds
TINY = {
    "pose2image": dict(stages=2, channels=16, code_dim=32, mlp_layers=2),
    "hybrid": dict(stride=4, features=8, n_samples=8, channels=16, n_levels=4, log2_table_size=10, max_resolution=64, hidden=16),
    "shared-backbone": dict(stages=2, channels=16, code_dim=32, mlp_layers=2, nerf_width=16, nerf_layers=2, nerf_samples=8, nerf_rays=16),
    "mobile-r2l": dict(stride=4, channels=16, n_blocks=2, sr_channels="16,8", n_points=4, pos_freqs=3),
}
STUDENTS = sorted(TINY)


def make(name: str, height: int, width: int, seed: int = 0):
    cfg_cls, cls = get_method(name)
    torch.manual_seed(seed)
    return cls(cfg_cls(height=height, width=width, **TINY[name]), AABB)


@pytest.mark.parametrize("name", STUDENTS)
def test_forward_shape_determinism_and_no_rays(name):
    """N cameras -> [N, H, W, 3] in [0, 1], for a size that is not a multiple of the stride;
    the same seed builds the same student, and evaluation is deterministic."""
    h, w = 18, 22
    model = make(name, h, w).eval()
    cam = example_camera(h, w, model.centre, model.scale)
    cams = Cameras.cat([cam, cam])
    cams.c2w[1, 0, 3] += 0.3
    out = model.render_views(cams)
    assert out.shape == (2, h, w, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, model.render_views(cams))
    assert torch.equal(out, make(name, h, w).eval().render_views(cams))
    assert model.flops_per_frame() > 0 and model.flops_per_ray() == pytest.approx(model.flops_per_frame() / (h * w))
    rays = image_ray_bundle(cam, 0, 2.0, 6.0)
    with pytest.raises(TurboNerfError, match="whole images"):
        model(rays, torch.ones(3))


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    root = write_tiny_blender_scene(tmp_path_factory.mktemp("scene") / "s", n_train=6, n_test=1, size=16)
    return load_scene(root)


@pytest.mark.parametrize("name", STUDENTS)
def test_a_few_steps_lower_the_loss(name, tiny_scene):
    torch.set_num_threads(1)
    split = tiny_scene.split("train")
    model = make(name, 16, 16).train()
    cfg = model.config
    for k, v in (("near", tiny_scene.near), ("far", tiny_scene.far)):
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    opt, _ = model.make_optimizer()
    images = split.images.float() / 255.0
    losses = []
    for _ in range(40):
        loss, stats = model.image_loss(split.cameras, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["mse"])
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_grid_rays_pass_through_block_centres():
    """The low-resolution ray of block (i, j) is the full-resolution camera's ray through the
    centre of that stride x stride block, also in the padding beyond a size not divisible by it."""
    cam = example_camera(18, 22, torch.zeros(3), 1.0)
    s = 4
    low = lowres_cameras(cam, s)
    assert (low.height, low.width) == (5, 6)
    rays = grid_rays(Cameras.cat([cam, cam]), s, 2.0, 6.0, False)
    assert rays.origins.shape == (2 * 30, 3)
    for (i, j) in ((0, 0), (4, 5), (2, 3)):
        u = torch.tensor([j * s + s / 2 - 0.5])
        v = torch.tensor([i * s + s / 2 - 0.5])
        full = make_rays(cam, torch.zeros(1, dtype=torch.long), u, v, 2.0, 6.0)
        k = i * 6 + j
        assert torch.allclose(rays.directions[k], full.directions[0], atol=1e-6)
        assert torch.allclose(rays.directions[30 + k], full.directions[0], atol=1e-6)


def test_hybrid_and_mobile_r2l_refuse_a_stride_that_is_not_a_power_of_two():
    for name in ("hybrid", "mobile-r2l"):
        cfg_cls, cls = get_method(name)
        with pytest.raises(TurboNerfError, match="power of 2"):
            cls(cfg_cls(**{**TINY[name], "stride": 6}), AABB)
    cfg_cls, cls = get_method("mobile-r2l")
    with pytest.raises(TurboNerfError, match="sr_channels"):
        cls(cfg_cls(**{**TINY["mobile-r2l"], "sr_channels": "16"}), AABB)


def output_bias(model):
    """The bias of the student's last RGB layer (what a saturated white image pushes up)."""
    if hasattr(model, "head"):  # mobile-r2l
        return model.head.bias
    decoder = model.upsampler if hasattr(model, "upsampler") else model.net.decoder  # hybrid / pose decoders
    return decoder.to_rgb[-1].bias


@pytest.mark.parametrize("name", STUDENTS)
def test_student_leaves_a_saturated_white_image(name):
    """Every logit saturated (lego's white background drives them there in the first steps): the
    training image still passes a gradient towards a darker target; evaluation is the plain sigmoid."""
    model = make(name, 16, 16).train()
    with torch.no_grad():
        output_bias(model).fill_(40.0)
    cam = example_camera(16, 16, model.centre, model.scale)
    loss, _ = model.image_loss(cam, torch.full((1, 16, 16, 3), 0.2))
    loss.backward()
    assert float(output_bias(model).grad.min()) > 1e-4  # downwards: gradient descent lowers the logits
    with torch.no_grad():
        assert torch.equal(model.eval().render_views(cam), torch.ones(1, 16, 16, 3))


def test_mobile_r2l_paper_preset_has_about_the_papers_size():
    from turbonerf.methods.mobile_r2l import MobileR2L, mobile_r2l_preset

    model = MobileR2L(mobile_r2l_preset("paper"), AABB)
    assert model.in_channels == 312  # 8 points x 3 x (2 * 6 + 1)
    assert 3.8e6 < sum(p.numel() for p in model.parameters()) < 4.8e6


def test_mobile_r2l_without_jitter_trains_on_what_it_renders():
    from turbonerf.methods.mobile_r2l import MobileR2L, MobileR2LConfig

    h = w = 16
    outs = {}
    for jitter in (True, False):
        torch.manual_seed(0)
        model = MobileR2L(MobileR2LConfig(height=h, width=w, jitter=jitter, **TINY["mobile-r2l"]), AABB)
        cams = Cameras.cat([example_camera(h, w, model.centre, model.scale)])
        with torch.no_grad():
            outs[jitter] = (model.render_views(cams, train=True), model.render_views(cams, train=False))
    assert not torch.equal(*outs[True])  # training points move inside their segments
    assert torch.equal(*outs[False])  # the midpoints, as at inference
    assert torch.equal(outs[True][1], outs[False][1])  # inference is the same either way
