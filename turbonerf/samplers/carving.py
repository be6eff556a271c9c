"""Empty space the training views already prove: a grid's cells before any training step.

A grid cell can only hold content the training images constrain when it lies inside at least
one training camera's frustum; a cell that projects onto a pixel whose alpha is 0 in some view
is seen through by that view's ray, so it is empty (space carving / the visual hull, as
Kutulakos & Seitz; Instant-NGP's data loader marks cells outside every frustum the same way).
Occupancy and density grids start from this mask instead of "everything may be occupied".

The test is conservative: each cell centre is projected, and a cell counts as inside a frustum
(and as seen by a non-transparent pixel) when any pixel within its projected half-diagonal does,
through a max-pool of the alpha mask of that radius. Lens distortion is ignored; cells are only
carved with alphas, never for lying between two frusta.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from turbonerf.cameras import Cameras, project_points

MAX_DILATION_PX = 16
"""largest alpha max-pool radius (cells closer to a camera than this allows are not carved by it)"""


def carve_cells(centres: Tensor, half_diagonal: float | Tensor, cameras: Cameras, alphas: Tensor | None = None) -> Tensor:
    """Which cells may hold content, from the training cameras (and alphas).

    Views are visited in turn; each projects only the cells no view has carved yet, so the work
    shrinks as the hull tightens (about 1 s for 128^3 cells and 100 views on a CPU core).

    Args:
        centres: [N, 3] cell centres in world space.
        half_diagonal: half the diagonal of a cell (world units), or [N] one per cell.
        cameras: the V training cameras.
        alphas: [V, H, W] uint8 alpha of each training image, or None.
    Returns:
        [N] bool: inside at least one frustum, and not seen through a pixel of alpha 0 by any view.
    """
    n = centres.shape[0]
    seen = torch.zeros(n, dtype=torch.bool, device=centres.device)
    alive = torch.arange(n, device=centres.device)  # cells not carved so far
    w, h = cameras.width, cameras.height
    per_cell = isinstance(half_diagonal, Tensor)
    for i in range(len(cameras)):
        if alphas is None:  # only the frustum test: look at the cells no view has seen yet
            unseen = (~seen).nonzero()[:, 0] if float(seen.float().mean()) > 0.5 else None  # gather only when it pays
            pts = centres if unseen is None else centres[unseen]
            half = half_diagonal[unseen] if per_cell and unseen is not None else half_diagonal
            u, v, depth = project_points(cameras, i, pts)
            radius = float(cameras.fx[i]) * half / depth.clamp_min(1e-6)
            inside = (depth > half) & (u > -radius) & (u < w + radius) & (v > -radius) & (v < h + radius)
            if unseen is None:
                seen |= inside
            else:
                seen[unseen] = inside
            continue
        if alive.numel() == 0:
            break
        u, v, depth = project_points(cameras, i, centres[alive])
        half = half_diagonal[alive] if per_cell else half_diagonal
        radius = float(cameras.fx[i]) * half / depth.clamp_min(1e-6)  # projected half-diagonal, pixels
        front = depth > half
        seen[alive] |= front & (u > -radius) & (u < w + radius) & (v > -radius) & (v < h + radius)
        # a view carves a cell only when the cell's whole footprint lies in the image and is transparent
        full = front & (u - radius >= 0) & (u + radius < w) & (v - radius >= 0) & (v + radius < h)
        full &= radius <= MAX_DILATION_PX
        if not bool(full.any()):
            continue
        k = int(math.ceil(float(radius[full].max())))
        cover = (alphas[i] > 0).to(centres.device, torch.float32)
        dilated = F.max_pool2d(cover[None, None], 2 * k + 1, stride=1, padding=k)[0, 0] > 0
        carved = full & ~dilated[v.clamp(0, h - 1).long(), u.clamp(0, w - 1).long()]
        alive = alive[~carved]
    allowed = torch.zeros_like(seen)
    allowed[alive] = True
    return allowed & seen


def carve_grid(grid, cameras: Cameras, alphas: Tensor | None = None) -> float:
    """Restrict a grid (anything with ``cell_centres()``, ``half_diagonal()`` and
    ``restrict(mask)``: the occupancy grid, the momentum density grid) to the cells the views
    allow (:func:`carve_cells`). Returns the fraction of cells left."""
    allowed = carve_cells(grid.cell_centres(), grid.half_diagonal(), cameras.to(grid.aabb.device),
                          None if alphas is None else alphas.to(grid.aabb.device))
    grid.restrict(allowed)
    return float(allowed.float().mean())
