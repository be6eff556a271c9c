"""Ray bundles and packed samples: the two data structures every sampler and renderer shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from turbonerf.cameras import Cameras, camera_rays, ndc_rays


@dataclass
class RayBundle:
    """R rays.

    Attributes:
        origins: [R, 3] where samples are placed from (world space, or NDC for forward-facing scenes).
        directions: [R, 3] sample-space directions; a sample at distance t lies at origins + t * directions.
        viewdirs: [R, 3] unit world-space viewing directions (what the colour network sees).
        near, far: [R] the sampling interval in units of t.
        radii: [R] or None, the radius of the pixel's cone per unit of t in sample space (Mip-NeRF:
            the pixel footprint x 2/sqrt(12), so that the cone's cross-section has the variance
            of the pixel's square); at distance t the cone's radius is t * radii.
        camera_indices: [R] long or None, the image each ray comes from (per-image embeddings).
    """

    origins: Tensor
    directions: Tensor
    viewdirs: Tensor
    near: Tensor
    far: Tensor
    radii: Tensor | None = None
    camera_indices: Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]

    def _fields(self) -> tuple:
        return (self.origins, self.directions, self.viewdirs, self.near, self.far, self.radii, self.camera_indices)

    def __getitem__(self, sl) -> "RayBundle":
        return RayBundle(*(None if t is None else t[sl] for t in self._fields()))

    def to(self, device) -> "RayBundle":
        return RayBundle(*(None if t is None else t.to(device) for t in self._fields()))


@dataclass
class PackedSamples:
    """S samples spread over R rays, stored flat ("packed") and sorted by ray.

    Attributes:
        ray_indices: [S] long, the ray each sample belongs to (non-decreasing).
        t_starts, t_ends: [S] the interval each sample covers along its ray; the field is
            evaluated at the interval's midpoint.
        n_rays: R.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mids(self) -> Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def deltas(self) -> Tensor:
        return self.t_ends - self.t_starts

    def positions(self, rays: RayBundle) -> Tensor:
        """[S, 3] sample midpoints in sample space."""
        return rays.origins[self.ray_indices] + self.t_mids[:, None] * rays.directions[self.ray_indices]

    def viewdirs(self, rays: RayBundle) -> Tensor:
        """[S, 3] unit viewing directions of each sample."""
        return rays.viewdirs[self.ray_indices]

    def masked(self, keep: Tensor) -> "PackedSamples":
        """The samples where ``keep`` [S] bool is true (order, and so sortedness, is kept)."""
        return PackedSamples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep], self.n_rays)


def packed_from_dense(t_edges: Tensor) -> PackedSamples:
    """Packed samples from per-ray interval edges [R, S+1] (S samples per ray)."""
    r, s1 = t_edges.shape
    ray_indices = torch.arange(r, device=t_edges.device).repeat_interleave(s1 - 1)
    return PackedSamples(ray_indices, t_edges[:, :-1].reshape(-1), t_edges[:, 1:].reshape(-1), r)


def make_rays(
    cameras: Cameras,
    cam_idx: Tensor,
    u: Tensor,
    v: Tensor,
    near: float,
    far: float,
    ndc: bool = False,
) -> RayBundle:
    """Rays through pixel centres of the given cameras.

    For forward-facing scenes (``ndc=True``) rays are mapped to NDC, where near=0, far=1
    (the ``near``/``far`` arguments are then ignored); viewing directions stay in world space.

    Every ray carries its camera index and its cone radius (:attr:`RayBundle.radii`): for
    world-space rays the angular width of its pixel along the image rows (the derivative of the
    unit direction with respect to the column, in closed form, lens distortion ignored); in NDC
    the distance between the NDC origins of horizontally neighbouring pixels, as Mip-NeRF
    computes it. Both are multiplied by 2/sqrt(12).

    Args:
        cam_idx, u, v: [R] camera index, pixel column and row.
    """
    origins, dirs = camera_rays(cameras, cam_idx, u, v)
    n = origins.shape[0]
    dev = origins.device
    cam_idx = cam_idx.to(dev)
    if ndc:
        fx, fy = cameras.fx[cam_idx], cameras.fy[cam_idx]
        o, d = ndc_rays(origins, dirs, fx, fy, cameras.width, cameras.height)
        o_next, _ = ndc_rays(*camera_rays(cameras, cam_idx, u.to(dev) + 1, v), fx, fy, cameras.width, cameras.height)
        radii = (o_next - o).norm(dim=-1) * CONE_RADIUS_SCALE
        return RayBundle(o, d, dirs, torch.zeros(n, device=dev), torch.ones(n, device=dev), radii, cam_idx)
    x = (u.to(dev, torch.float32) + 0.5 - cameras.cx[cam_idx]) / cameras.fx[cam_idx]
    y = (v.to(dev, torch.float32) + 0.5 - cameras.cy[cam_idx]) / cameras.fy[cam_idx]
    length = torch.sqrt(x * x + y * y + 1.0)
    # |d/du (p / |p|)| for p = (x, y, -1): the component of dp/du = (1/fx, 0, 0) normal to p, over |p|
    radii = torch.sqrt((1.0 - (x / length) ** 2).clamp_min(0.0)) / (cameras.fx[cam_idx] * length) * CONE_RADIUS_SCALE
    return RayBundle(
        origins,
        dirs,
        dirs,
        torch.full((n,), float(near), device=dev),
        torch.full((n,), float(far), device=dev),
        radii,
        cam_idx,
    )


CONE_RADIUS_SCALE = 2.0 / math.sqrt(12.0)
"""pixel footprint -> cone radius (Mip-NeRF: a disc with the variance of the square pixel)"""


def image_ray_bundle(cameras: Cameras, index: int, near: float, far: float, ndc: bool = False) -> RayBundle:
    """All H*W rays of camera ``index``, row-major."""
    h, w = cameras.height, cameras.width
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    idx = torch.full((h * w,), index, dtype=torch.long)
    return make_rays(cameras, idx, u.reshape(-1), v.reshape(-1), near, far, ndc)
