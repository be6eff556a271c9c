"""Run folders: ``run.json`` (what was trained, on what) + checkpoints; loading a trained run, and
:func:`renderer_for_run`, the one place that decides what renders a run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from turbonerf import __version__
from turbonerf.bake.nerftree import load_tree, read_tree_header
from turbonerf.bake.render import TreeRenderer, default_step
from turbonerf.data.scene import Scene
from turbonerf.engine.checkpoint import load_checkpoint, read_checkpoint_meta
from turbonerf.engine.loop import load_model_tensors
from turbonerf.errors import TurboNerfError
from turbonerf.eval.flops import flops_per_ray, params
from turbonerf.io.files import atomic_write_text
from turbonerf.methods.base import Method
from turbonerf.methods.registry import config_from_dict, get_method
from turbonerf.render.renderer import RenderFn

RUN_FILE = "run.json"
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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse to touch an existing non-empty folder unless ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TurboNerfError("run folder exists and is not empty (use --resume to continue it or --overwrite to replace it)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


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
        return RunSpec(method=raw["method"], config=raw["config"], scene=scene, seed=raw["seed"], version=raw.get("version", "?"))
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"invalid JSON: {e}", path) from None
    except (KeyError, TypeError) as e:
        raise TurboNerfError(f"malformed run.json ({e})", path) from None


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
    spec = read_run_spec(run_dir)
    meta = read_checkpoint_meta(checkpoint_path(run_dir, checkpoint))
    path = Path(opts.path) if opts.path else default_tree_path(run_dir)
    nerftree = load_tree(path)
    step = default_step(nerftree, spec.scene.ndc) * opts.step_scale
    renderer = TreeRenderer(nerftree, opts.backend, device, opts.lookup, step, threads=opts.threads)
    return RunRenderer(renderer, renderer.name, spec, meta, 1 << 20, tree=renderer, tree_path=path)
