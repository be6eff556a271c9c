import dataclasses

import torch
from torch import nn

from turbonerf.methods.r2l import R2L, R2LConfig
from turbonerf.eval.flops import flops_per_ray, linear_flops, params
from turbonerf.methods.vanilla_nerf import VanillaNeRF, VanillaNeRFConfig

AABB = torch.tensor([[-1.0] * 3, [1.0] * 3])


def test_linear_flops_of_a_known_mlp():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert linear_flops(mlp) == 2 * (3 * 4 + 4 * 2)
    assert params(mlp) == (3 * 4 + 4) + (4 * 2 + 2)


def test_light_field_counts_one_evaluation_per_ray():
    # K=2 points, L=1 octave: input 2 * 3 * (2 * 1 + 1) = 18; W=8, D=4: 18->8, 8->8, 8->8, 8->3
    model = R2L(dataclasses.replace(R2LConfig(), width=8, depth=4, n_points=2, pos_freqs=1), AABB)
    assert flops_per_ray(model) == 2 * (18 * 8 + 8 * 8 + 8 * 8 + 8 * 3)
    assert params(model) == (18 * 8 + 8) + 2 * (8 * 8 + 8) + (8 * 3 + 3)


def test_paper_r2l_is_about_35x_cheaper_than_nerf():
    r2l = R2L(dataclasses.replace(R2LConfig(), width=256, depth=88), AABB)
    nerf = VanillaNeRF(VanillaNeRFConfig(), AABB)
    ratio = flops_per_ray(nerf) / flops_per_ray(r2l)
    assert 25 < ratio < 40  # R2L reports ~26-35x fewer FLOPs than NeRF


def test_vanilla_nerf_counts_coarse_and_fine_evaluations():
    cfg = VanillaNeRFConfig(width=8, depth=2, color_width=4, pos_freqs=1, dir_freqs=1, n_coarse=3, n_fine=5)
    model = VanillaNeRF(cfg, AABB)
    per_mlp = linear_flops(model.coarse)
    assert per_mlp == linear_flops(model.fine)
    assert flops_per_ray(model) == per_mlp * 3 + per_mlp * (3 + 5)
