"""Space carving from the training views: conservative (never removes a cell that holds
content) and tight (removes what every view sees through)."""

import math

import torch

from turbonerf.cameras import Cameras, camera_rays
from turbonerf.samplers.carving import carve_cells, carve_grid
from turbonerf.samplers.occupancy import OccupancyGrid
from turbonerf.samplers.valid import CARVED, DensityGrid

RADIUS = 0.5  # a sphere at the origin


def look_at(eye: torch.Tensor) -> torch.Tensor:
    """[3, 4] OpenGL camera-to-world looking from ``eye`` at the origin."""
    back = eye / eye.norm()
    up = torch.tensor([0.0, 0.0, 1.0]) if abs(float(back[2])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    return torch.cat([torch.stack([right, up, back], dim=1), eye[:, None]], dim=1)


def ring_cameras(n: int = 24, size: int = 48, dist: float = 3.0) -> Cameras:
    """n cameras on a sphere (Fibonacci spiral) looking at the origin."""
    i = torch.arange(n, dtype=torch.float32) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    eyes = dist * torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    c2w = torch.stack([look_at(e) for e in eyes])
    f = torch.full((n,), size * 1.2)
    c = torch.full((n,), size / 2)
    return Cameras(c2w, f, f, c, c, size, size)


def sphere_alphas(cams: Cameras) -> torch.Tensor:
    """[V, H, W] uint8: 255 where the pixel's ray hits the sphere, 0 elsewhere."""
    h, w = cams.height, cams.width
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    out = []
    for i in range(len(cams)):
        o, d = camera_rays(cams, torch.full((h * w,), i), u.reshape(-1), v.reshape(-1))
        closest = o - (o * d).sum(-1, keepdim=True) * d  # closest point of the ray to the origin
        out.append(((closest.norm(dim=-1) < RADIUS) * 255).to(torch.uint8).reshape(h, w))
    return torch.stack(out)


def test_carving_keeps_every_cell_of_the_object_and_removes_most_of_the_rest():
    cams = ring_cameras()
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=32)
    centres = grid.cell_centres()
    allowed = carve_cells(centres, grid.half_diagonal(), cams, sphere_alphas(cams))
    dist = centres.norm(dim=-1)
    touches = dist < RADIUS + grid.half_diagonal()  # cells that may intersect the sphere
    assert allowed[touches].all()
    far = dist > RADIUS + 0.3
    assert allowed[far].float().mean() < 0.05
    assert 0.03 < float(allowed.float().mean()) < 0.2


def test_without_alphas_only_cells_outside_every_frustum_go():
    cams = ring_cameras(n=1, dist=3.0)
    grid = OccupancyGrid(torch.tensor([[-4.0] * 3, [4.0] * 3]), resolution=16)
    centres = grid.cell_centres()
    allowed = carve_cells(centres, grid.half_diagonal(), cams, None)
    eye = cams.c2w[0, :, 3]
    ahead = ((centres - eye) * -cams.c2w[0, :, 2]).sum(-1)  # depth along the viewing axis
    assert not allowed[ahead < -grid.half_diagonal()].any()  # behind the camera
    assert allowed[centres.norm(dim=-1) < 0.5].all()  # what it looks at
    assert 0.05 < float(allowed.float().mean()) < 0.6


def test_carve_grid_restricts_both_kinds_of_grid():
    cams = ring_cameras(n=12)
    alphas = sphere_alphas(cams)
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    occ = OccupancyGrid(aabb, resolution=16)
    left = carve_grid(occ, cams, alphas)
    assert occ.occupied_fraction() == left and 0.0 < left < 0.5
    dens = DensityGrid(aabb, resolution=16, init=1.0)
    assert carve_grid(dens, cams, alphas) == left
    assert dens.occupied_fraction() == left and (dens.density[~dens.allowed] == CARVED).all()
    # observing a high density in a carved cell does not bring it back
    corner = torch.tensor([[-0.95, -0.95, -0.95]])
    dens.observe(corner, torch.tensor([100.0]), beta=1.0)
    assert not dens.valid_mask(corner).any()
