"""Run folders: ``run.json`` (what was trained, on what) + checkpoints; loading a trained run, and
:func:`renderer_for_run`, the one place that decides what renders a run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from turbonerf import __version__
from turbonerf.bake.nerftree import T_MIN, load_tree, read_tree_header
from turbonerf.bake.render import TreeRenderer, default_step
from turbonerf.cameras import Cameras
from turbonerf.data.multiscene import MultiSceneSet
from turbonerf.data.scene import Scene
from turbonerf.engine.checkpoint import load_checkpoint, load_checkpoint_or_previous, previous_of, read_checkpoint_meta
from turbonerf.engine.loop import load_model_tensors
from turbonerf.errors import TurboNerfError
from turbonerf.eval.flops import flops_per_ray, params
from turbonerf.io.files import atomic_write_text, is_inside
from turbonerf.methods.base import Method
from turbonerf.methods.registry import config_from_dict, get_method
from turbonerf.render.renderer import RenderFn, render_image

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CHECKPOINT = Path("checkpoints") / "latest.safetensors"
DEFAULT_TREE = Path("baked") / "nerftree.safetensors"
"""where ``turbonerf bake`` puts the tree of a run, relative to the run folder"""


@dataclass
class SceneMeta:
    """What a trained model needs to know about its scene to render new views."""

    format: str
    data: str
    downscale: int
    near: float
    far: float
    ndc: bool
    white_background: bool
    aabb: list[list[float]]
    depth_bounds: tuple[float, float]

    @classmethod
    def from_scene(cls, scene: Scene, downscale: int) -> "SceneMeta":
        return cls(
            format=scene.format,
            data=str(Path(scene.root).resolve()),
            downscale=downscale,
            near=scene.near,
            far=scene.far,
            ndc=scene.ndc,
            white_background=scene.white_background,
            aabb=scene.aabb.tolist(),
            depth_bounds=tuple(scene.depth_bounds),
        )

    @classmethod
    def from_set(cls, scenes: MultiSceneSet, downscale: int) -> "SceneMeta":
        """For a multi-scene set (its box: the sphere the sampling range can reach from the origin)."""
        half = max(abs(scenes.far - scenes.near) / 2, 1e-3)
        return cls(
            format=scenes.format,
            data=str(Path(scenes.root).resolve()),
            downscale=downscale,
            near=scenes.near,
            far=scenes.far,
            ndc=False,
            white_background=scenes.white_background,
            aabb=[[-half] * 3, [half] * 3],
            depth_bounds=(scenes.near, scenes.far),
        )

    @property
    def background(self) -> torch.Tensor:
        return torch.ones(3) if self.white_background else torch.zeros(3)


@dataclass
class RunSpec:
    """Contents of ``run.json``."""

    method: str
    config: dict
    scene: SceneMeta
    seed: int
    version: str = __version__
    training: dict = dataclasses.field(default_factory=dict)
    """how the latest training session ran: budget, learning-rate schedule, batch (informative)"""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


RESTARTABLE = {RUN_FILE, "train_log.jsonl", "distill.json", LOCK_FILE, "checkpoints"}
"""what a run killed before its first step leaves; such a folder may be started again without --overwrite"""


def check_out_folder(out: Path, overwrite: bool, protected: tuple[Path, ...] = ()) -> None:
    """Refuse an output folder that would destroy something: one that is, contains or lies inside
    a ``protected`` folder (the scene), or an existing non-empty folder unless ``overwrite`` and it
    is a turbonerf run (holds run.json). Nothing is written here."""
    out = Path(out)
    for p in protected:
        if is_inside(out, Path(p)) or is_inside(Path(p), out):
            raise TurboNerfError(f"refusing to use this as the run folder: it {'is or lies inside' if is_inside(out, Path(p)) else 'contains'} the scene folder {p}", out)
    if out.exists() and not out.is_dir():
        raise TurboNerfError("exists and is not a folder", out)
    if not (out.exists() and any(out.iterdir())):
        return
    names = {p.name for p in out.iterdir()}
    restartable = names <= RESTARTABLE and not any((out / "checkpoints").glob("*.safetensors"))
    if restartable:
        return
    if not overwrite:
        raise TurboNerfError("run folder exists and is not empty (use --resume to continue it or --overwrite to replace it)", out)
    if not (out / RUN_FILE).is_file():
        raise TurboNerfError("--overwrite replaces only a turbonerf run folder (one with run.json); this folder is not one", out)


def prepare_run_dir(out: Path, overwrite: bool, protected: tuple[Path, ...] = ()) -> None:
    """Create ``out`` (after :func:`check_out_folder`); with ``overwrite`` an old run there is replaced."""
    out = Path(out)
    check_out_folder(out, overwrite, protected)
    if out.exists() and (out / RUN_FILE).is_file() and overwrite:
        for child in out.iterdir():
            if child.name == LOCK_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


class RunLock:
    """An exclusive lock on a run folder (``RUN/.lock``: the owner's PID and host), held by
    whatever writes into the folder (train, distill, bake, eval). A second writer gets a one-line
    error naming the owner; a lock left by a dead process on this host is taken over, saying so."""

    def __init__(self, run_dir: Path, what: str):
        self.path = Path(run_dir) / LOCK_FILE
        self.what = what
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.what}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._stale(owner):
                    raise TurboNerfError(
                        f"run folder is in use by {owner.get('command', 'another command')} (PID {owner.get('pid')} on "
                        f"{owner.get('host')}); wait for it to finish, or delete {LOCK_FILE} if that process is gone",
                        self.path.parent,
                    ) from None
                print(f"warning: taking over a stale lock of {self.path.parent} (PID {owner and owner.get('pid')} is gone)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise TurboNerfError("could not take the run folder's lock", self.path)

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell from here
        try:
            os.kill(int(owner.get("pid")), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError, ValueError):
            return False
        return False

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def write_run_spec(run_dir: Path, spec: RunSpec) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, spec.to_json())


def read_run_spec(run_dir: Path) -> RunSpec:
    path = Path(run_dir) / RUN_FILE
    if not Path(run_dir).is_dir():
        raise TurboNerfError("run folder does not exist", run_dir)
    if not path.is_file():
        raise TurboNerfError("not a turbonerf run folder (run.json missing)", run_dir)
    try:
        raw = json.loads(path.read_text())
        scene = SceneMeta(**{**raw["scene"], "depth_bounds": tuple(raw["scene"]["depth_bounds"])})
        spec = RunSpec(method=raw["method"], config=raw["config"], scene=scene, seed=raw["seed"], version=raw.get("version", "?"),
                       training=raw.get("training", {}))
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"invalid JSON: {e}", path) from None
    except (KeyError, TypeError) as e:
        raise TurboNerfError(f"malformed run.json ({e})", path) from None
    try:
        config_from_dict(spec.method, spec.config)
    except TurboNerfError as e:
        raise TurboNerfError(e.problem, path) from None
    return spec


def build_model(spec: RunSpec, device: torch.device) -> Method:
    _, model_cls = get_method(spec.method)
    config = config_from_dict(spec.method, spec.config)
    return model_cls(config, torch.tensor(spec.scene.aabb, dtype=torch.float32)).to(device)


def checkpoint_path(run_dir: Path, checkpoint: Path | None = None) -> Path:
    return Path(run_dir) / CHECKPOINT if checkpoint is None else Path(checkpoint)


def load_trained(run_dir: Path, device: torch.device, checkpoint: Path | None = None) -> tuple[Method, RunSpec, dict]:
    """(model in eval mode, run spec, checkpoint metadata) of a trained run.

    ``checkpoint``: a specific checkpoint file of the run (default: the latest).
    """
    spec = read_run_spec(run_dir)
    ckpt = checkpoint_path(run_dir, checkpoint)
    if checkpoint is None:
        tensors, meta, note = load_checkpoint_or_previous(ckpt, device)
        if note:
            print(f"warning: {note}", file=sys.stderr)
    else:
        tensors, meta = load_checkpoint(ckpt, device)
    if meta.get("method") != spec.method:
        raise TurboNerfError(f"checkpoint is from method '{meta.get('method')}' but run.json says '{spec.method}'", ckpt)
    model = build_model(spec, device)
    load_model_tensors(model, tensors, ckpt)
    model.eval()
    return model, spec, meta


def default_tree_path(run_dir: Path) -> Path:
    """Where ``turbonerf bake`` puts the tree of a run."""
    return Path(run_dir) / DEFAULT_TREE


@dataclass
class RunRenderer:
    """What renders a run: its model, or a NerfTree baked from it.

    Attributes:
        render: (rays, background) -> {rgb [R, 3], depth [R], opacity [R]}.
        name: "model" or the tree backend's name (e.g. "nerftree-numba").
        spec: the run's run.json.
        meta: the checkpoint's metadata (step, seconds, ...), read without loading tensors for a tree.
        chunk: rays per ``render`` call that suit this renderer.
        model: the trained model when it renders, else None (a tree never loads the model).
        tree: the tree renderer when a tree renders, else None.
        tree_path: the tree file.
    """

    render: RenderFn
    name: str
    spec: RunSpec
    meta: dict
    chunk: int
    model: Method | None = None
    tree: TreeRenderer | None = None
    tree_path: Path | None = None

    def render_view(
        self, cameras: Cameras, index: int, near: float, far: float, ndc: bool, background: Tensor,
        chunk: int | None = None, device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Camera ``index``: rgb [H, W, 3], depth [H, W], opacity [H, W] on the CPU. A ray
        renderer renders the camera's rays in chunks of ``chunk`` (default: its own); an
        image-space student (:mod:`turbonerf.methods.image_student`) the whole frame in one call
        (depth zeros and opacity ones: it has no geometry)."""
        if self.model is not None and self.model.image_space:
            with torch.no_grad():
                rgb = self.model.render_views(cameras[index].to(device))[0].clamp(0, 1).cpu()
            h, w = rgb.shape[:2]
            return {"rgb": rgb, "depth": torch.zeros(h, w), "opacity": torch.ones(h, w)}
        return render_image(self.render, cameras, index, near, far, ndc, background, chunk=chunk or self.chunk, device=device)

    def describe(self) -> dict:
        """Fields of results.json that depend on the renderer: renderer, samples_per_ray, params,
        flops_per_ray, storage_mb (MiB: the model's state, or the tree file) and the tree's settings."""
        if self.tree is None:
            return {
                "renderer": self.name,
                "samples_per_ray": float(self.model.samples_per_ray()),
                "params": params(self.model),
                "flops_per_ray": flops_per_ray(self.model),
                "storage_mb": sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) / 2**20,
                **({"flops_per_frame": self.model.flops_per_frame()} if self.model.image_space else {}),
            }
        header = read_tree_header(self.tree_path)
        return {
            "renderer": self.name,
            "samples_per_ray": self.tree.samples_per_ray(),
            "params": None,
            "flops_per_ray": None,
            "storage_mb": self.tree_path.stat().st_size / 2**20,
            "tree": str(self.tree_path),
            "tree_coarse_res": header["coarse_res"],
            "tree_fine_res": header["fine_res"],
            "tree_sh_degree": header["sh_degree"],
            "tree_blocks": header["n_blocks"],
            "march_step": self.tree.step,
            "march_step_scale": self.tree.step / default_step(self.tree.tree, self.spec.scene.ndc),
            "lookup": self.tree.lookup,
            "bake_seconds": header.get("info", {}).get("bake_seconds"),
        }


@dataclass
class TreeOptions:
    """How a baked NerfTree renders (``--tree``, ``--lookup``, ``--step-scale``, backend)."""

    path: Path | None = None
    """the tree file (default RUN/baked/nerftree.safetensors)"""
    lookup: str = "nearest"
    step_scale: float = 1.0
    """marching step in fine voxels"""
    backend: str = "auto"
    threads: int | None = None
    t_min: float | None = None
    """early-termination transmittance (None: :data:`turbonerf.bake.nerftree.T_MIN`)"""


def renderer_for_run(
    run_dir: Path,
    device: torch.device,
    baked: bool = False,
    tree: TreeOptions | None = None,
    checkpoint: Path | None = None,
) -> RunRenderer:
    """The one place that decides what renders a run: its trained model (default; ``checkpoint``
    picks a snapshot), or with ``baked`` its NerfTree (``tree`` says which file and how to march;
    the model is then not loaded). A student run (``turbonerf distill``) is a run like any other:
    its model is the student."""
    run_dir = Path(run_dir)
    if not baked:
        model, spec, meta = load_trained(run_dir, device, checkpoint)
        return RunRenderer(model.render, "model", spec, meta, 4096, model=model)
    opts = tree or TreeOptions()
    if not opts.step_scale > 0:
        raise TurboNerfError(f"step scale must be positive, got {opts.step_scale}")
    if opts.t_min is not None and not 0.0 < opts.t_min < 1.0:
        raise TurboNerfError(f"--t-min must be between 0 and 1, got {opts.t_min}")
    spec = read_run_spec(run_dir)
    ckpt = checkpoint_path(run_dir, checkpoint)
    try:
        meta = read_checkpoint_meta(ckpt)
    except TurboNerfError:  # the tree renders without the checkpoint; its step is only reported
        meta = read_checkpoint_meta(previous_of(ckpt)) if previous_of(ckpt).is_file() else {}
    path = Path(opts.path) if opts.path else default_tree_path(run_dir)
    nerftree = load_tree(path)
    step = default_step(nerftree, spec.scene.ndc) * opts.step_scale
    renderer = TreeRenderer(nerftree, opts.backend, device, opts.lookup, step, t_min=T_MIN if opts.t_min is None else opts.t_min,
                            threads=opts.threads)
    return RunRenderer(renderer, renderer.name, spec, meta, 1 << 20, tree=renderer, tree_path=path)
