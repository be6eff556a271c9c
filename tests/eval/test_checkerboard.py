import numpy as np

from turbonerf.eval.checkerboard import checkerboard_share, lattice_mask, white_noise_share


def test_high_on_a_checkerboard_low_on_a_smooth_image_and_noise_level_on_noise():
    h, w = 64, 48
    y, x = np.mgrid[:h, :w]
    target = np.full((h, w, 3), 0.5)
    board = target + 0.1 * ((x + y) % 2)[..., None]
    assert checkerboard_share(board, target, 8) > 0.99
    period4 = target + 0.1 * ((x // 2) % 2)[..., None]  # a stride-4 stage's artifact: period 4 along rows
    assert checkerboard_share(period4, target, 8) > 0.8
    smooth = target + 0.1 * (np.sin(x / 9.0) + np.cos(y / 13.0))[..., None]
    assert checkerboard_share(smooth, target, 8) < 0.05
    noise = np.random.default_rng(0).random((h, w))
    assert abs(checkerboard_share(noise, np.zeros((h, w)), 8) - white_noise_share(h, w, 8)) < 0.02
    assert checkerboard_share(target, target, 8) == 0.0


def test_lattice_for_sizes_that_are_not_multiples_of_the_stride():
    m = lattice_mask(18, 20, 4)
    assert not m[0, 0] and m[0, 5] and m[9, 10] and m[0, 15]
    assert m.sum() == 4 * 4 - 1
