from pathlib import Path

import pytest
import torch

from turbonerf.data.synthetic import write_tiny_blender_scene

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# a NeRF small enough to train a few steps in well under a second
TINY_VANILLA = ["width=32", "depth=2", "color_width=16", "n_coarse=8", "n_fine=8"]
# a nerfacto of the same kind: small grids, few proposal samples
TINY_NERFACTO = ["n_levels=4", "log2_table_size=12", "max_resolution=64", "hidden=16", "color_hidden=16", "appearance_dim=4",
                 "proposal_levels=2", "proposal_log2_table_size=10", "proposal_max_resolution_1=32", "proposal_max_resolution_2=32",
                 "proposal_samples_1=16", "proposal_samples_2=8", "n_samples=8", "anneal_steps=4"]


def ball_density(x: torch.Tensor) -> torch.Tensor:
    """A solid ball of radius 0.5 at the origin with density 20 and a soft edge: [N, 3] -> [N]."""
    return 20.0 * torch.sigmoid((0.5 - x.norm(dim=-1)) * 40.0)


def fit_to_ball(field: torch.nn.Module, steps: int, lr: float) -> None:
    """Fit ``field.density`` to :func:`ball_density` directly (MSE at random points of
    [-1.5, 1.5]^3): the activation-sampling tests' known density, without the instability of
    photometric training on a tiny scene."""
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.rand(2048, 3) * 3.0 - 1.5
        loss = ((field.density(x) - ball_density(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(autouse=True)
def _restore_torch_process_settings():
    """The app layer sets process-wide torch settings for a run (``engine.runtime.configure``:
    float32 matmul precision "medium", which lets oneDNN use bf16 on AMX hosts; thread count).
    Restore them after every test so that no test's numerics depend on which tests ran before it."""
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    yield
    torch.set_float32_matmul_precision(precision)
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_scene(tmp_path) -> Path:
    """A 16x16 Blender-format scene of a coloured sphere: 4 train and 2 test views."""
    return write_tiny_blender_scene(tmp_path / "scene", n_train=4, n_test=2, size=16)


def shared_scene(*parts: str) -> Path:
    """A real scene under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
