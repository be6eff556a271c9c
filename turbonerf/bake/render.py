"""Render a NerfTree: one entry function over three backends, and a ``render_fn`` adapter.

Backends (same image for the same step; the marching rule is in :mod:`turbonerf.bake.march_numpy`):

=========  =====================================================================
numba      :mod:`turbonerf.bake.march_cpu`, parallel CPU kernel with 3D-DDA skipping
torch      :mod:`turbonerf.bake.march_torch`, vectorised, for CUDA (works on CPU)
numpy      :mod:`turbonerf.bake.march_numpy`, the slow reference
auto       torch when the rays are on CUDA, numba otherwise
=========  =====================================================================

A contracted tree (unbounded scenes, ``tree.inner_box`` set) is marched along the world rays
with cone stepping by the numba or numpy backend (:func:`turbonerf.bake.march_numpy.march_numpy_contracted`
states the rule); the torch marcher does not march contracted trees yet.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from turbonerf.bake.nerftree import T_MIN, NerfTree
from turbonerf.errors import TurboNerfError
from turbonerf.rays import RayBundle

BACKENDS = ("auto", "numba", "torch", "numpy")
LOOKUPS = ("nearest", "trilinear")
CONE_ANGLE = 1.0 / 256
"""contracted trees: steps grow as max(step, CONE_ANGLE * t), Instant-NGP's cone stepping"""


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'torch' on CUDA, 'numba' on the CPU; other names are checked and returned."""
    if backend not in BACKENDS:
        raise TurboNerfError(f"unknown NerfTree backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        return "torch" if torch.device(device).type == "cuda" else "numba"
    return backend


def default_step(tree: NerfTree, ndc: bool = False) -> float:
    """Marching step in units of t: one fine voxel for unit-length directions (for a contracted
    tree, one voxel of its inner box, in world units). NDC rays have direction norms of about 2
    (z component 2 near / depth), so half of that there."""
    return tree.voxel_size() / (2.0 if ndc else 1.0)


def close_terminated(out: dict[str, Tensor], background: Tensor, t_min: float) -> dict[str, Tensor]:
    """Treat the rays that stopped early as opaque.

    A ray stops once its transmittance T falls below ``t_min``; what lies behind would have
    covered the remaining T with more of the surface, not with the background. So the colour
    and depth of a stopped ray (opacity >= 1 - t_min) become the weighted means of the samples
    it took (divided by its opacity) and its opacity 1; other rays are unchanged. With this
    rule a larger ``t_min`` costs little quality (BENCHMARKS.md, "early termination").

    Args:
        out: rgb [R, 3] (background composited), depth [R], opacity [R] from a marcher.
        background: [3] the colour composited into ``rgb``.
    Returns:
        the same keys (others passed through), float32.
    """
    opa = out["opacity"]
    stopped = opa >= 1.0 - t_min
    if not bool(stopped.any()):
        return out
    bg = background.to(opa.device, opa.dtype)
    safe = opa.clamp_min(1e-6)
    rgb = torch.where(stopped[:, None], (out["rgb"] - (1.0 - opa)[:, None] * bg) / safe[:, None], out["rgb"])
    depth = torch.where(stopped, out["depth"] / safe, out["depth"])
    return {**out, "rgb": rgb, "depth": depth, "opacity": torch.where(stopped, torch.ones_like(opa), opa)}


class TreeRenderer:
    """A tree prepared once for one backend and device; renders rays, or serves as a method's
    ``render(rays, background)`` (a :data:`turbonerf.render.renderer.RenderFn`).

    Args:
        tree: the baked tree.
        backend: see :data:`BACKENDS`.
        device: where rays will come from ("auto" resolves against CUDA availability).
        lookup: "nearest" or "trilinear".
        step: marching step in t units (default: :func:`default_step`).
        ndc: the scene is forward-facing (only changes the default step).
        t_min: early-termination transmittance.
        threads: numba threads (default: numba's setting).
        cone_angle: contracted trees only: steps grow as max(step, cone_angle * t).

    Attributes:
        samples, rays: samples taken in occupied cells and rays rendered so far (statistics).
    """

    def __init__(
        self,
        tree: NerfTree,
        backend: str = "auto",
        device: torch.device | str = "cpu",
        lookup: str = "nearest",
        step: float | None = None,
        ndc: bool = False,
        t_min: float = T_MIN,
        threads: int | None = None,
        cone_angle: float = CONE_ANGLE,
    ):
        if lookup not in LOOKUPS:
            raise TurboNerfError(f"unknown lookup '{lookup}' (choose from {', '.join(LOOKUPS)})")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.backend = resolve_backend("numba" if tree.contracted and backend == "auto" else backend, self.device)
        if tree.contracted and self.backend == "torch":
            raise TurboNerfError("the torch NerfTree marcher does not march contracted (unbounded-scene) trees: use --backend numba")
        self.tree = tree
        self.cone_angle = float(cone_angle)
        self.lookup = lookup
        self.step = float(step) if step else default_step(tree, ndc)
        self.t_min = float(t_min)
        self.threads = threads
        self.samples = 0
        self.rays = 0
        if self.backend == "numba":
            from turbonerf.bake.march_cpu import march_cpu, prepare_cpu

            self._prepared = prepare_cpu(tree)
            one = np.zeros((1, 3), np.float32)  # load (or compile) the kernel now, not in the first timed frame
            self._march_numba(one, one + 1, one + 1, 0.0, 0.0, np.zeros(3))
        elif self.backend == "torch":
            from turbonerf.bake.march_torch import prepare_torch

            self._prepared = prepare_torch(tree, self.device)
        else:
            self._prepared = tree

    @property
    def name(self) -> str:
        """e.g. "nerftree-numba" (plus "-trilinear" for trilinear lookup)."""
        return f"nerftree-{self.backend}" + ("-trilinear" if self.lookup == "trilinear" else "")

    def samples_per_ray(self) -> float:
        """Mean samples taken in occupied cells per ray rendered so far."""
        return self.samples / max(self.rays, 1)

    @torch.no_grad()
    def render_rays(self, origins: Tensor, dirs: Tensor, viewdirs: Tensor, near: Tensor, far: Tensor, background: Tensor) -> dict[str, Tensor]:
        """[R, 3] rays (+ [R] near / far, [3] background) -> rgb [R, 3], depth [R], opacity [R],
        samples [R], as float32 tensors on the rays' device (rays that stopped early closed by
        :func:`close_terminated`)."""
        dev = origins.device
        r = origins.shape[0]
        near = torch.broadcast_to(torch.as_tensor(near, dtype=torch.float32, device=dev), (r,))
        far = torch.broadcast_to(torch.as_tensor(far, dtype=torch.float32, device=dev), (r,))
        args = [x.float() for x in (origins, dirs, viewdirs, near, far)]
        bg = torch.as_tensor(background, dtype=torch.float32)
        if self.backend == "torch":
            from turbonerf.bake.march_torch import march_torch

            tt = self._prepared if self._prepared.device == dev else self._prepare_torch_on(dev)
            out = march_torch(tt, *args, bg.to(dev), self.step, self.lookup, self.t_min)
        else:
            arrays = [x.detach().cpu().numpy() for x in args]
            if self.backend == "numba":
                res = self._march_numba(*arrays, bg.cpu().numpy())
            elif self.tree.contracted:
                from turbonerf.bake.march_numpy import march_numpy_contracted

                res = march_numpy_contracted(self.tree, *arrays, bg.cpu().numpy(), self.step, self.cone_angle, self.lookup, self.t_min)
            else:
                from turbonerf.bake.march_numpy import march_numpy

                res = march_numpy(self.tree, *arrays, bg.cpu().numpy(), self.step, self.lookup, self.t_min)
            out = {k: torch.from_numpy(v).to(dev) for k, v in res.items()}
        self.samples += int(out["samples"].sum())
        self.rays += r
        return close_terminated(out, bg, self.t_min)

    def _march_numba(self, origins, dirs, viewdirs, near, far, background) -> dict[str, np.ndarray]:
        from turbonerf.bake.march_cpu import march_cpu, march_cpu_contracted

        if self.tree.contracted:
            return march_cpu_contracted(
                self._prepared, self.tree.inner_box, origins, dirs, viewdirs, near, far, background, self.step, self.cone_angle,
                self.lookup, self.t_min, threads=self.threads,
            )  # fmt: skip
        return march_cpu(self._prepared, origins, dirs, viewdirs, near, far, background, self.step, self.lookup, self.t_min, self.threads)

    def _prepare_torch_on(self, device: torch.device):
        from turbonerf.bake.march_torch import prepare_torch

        self._prepared = prepare_torch(self.tree, device)
        self.device = device
        return self._prepared

    def __call__(self, rays: RayBundle, background: Tensor) -> dict[str, Tensor]:
        """RenderFn: rays -> rgb [R, 3], depth [R], opacity [R]."""
        out = self.render_rays(rays.origins, rays.directions, rays.viewdirs, rays.near, rays.far, background)
        return {"rgb": out["rgb"], "depth": out["depth"], "opacity": out["opacity"]}


def render_tree(
    tree: NerfTree,
    origins,
    dirs,
    near,
    far,
    background,
    step: float | None = None,
    backend: str = "auto",
    lookup: str = "nearest",
    viewdirs=None,
    t_min: float = T_MIN,
):
    """Render rays through a NerfTree.

    Args:
        origins, dirs: [R, 3] rays in the tree's space (NDC for forward-facing scenes), torch
            tensors or numpy arrays; sample k sits at origins + t_k * dirs.
        near, far: scalars or [R].
        background: [3].
        step: lattice spacing in t (default: :func:`default_step` for unit directions).
        backend: "auto" | "numba" | "torch" | "numpy".
        lookup: "nearest" | "trilinear".
        viewdirs: [R, 3] directions for the colour (default: ``dirs``; normalised inside).
    Returns:
        (rgb [R, 3], depth [R], opacity [R]) float32, numpy arrays for numpy input, else tensors
        on the rays' device.
    """
    as_numpy = isinstance(origins, np.ndarray)
    o = torch.as_tensor(origins)
    dev = o.device
    d = torch.as_tensor(dirs, device=dev)
    v = d if viewdirs is None else torch.as_tensor(viewdirs, device=dev)
    renderer = TreeRenderer(tree, backend, dev, lookup, step, t_min=t_min)
    out = renderer.render_rays(o, d, v, torch.as_tensor(near, device=dev), torch.as_tensor(far, device=dev), torch.as_tensor(background))
    res = (out["rgb"], out["depth"], out["opacity"])
    return tuple(x.cpu().numpy() for x in res) if as_numpy else res
