"""Pseudo data for distillation: a teacher renders whole images from random cameras around the
training cameras, and the (ray, colour) pairs are stored on disk in chunks.

Camera sampling (per pseudo image, like the official R2L code, which samples poses and renders
full images rather than independent rays):

- ``box`` (R2L's forward-facing scheme): the camera centre is uniform in the per-axis bounding
  box of the training camera centres (enlarged by ``BOX_MARGIN`` of its half-extent about its
  centre, R2L's ``scale=1.1``); the viewing direction is uniform in the per-axis box of the
  training cameras' viewing directions (-z axes), normalised; the camera is rolled so that its
  up vector is as close as possible to the training cameras' mean up vector.
- ``sphere`` (R2L's 360-degree scheme, which samples a hemisphere looking at the centre): the
  camera looks at the point closest to all training optical axes, from a distance uniform in the
  range of the training cameras' distances, an elevation uniform in their range of elevations and
  an azimuth uniform over the arc they cover (the full circle unless the training azimuths leave
  a gap wider than 90 degrees). A plain bounding box would place most 360-degree pseudo cameras
  looking past the object.
- ``auto``: ``box`` for forward-facing (NDC) scenes and scenes whose optical axes do not meet in
  front of every camera, ``sphere`` otherwise.

Each pseudo image uses the intrinsics and size of a randomly chosen training camera (ideal
pinhole), so the budget ``num_images`` is in images of the training resolution (H*W rays each).

On disk (``DIR``): ``manifest.json`` lists the settings and the completed chunks; chunk ``i``
holds ``images_per_chunk`` pseudo images as ``chunk_<i>_rays.npy`` (float32 [N, 6]: origin and
direction in sample space, i.e. NDC for forward-facing scenes, exactly what a RayBundle holds;
near / far are the scene's) and ``chunk_<i>_rgb.npy`` (float16 [N, 3], composited on the scene
background). Files are written under temporary names and renamed, then the manifest is rewritten
atomically, so an interrupted run loses at most the chunk in progress; chunk ``i`` is generated
from a generator seeded with ``(seed, i)`` alone, so a resumed run writes the same data an
uninterrupted one would have. :class:`PseudoRays` reads the chunks back memory-mapped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from turbonerf.cameras import Cameras
from turbonerf.io.files import atomic_write_text
from turbonerf.errors import TurboNerfError
from turbonerf.rays import image_ray_bundle
from turbonerf.render.renderer import RenderFn, render_rays_chunked

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
POSE_MODES = ("auto", "box", "sphere")
ELEVATIONS = ("area", "angle")
"""sphere poses: "area" draws the elevation uniformly over the area of the band of the sphere
the training cameras span (sin(elevation) uniform), so pseudo cameras are spread the way cameras
placed uniformly on a sphere are, as in the Blender scenes; "angle" draws the angle itself
uniformly, which puts half the pseudo cameras of a hemisphere of training views above 45 degrees
of elevation, where less than a third of the training views are (pseudo data written before
2026-12-05)"""
LEGACY_SPEC = {"elevation": "angle"}
"""spec fields of manifests written before the field existed, as their stores were made"""
BOX_MARGIN = 0.1
"""the camera-centre box is enlarged by this fraction of its half-extent (R2L: scale 1.1)"""


@dataclass
class PseudoDataSpec:
    """Everything that determines the pseudo data except how much of it there is (stored in the manifest)."""

    seed: int
    pose_mode: str
    height: int
    width: int
    images_per_chunk: int
    near: float
    far: float
    ndc: bool
    teacher: str
    """which renderer made the colours (e.g. "vanilla-nerf", "nerftree-numba")"""
    elevation: str = "area"
    """how sphere poses draw their elevation (:data:`ELEVATIONS`); a manifest without it was
    written with "angle" (:data:`LEGACY_SPEC`)"""


@dataclass
class PseudoDataResult:
    """What :func:`generate_pseudo_data` did."""

    root: Path
    images: int
    """pseudo images on disk now"""
    rays: int
    """rays on disk now"""
    new_images: int
    """images rendered by this call"""
    seconds: float
    """time this call spent rendering and writing"""
    rays_per_s: float
    """teacher throughput of this call (rendering + writing)"""
    stopped_early: bool
    """the time budget ran out before ``num_images``"""


# ---------------------------------------------------------------------------------------------
# camera sampling


def viewing_directions(c2w: Tensor) -> Tensor:
    """[N, 3, 4] OpenGL camera-to-world -> [N, 3] unit directions the cameras look along (-z axis)."""
    return -c2w[:, :3, 2]


def mean_up(c2w: Tensor) -> Tensor:
    """[3] normalised mean of the cameras' up (+y) axes."""
    up = c2w[:, :3, 1].mean(0)
    return up / up.norm().clamp_min(1e-8)


def c2w_looking_along(origin: Tensor, forward: Tensor, up: Tensor) -> Tensor:
    """[3, 4] OpenGL camera-to-world at ``origin`` looking along ``forward`` [3], rolled so that
    its up axis is as close as possible to ``up`` [3] (another axis when they are parallel)."""
    back = -forward / forward.norm().clamp_min(1e-8)
    right = torch.linalg.cross(up, back)
    if right.norm() < 1e-6:
        alt = torch.eye(3, dtype=back.dtype)[int(torch.argmin(back.abs()))]
        right = torch.linalg.cross(alt, back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    return torch.stack([right, true_up, back, origin], dim=1)


def convergence_point(c2w: Tensor) -> Tensor | None:
    """[3] the point closest (least squares) to all the cameras' optical axes, or None when the
    axes are (nearly) parallel or the point is not in front of every camera."""
    o = c2w[:, :3, 3].double()
    f = viewing_directions(c2w).double()
    proj = torch.eye(3, dtype=torch.float64) - f[:, :, None] * f[:, None, :]  # [N, 3, 3]
    a = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0).squeeze(-1)
    if len(c2w) < 2 or torch.linalg.cond(a) > 1e4:
        return None
    p = torch.linalg.solve(a, b)
    if not bool(((p - o) * f).sum(-1).gt(0).all()):
        return None
    return p.float()


def resolve_pose_mode(mode: str, c2w: Tensor, ndc: bool) -> str:
    """``auto`` -> ``box`` (forward-facing scenes, axes that do not converge) or ``sphere``."""
    if mode not in POSE_MODES:
        raise TurboNerfError(f"unknown pose mode '{mode}' (choose from {', '.join(POSE_MODES)})")
    if mode != "auto":
        return mode
    return "box" if ndc or convergence_point(c2w) is None else "sphere"


def _uniform(lo: Tensor, hi: Tensor, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=lo.dtype)


def sample_box_pose(c2w: Tensor, g: torch.Generator) -> Tensor:
    """[3, 4] a pseudo camera: centre uniform in the (enlarged) box of the training centres
    ``c2w`` [N, 3, 4], viewing direction uniform in the box of their viewing directions."""
    centres = c2w[:, :3, 3]
    lo, hi = centres.min(0).values, centres.max(0).values
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * (1.0 + BOX_MARGIN)
    fwd = viewing_directions(c2w)
    origin = _uniform(mid - half, mid + half, g)
    forward = _uniform(fwd.min(0).values, fwd.max(0).values, g)
    if forward.norm() < 1e-6:
        forward = fwd.mean(0)
    return c2w_looking_along(origin, forward, mean_up(c2w))


def _azimuth_arc(az: Tensor) -> tuple[float, float]:
    """(start, length) of the arc of azimuths to sample: everything but the largest gap between
    the sorted training azimuths ``az`` [N] when that gap exceeds 90 degrees, else the full circle."""
    s = torch.sort(torch.remainder(az, 2 * math.pi)).values
    gaps = torch.cat([s[1:] - s[:-1], (s[:1] + 2 * math.pi) - s[-1:]])
    i = int(torch.argmax(gaps))
    if float(gaps[i]) <= math.pi / 2:
        return 0.0, 2 * math.pi
    start = float(s[(i + 1) % len(s)])
    return start, 2 * math.pi - float(gaps[i])


def sample_sphere_pose(c2w: Tensor, g: torch.Generator, elevation: str = "area") -> Tensor:
    """[3, 4] a pseudo camera looking at the convergence point of the training cameras ``c2w``
    [N, 3, 4], at a distance, elevation and azimuth within the training cameras' ranges (the
    elevation drawn as :data:`ELEVATIONS` says)."""
    if elevation not in ELEVATIONS:
        raise TurboNerfError(f"unknown elevation rule '{elevation}' (choose from {', '.join(ELEVATIONS)})")
    target = convergence_point(c2w)
    if target is None:
        raise TurboNerfError("sphere pose sampling needs training cameras that look at a common point (use pose mode 'box')")
    up = mean_up(c2w)
    rel = c2w[:, :3, 3] - target
    dist = rel.norm(dim=-1)
    elev = torch.asin(((rel / dist[:, None]) @ up).clamp(-1, 1))
    # an orthonormal frame (e1, e2, up) for azimuths
    e1 = torch.linalg.cross(up, torch.eye(3)[int(torch.argmin(up.abs()))])
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    az = torch.atan2(rel @ e2, rel @ e1)
    start, length = _azimuth_arc(az)
    u = torch.rand(3, generator=g)
    r = float(dist.min() + (dist.max() - dist.min()) * u[0])
    lo, hi = float(elev.min()), float(elev.max())
    if elevation == "area":
        el = math.asin(math.sin(lo) + (math.sin(hi) - math.sin(lo)) * float(u[1]))
    else:
        el = lo + (hi - lo) * float(u[1])
    a = start + length * float(u[2])
    direction = math.cos(el) * (math.cos(a) * e1 + math.sin(a) * e2) + math.sin(el) * up
    origin = target + r * direction
    return c2w_looking_along(origin, target - origin, up)


def sample_pseudo_camera(cameras: Cameras, mode: str, g: torch.Generator, elevation: str = "area") -> Cameras:
    """One pseudo camera (resolved ``mode``: box | sphere; ``elevation``: see :data:`ELEVATIONS`)
    with the intrinsics of a random training camera."""
    c2w = cameras.c2w.float().cpu()
    pose = sample_box_pose(c2w, g) if mode == "box" else sample_sphere_pose(c2w, g, elevation)
    k = int(torch.randint(len(cameras), (1,), generator=g))
    one = lambda x: x.float().cpu()[k : k + 1].clone()  # noqa: E731
    return Cameras(pose[None], one(cameras.fx), one(cameras.fy), one(cameras.cx), one(cameras.cy), cameras.width, cameras.height)


def chunk_generator(seed: int, index: int) -> torch.Generator:
    """The generator of chunk ``index``: depends on (seed, index) only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))


def pseudo_cameras(cameras: Cameras, spec: PseudoDataSpec, index: int) -> Cameras:
    """The ``spec.images_per_chunk`` cameras of chunk ``index``, in order. They depend on (seed,
    index) and the training ``cameras`` alone, so a reader recomputes them rather than storing them."""
    g = chunk_generator(spec.seed, index)
    return Cameras.cat([sample_pseudo_camera(cameras, spec.pose_mode, g, spec.elevation) for _ in range(spec.images_per_chunk)])


# ---------------------------------------------------------------------------------------------
# on-disk chunks


MANIFEST_SECONDS = 2.0
"""how often generation rewrites the manifest: after every chunk, a 10,000-chunk store rewrote a
growing file 10,000 times (the manifest reaches 0.66 MB)"""


def chunk_paths(root: Path, index: int) -> tuple[Path, Path]:
    """(rays .npy, rgb .npy) of chunk ``index``."""
    return Path(root) / f"chunk_{index:06d}_rays.npy", Path(root) / f"chunk_{index:06d}_rgb.npy"


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def read_manifest(root: Path) -> dict | None:
    """The manifest of a pseudo-data folder, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"corrupt pseudo-data manifest ({e})", path) from None


def _write_manifest(root: Path, spec: PseudoDataSpec, chunks: dict[int, dict]) -> None:
    body = {"format_version": FORMAT_VERSION, "spec": asdict(spec), "chunks": [{"index": i, **chunks[i]} for i in sorted(chunks)]}
    atomic_write_text(Path(root) / MANIFEST, json.dumps(body, indent=1))


def stored_spec(manifest: dict) -> dict:
    """The spec fields a store was made with (those its manifest predates filled from :data:`LEGACY_SPEC`)."""
    return {**LEGACY_SPEC, **manifest.get("spec", {})}


def store_rules(spec: PseudoDataSpec, manifest: dict | None) -> PseudoDataSpec:
    """``spec`` with the fields of :data:`LEGACY_SPEC` (rules no option chooses) taken from an
    existing store's ``manifest``, so that a store is continued with the rules it was made with."""
    if manifest is None or not isinstance(manifest.get("spec"), dict):
        return spec
    stored = stored_spec(manifest)
    return replace(spec, **{k: stored[k] for k in LEGACY_SPEC})


def _completed(manifest: dict | None, spec: PseudoDataSpec, root: Path) -> dict[int, dict]:
    if manifest is None:
        return {}
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise TurboNerfError("pseudo data was written by a newer turbonerf", root)
    if stored_spec(manifest) != asdict(spec):
        raise TurboNerfError(
            f"pseudo data here was made with other settings ({manifest.get('spec')}); use another folder or delete it", root
        )
    return {int(c["index"]): {k: v for k, v in c.items() if k != "index"} for c in manifest.get("chunks", [])}


def render_pseudo_chunk(
    render_fn: RenderFn,
    cameras: Cameras,
    spec: PseudoDataSpec,
    index: int,
    background: Tensor,
    device: torch.device,
    chunk_rays: int,
    bf16: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``index``: (rays float32 [N, 6] origin | direction, rgb float16 [N, 3]) of its
    ``spec.images_per_chunk`` pseudo images, N = images * H * W."""
    rays_out, rgb_out = [], []
    cams = pseudo_cameras(cameras, spec, index)
    for k in range(len(cams)):
        rays = image_ray_bundle(cams, k, spec.near, spec.far, spec.ndc).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = render_rays_chunked(render_fn, rays, background.to(device), chunk_rays)
        rays_out.append(torch.cat([rays.origins, rays.directions], dim=-1).float().cpu().numpy())
        rgb_out.append(out["rgb"].float().clamp(0, 1).cpu().numpy().astype(np.float16))
    return np.concatenate(rays_out), np.concatenate(rgb_out)


def alone(obj: object) -> list[object]:
    """The ``gather`` of one process: its own value."""
    return [obj]


def generate_pseudo_data(
    root: Path,
    render_fn: RenderFn,
    cameras: Cameras,
    spec: PseudoDataSpec,
    num_images: int,
    background: Tensor,
    device: torch.device | str = "cpu",
    chunk_rays: int = 8192,
    bf16: bool = False,
    max_seconds: float | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[object], list[object]] = alone,
    manifest_seconds: float = MANIFEST_SECONDS,
) -> PseudoDataResult:
    """Render ``num_images`` pseudo images with ``render_fn`` into ``root``, resuming from the
    chunks already listed in its manifest (which must have been made with the same ``spec``,
    except for the rules no option chooses, which a store keeps: :func:`store_rules`).

    Args:
        render_fn: the teacher, rays -> {"rgb": [R, 3], ...} (called in chunks of ``chunk_rays``).
        cameras: the training cameras (their poses bound the sampling; their intrinsics are reused).
        spec: the settings (``pose_mode`` must be resolved: box or sphere).
        num_images: total pseudo images wanted (rounded up to whole chunks).
        max_seconds: stop before starting a chunk once this call has spent this long.
        rank, world_size, gather: several processes share the chunks (rank r renders the r-th,
            (r+N)-th, ... missing chunk, in rounds of one chunk each); after each round ``gather``
            (every rank's value of an object, in rank order) tells every rank what was made and
            rank 0 alone rewrites the manifest. Chunk i depends on (seed, i) alone, so the store
            is the same whoever renders it.
        manifest_seconds: rewrite the manifest at most this often while generating (and always
            when the call ends, interrupted or not). A chunk whose files were written but which
            the manifest does not list yet (a killed process) is rendered again on resume.
    """
    if spec.pose_mode not in ("box", "sphere"):
        raise TurboNerfError(f"pose mode must be resolved to box or sphere, got '{spec.pose_mode}'")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    manifest = read_manifest(root)
    spec = store_rules(spec, manifest)
    done = _completed(manifest, spec, root)
    n_chunks = math.ceil(num_images / spec.images_per_chunk)
    todo = [i for i in range(n_chunks) if i not in done]
    mine = todo[rank::world_size]
    if rank == 0:
        _write_manifest(root, spec, done)
    t0 = time.perf_counter()
    written_at, listed = t0, len(done)
    new_rays, new_chunks, stopped = 0, 0, False
    bar = tqdm(total=n_chunks * spec.images_per_chunk, initial=(n_chunks - len(todo)) * spec.images_per_chunk,
               disable=not (progress and rank == 0), desc="pseudo data", unit="img", dynamic_ncols=True)
    try:
        for k in range(math.ceil(len(todo) / world_size)):
            elapsed = max(gather(time.perf_counter() - t0))
            if max_seconds is not None and elapsed >= max_seconds:
                stopped = True
                break
            made = {}
            if k < len(mine):
                i, tc = mine[k], time.perf_counter()
                rays, rgb = render_pseudo_chunk(render_fn, cameras, spec, i, background, device, chunk_rays, bf16)
                rays_path, rgb_path = chunk_paths(root, i)
                _atomic_save_npy(rays_path, rays)
                _atomic_save_npy(rgb_path, rgb)
                made[i] = {"rays": int(rays.shape[0]), "seconds": round(time.perf_counter() - tc, 4)}
            for part in gather(made):
                done.update(part)
                new_rays += sum(c["rays"] for c in part.values())
                new_chunks += len(part)
                bar.update(spec.images_per_chunk * len(part))
            if rank == 0 and time.perf_counter() - written_at >= manifest_seconds:
                _write_manifest(root, spec, done)
                written_at, listed = time.perf_counter(), len(done)
            bar.set_postfix(rays_per_s=f"{new_rays / max(time.perf_counter() - t0, 1e-9):.0f}")
    finally:
        if rank == 0 and len(done) != listed:
            _write_manifest(root, spec, done)
        bar.close()
    seconds = time.perf_counter() - t0
    total_rays = sum(c["rays"] for c in done.values())
    return PseudoDataResult(
        root=root,
        images=len(done) * spec.images_per_chunk,
        rays=total_rays,
        new_images=new_chunks * spec.images_per_chunk,
        seconds=seconds,
        rays_per_s=new_rays / seconds if seconds > 0 and new_rays else 0.0,
        stopped_early=stopped,
    )


MAX_OPEN_CHUNKS = 256
"""chunks a :class:`PseudoRays` keeps memory-mapped at once (least recently used closed first):
each map holds a file descriptor, and mapping every chunk of a 10,000-image store at once failed
with "too many open files" under a limit of 20,000"""


class PseudoRays:
    """The completed chunks of a pseudo-data folder, memory-mapped on demand (nothing is read into
    RAM until sampled; at most :data:`MAX_OPEN_CHUNKS` chunks are mapped at a time).

    Attributes:
        spec: the settings the data was made with.
        sizes: [C] rays per chunk, in chunk-index order.
    """

    def __init__(self, root: Path):
        root = Path(root)
        manifest = read_manifest(root)
        if manifest is None:
            raise TurboNerfError("no pseudo data here (manifest.json missing)", root)
        self.root = root
        self.spec = PseudoDataSpec(**stored_spec(manifest))
        self.indices = [int(c["index"]) for c in manifest["chunks"]]
        self.sizes = np.array([int(c["rays"]) for c in manifest["chunks"]], dtype=np.int64)
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The c-th completed chunk, memory-mapped: (rays float32 [n, 6], rgb float16 [n, 3])."""
        maps = self._maps.get(c)
        if maps is None:
            rays_path, rgb_path = chunk_paths(self.root, self.indices[c])
            maps = (np.load(rays_path, mmap_mode="r"), np.load(rgb_path, mmap_mode="r"))
            self._maps[c] = maps
            if len(self._maps) > MAX_OPEN_CHUNKS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(c)
        return maps

    def __len__(self) -> int:
        return int(self.sizes.sum())

    @property
    def n_chunks(self) -> int:
        return len(self.indices)

    def sample(self, n: int, generator: torch.Generator, chunks_per_batch: int = 8) -> tuple[Tensor, Tensor]:
        """n random rays: (rays float32 [n, 6] origin | direction, rgb float32 [n, 3]).

        The rays come from ``chunks_per_batch`` random chunks (so that one batch mixes several
        pseudo images), at sorted random rows within each (so that the memory map is read in order).
        """
        if n <= 0 or len(self) == 0:
            return torch.zeros(0, 6), torch.zeros(0, 3)
        m = min(chunks_per_batch, self.n_chunks)
        chosen = torch.randperm(self.n_chunks, generator=generator)[:m].tolist()
        counts = [n // m + (1 if j < n % m else 0) for j in range(m)]
        rays, rgb = [], []
        for c, k in zip(chosen, counts):
            rows = torch.randint(int(self.sizes[c]), (k,), generator=generator).sort().values.numpy()
            chunk_rays, chunk_rgb = self.chunk(c)
            rays.append(np.asarray(chunk_rays[rows], dtype=np.float32))
            rgb.append(np.asarray(chunk_rgb[rows], dtype=np.float32))
        return torch.from_numpy(np.concatenate(rays)), torch.from_numpy(np.concatenate(rgb))

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every ray in chunk order: (rays float32 [N, 6], rgb float16 [N, 3]) (reads it all: tests and small sets only)."""
        if not self.indices:
            return np.zeros((0, 6), np.float32), np.zeros((0, 3), np.float16)
        parts = [tuple(np.asarray(a) for a in self.chunk(c)) for c in range(self.n_chunks)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class PseudoImages:
    """The same store read as whole images with their cameras, for the image-space students
    (:mod:`turbonerf.methods.image_student`): image j of chunk i is rows [j H W, (j + 1) H W) of
    its rgb file, and its camera is recomputed (:func:`pseudo_cameras`) from the training
    ``cameras`` the data was made from.

    Attributes:
        spec: the settings the data was made with.
    """

    def __init__(self, root: Path, cameras: Cameras):
        self.store = PseudoRays(root)
        self.spec = self.store.spec
        self.cameras = cameras
        self.pixels = self.spec.height * self.spec.width
        self._cams: dict[int, Cameras] = {}

    def __len__(self) -> int:
        return self.store.n_chunks * self.spec.images_per_chunk

    def camera_of(self, chunk: int) -> Cameras:
        """The cameras of the ``chunk``-th completed chunk (cached: sampling them costs ~1 ms each)."""
        if chunk not in self._cams:
            self._cams[chunk] = pseudo_cameras(self.cameras, self.spec, self.store.indices[chunk])
        return self._cams[chunk]

    def images(self, which: list[int]) -> tuple[Cameras, Tensor]:
        """Images number ``which`` (0 .. len - 1): (cameras, rgb float32 [n, H, W, 3])."""
        per = self.spec.images_per_chunk
        cams, rgb = [], []
        for i in which:
            chunk, j = divmod(int(i), per)
            cams.append(self.camera_of(chunk)[j])
            rows = self.store.chunk(chunk)[1][j * self.pixels : (j + 1) * self.pixels]
            rgb.append(np.asarray(rows, dtype=np.float32).reshape(self.spec.height, self.spec.width, 3))
        return Cameras.cat(cams), torch.from_numpy(np.stack(rgb))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Cameras, Tensor]:
        """n random images (with replacement): (cameras, rgb float32 [n, H, W, 3])."""
        return self.images(torch.randint(len(self), (n,), generator=generator).tolist())
