"""Run folders: ``run.json`` (what was trained, on what) + checkpoints; loading a trained method."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from turbonerf import __version__
from turbonerf.data.scene import Scene
from turbonerf.engine.checkpoint import atomic_write_text, load_checkpoint
from turbonerf.errors import TurboNerfError
from turbonerf.methods.registry import config_from_dict, get_method

RUN_FILE = "run.json"
CHECKPOINT = Path("checkpoints") / "latest.safetensors"


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


def build_model(spec: RunSpec, device: torch.device) -> torch.nn.Module:
    _, model_cls = get_method(spec.method)
    config = config_from_dict(spec.method, spec.config)
    return model_cls(config, torch.tensor(spec.scene.aabb, dtype=torch.float32)).to(device)


def split_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(split_state(tensors, "model"))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise TurboNerfError(f"checkpoint does not fit this model ({first})", path) from None


def load_trained(run_dir: Path, device: torch.device, checkpoint: Path | None = None) -> tuple[torch.nn.Module, RunSpec, dict]:
    """(model in eval mode, run spec, checkpoint metadata) of a trained run.

    ``checkpoint``: a specific checkpoint file of the run (default: the latest).
    """
    spec = read_run_spec(run_dir)
    ckpt = Path(run_dir) / CHECKPOINT if checkpoint is None else Path(checkpoint)
    tensors, meta = load_checkpoint(ckpt, device)
    if meta.get("method") != spec.method:
        raise TurboNerfError(f"checkpoint is from method '{meta.get('method')}' but run.json says '{spec.method}'", ckpt)
    model = build_model(spec, device)
    load_model_state(model, tensors, ckpt)
    model.eval()
    return model, spec, meta
