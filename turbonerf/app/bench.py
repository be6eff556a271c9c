"""``turbonerf bench``: every method on every scene under one protocol, resumable, with plots.

Protocol (written into ``bench.json``): with the papers' step schedules (``schedule="method"``,
the default) each (scene, method) trains once for the largest budget at ``downscale``, keeping
snapshots when its training time passes the smaller budgets; with the budget schedule each
(scene, method, budget) is its own training run whose learning rate is scheduled over that
budget, as a user who asks for that many minutes gets. Every run or snapshot is evaluated
on the same test views (every ``every``-th) at the training resolution with the same thread
settings.

A method entry may be a variant ``METHOD@LABEL`` (e.g. ``instant-ngp@paper``) with its own
options ``--set METHOD@LABEL:KEY=VALUE``, so that two settings of one method are measured in the
same bench; the keys ``schedule`` (budget | method), ``lr_final`` and ``bf16`` (true: bf16 autocast and bf16 matmuls
in training and scoring where the hardware has native bf16; default false, float32 throughout)
are training options. With ``bake``, the final model is also baked into a NerfTree and
evaluated as its own renderer. A cell (scene x method x budget x renderer) already in
``bench.json`` is never run again, and a finished training is never repeated, so an interrupted
bench continues where it stopped.

With several processes (``--nproc N`` or torchrun) the (scene, method) pairs are dealt out, one
pair to one process, which trains, evaluates and bakes it alone (one rank per machine or GPU is
how this pays: N processes on one CPU share its cores, so their timings are not those of a quiet
machine, and bench.md says how many ran at once). Each process keeps its finished cells in
``bench.part<rank>.json`` until rank 0 merges them into ``bench.json``, so an interrupted sharded
bench loses no cell either.

Outputs in ``out``: ``bench.json`` (machine, protocol, one record per cell), ``bench.md`` (the
table), ``pareto.png`` (PSNR against ms per frame, log scale, the Pareto front drawn) and
``training.png`` (PSNR against training minutes, one line per method and scene), and the runs
themselves under ``out/runs/<scene>/<method>``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.app.bake import BakeOptions, bake_run
from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.runs import CHECKPOINT
from turbonerf.app.train import TrainOptions, train
from turbonerf.app.validate import require_positive
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.engine.distributed import WORK_TIMEOUT_S, Replicas, device_for_rank, joined
from turbonerf.engine.schedule import BudgetSchedule
from turbonerf.errors import TurboNerfError
from turbonerf.io.files import atomic_write_text
from turbonerf.methods.registry import get_method

BENCH_FILE = "bench.json"
PART_GLOB = "bench.part*.json"
"""the finished cells of one process of a sharded bench, not yet merged into bench.json"""

PUBLISHED = [
    # method, scene, PSNR (dB), resolution, hardware and training time, source
    ("vanilla-nerf", "lego", 32.54, "800x800", "1 V100, 100-300k steps (1-2 days)", "Mildenhall et al. 2020, per-scene synthetic table"),
    ("vanilla-nerf", "fern", 25.17, "1008x756", "1 V100, 100-300k steps (1-2 days)", "Mildenhall et al. 2020, per-scene LLFF table"),
    ("instant-ngp", "lego", 36.39, "800x800", "1 RTX 3090, 5 min", "Mueller et al. 2022, per-scene NeRF-synthetic table"),
]
"""Published figures on the same scenes, for context only: other resolutions, GPUs and hours."""


@dataclass
class BenchOptions:
    """The grid and the protocol of one bench."""

    scenes: list[Path]
    methods: list[str]
    minutes: list[float]
    out: Path
    downscale: int = 4
    every: int = 25
    """evaluate every k-th test view (0, k, 2k, ...)"""
    limit: int | None = None
    bake: bool = False
    """also bake each final model into a NerfTree and evaluate the tree"""
    bake_coarse_res: int | None = None
    """D_c of the baked trees (None: ``turbonerf bake``'s default, 192, or 128 for contracted scenes)"""
    overrides: list[str] = field(default_factory=list)
    """METHOD:KEY=VALUE method options"""
    batch_rays: int = 1024
    schedule: str = "method"
    """"method": one run per method with the paper's step schedule and snapshots at the smaller
    budgets; "budget": one run per budget, its learning rate scheduled over it"""
    threads: int | None = None
    lpips_vgg: bool = True
    progress: bool = True


def machine_info() -> dict:
    """CPU model, cores, threads, library versions and GPU (if any) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numba": numba_version,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def base_method(variant: str) -> str:
    """``instant-ngp@paper`` -> ``instant-ngp``."""
    return variant.split("@", 1)[0]


TRAINING_KEYS = ("schedule", "lr_final", "bf16")
"""keys of ``--set VARIANT:KEY=VALUE`` that are training options, not method options"""


def variant_settings(opts: BenchOptions, variant: str) -> tuple[list[str], dict[str, str]]:
    """(method overrides, training options) given to ``variant`` by ``--set VARIANT:KEY=VALUE``."""
    method_opts, training = [], {}
    for item in opts.overrides:
        target, _, setting = item.partition(":")
        if target != variant:
            continue
        key, _, value = setting.partition("=")
        if key.strip() in TRAINING_KEYS:
            training[key.strip()] = value.strip()
        else:
            method_opts.append(setting)
    return method_opts, training


def schedule_of(opts: BenchOptions, variant: str) -> str:
    schedule = variant_settings(opts, variant)[1].get("schedule", opts.schedule)
    if schedule not in ("budget", "method"):
        raise TurboNerfError(f"unknown schedule '{schedule}' for {variant} (choose budget or method)")
    return schedule


def cell_key(scene: str, method: str, budget: float, renderer: str) -> str:
    return f"{scene}|{method}|{budget:g}|{renderer}"


def _load(out: Path) -> dict:
    """bench.json's content, with the cells of any process's part file merged in."""
    path = out / BENCH_FILE
    data = _read_json(path) if path.is_file() else {"records": {}}
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise TurboNerfError("not a bench.json (no records)", path)
    for part in sorted(out.glob(PART_GLOB)):
        records = _read_json(part).get("records")
        if not isinstance(records, dict):
            raise TurboNerfError("not a bench part file (no records)", part)
        data["records"].update(records)
    return data


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"not valid JSON ({e}); move it away to start a new bench", path) from None


def _protocol(opts: BenchOptions) -> dict:
    p = asdict(opts)
    p.pop("progress")
    p["scenes"] = [str(s) for s in opts.scenes]
    p["out"] = str(opts.out)
    return p


def _record(scene: str, method: str, budget: float, res: dict) -> dict:
    ms = res["ms_per_frame"]
    return {
        "scene": scene,
        "method": method,
        "budget_min": budget,
        "renderer": "model" if res["renderer"] == "model" else "nerftree",
        "renderer_detail": res["renderer"],
        "steps": res["step"],
        "s_per_step": (res["train_seconds"] or 0.0) / max(res["step"] or 1, 1),
        "samples_per_ray": res["samples_per_ray"],
        "psnr": res["psnr"],
        "ssim": res["ssim"],
        "lpips_alex": res.get("lpips_alex"),
        "lpips_vgg": res.get("lpips_vgg"),
        "ms_per_frame": ms,
        "fps": 1000.0 / ms if ms else None,
        "frame_size": f"{res['width']}x{res['height']}",
        "n_images": res["n_images"],
        "storage_mb": res["storage_mb"],
        "params": res["params"],
        "flops_per_ray": res["flops_per_ray"],
    }


def check_bench_options(opts: BenchOptions) -> None:
    if not opts.scenes or not opts.methods or not opts.minutes:
        raise TurboNerfError("bench needs at least one --scenes, --methods and --minutes value")
    for m in opts.methods:
        get_method(base_method(m))
        schedule_of(opts, m)
    if len(set(opts.methods)) != len(opts.methods):
        raise TurboNerfError("--methods lists a method twice (name variants METHOD@LABEL)")
    for m in opts.minutes:
        require_positive("--minutes", m)
    require_positive("--every", opts.every)
    require_positive("--downscale", opts.downscale)
    names = [Path(s).name for s in opts.scenes]
    if len(set(names)) != len(names):
        raise TurboNerfError(f"scene folders must have distinct names (got {', '.join(names)})")


def run_bench(opts: BenchOptions, replicas: Replicas | None = None) -> dict | None:
    """Run every missing cell of the grid; returns bench.json's content (also written, with
    bench.md and the plots; None on ranks other than 0 of a sharded bench).

    ``replicas``: the processes sharing the grid (default: those torchrun or ``--nproc`` started,
    or this one alone); each runs its (scene, method) pairs alone."""
    check_bench_options(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = runtime.resolve_device("auto")
    with joined(device, replicas, WORK_TIMEOUT_S) as replicas:
        device_for_rank(device, replicas)
        return _run_cells(opts, replicas)


def _run_cells(opts: BenchOptions, replicas: Replicas) -> dict | None:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _load(out)
    replicas.barrier()  # every rank has read the part files before rank 0 merges them
    data.update(protocol=_protocol(opts), machine=machine_info(), updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    data["protocol"]["processes"] = replicas.world_size
    budgets = sorted(set(opts.minutes))
    pairs = [(Path(s), m) for s in opts.scenes for m in opts.methods]
    cells = [pairs[i] for i in replicas.shard(len(pairs))]
    own_part = out / f"bench.part{replicas.rank}.json"
    mine: dict = _read_json(own_part).get("records", {}) if own_part.is_file() else {}  # this rank's part file's cells
    total = len(cells) * len(budgets) * (2 if opts.bake else 1)
    progress = opts.progress and replicas.is_main
    bar = tqdm(total=total, desc="bench" + (f" (rank 0 of {replicas.world_size})" if replicas.distributed else ""),
               unit="cell", disable=not progress, position=0)
    eval_opts = EvalOptions(every=opts.every, limit=opts.limit, downscale=opts.downscale, progress=False, lpips_vgg=opts.lpips_vgg)
    alone = Replicas()

    def save() -> None:
        data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if not replicas.is_main:
            atomic_write_text(own_part, json.dumps({"records": mine}, indent=2))
            return
        for part in sorted(out.glob(PART_GLOB)):  # the others' cells finished so far
            data["records"].update(_read_json(part).get("records", {}))
        data["records"].update(mine)
        atomic_write_text(out / BENCH_FILE, json.dumps(data, indent=2))
        write_reports(data, out)

    def add(key: str, record: dict) -> None:
        data["records"][key] = mine[key] = record
        save()

    for scene, method in cells:
        name = scene.name
        cell_eval = replace(eval_opts, bf16=bf16_of(opts, method))
        per_budget = schedule_of(opts, method) == "budget"
        run = out / "runs" / name / method
        todo = [b for b in budgets if cell_key(name, method, b, "model") not in data["records"]]
        if todo and not per_budget:
            _train_cell(opts, scene, method, run, budgets[-1], budgets[:-1], progress)
        for b in budgets:
            key = cell_key(name, method, b, "model")
            if key not in data["records"]:
                bar.set_postfix_str(f"{name} {method} {b:g} min")
                if per_budget:
                    b_run = run / f"{b:g}min"
                    _train_cell(opts, scene, method, b_run, b, [], progress)
                    res = evaluate_run(b_run, cell_eval, out_name="bench", replicas=alone)
                else:
                    res = evaluate_run(run, cell_eval, checkpoint=_snapshot(run, b, budgets), out_name=f"bench_{b:g}min", replicas=alone)
                add(key, _record(name, method, b, res))
            bar.update(1)
        if per_budget:
            run = run / f"{budgets[-1]:g}min"
        if opts.bake:
            b = budgets[-1]
            key = cell_key(name, method, b, "nerftree")
            if key not in data["records"]:
                try:
                    bake_run(run, BakeOptions(coarse_res=opts.bake_coarse_res, overwrite=True, progress=False), replicas=alone)
                    res = evaluate_run(run, cell_eval, baked=True, out_name="bench_baked", replicas=alone)
                    add(key, _record(name, method, b, res))
                except TurboNerfError as err:  # a method without a density field (a light field)
                    add(key, {"scene": name, "method": method, "budget_min": b, "renderer": "nerftree", "skipped": err.problem})
            bar.update(len(budgets))
    bar.close()
    save()
    replicas.barrier()  # every part file is complete
    if not replicas.is_main:
        return None
    save()
    for part in out.glob(PART_GLOB):
        part.unlink()
    return data


def _snapshot(run: Path, budget: float, budgets: list[float]) -> Path:
    if budget == budgets[-1]:
        return run / CHECKPOINT
    return run / CHECKPOINT.with_name(f"snapshot_{budget:g}min.safetensors")


def bf16_of(opts: BenchOptions, variant: str) -> bool:
    """Whether ``variant`` trains and is scored with bf16 where the hardware has it natively (its
    ``bf16`` key; default false: float32 throughout)."""
    _, training = variant_settings(opts, variant)
    bf16 = training.get("bf16", "false").lower()
    if bf16 not in ("true", "false"):
        raise TurboNerfError(f"bf16 of {variant} must be true or false, not {training['bf16']!r}")
    return bf16 == "true"


def _train_cell(opts: BenchOptions, scene: Path, variant: str, run: Path, minutes: float, snapshots: list[float], progress: bool) -> None:
    """Train (or finish training) one run of ``variant`` for ``minutes``, with snapshots at ``snapshots``."""
    ckpt = run / CHECKPOINT
    if ckpt.is_file() and read_checkpoint_meta(ckpt).get("seconds", 0.0) >= 60.0 * minutes - 1.0:
        return
    overrides, training = variant_settings(opts, variant)
    try:
        lr_final = float(training.get("lr_final", BudgetSchedule.final))
    except ValueError:
        raise TurboNerfError(f"lr_final of {variant} is not a number: {training['lr_final']!r}") from None
    train(TrainOptions(
        method=base_method(variant), data=scene, out=run, max_minutes=minutes, downscale=opts.downscale,
        overrides=overrides, schedule=schedule_of(opts, variant), lr_final=lr_final, bf16=bf16_of(opts, variant),
        snapshot_minutes=snapshots, resume=(run / "run.json").is_file(), batch_rays=opts.batch_rays,
        checkpoint_minutes=5.0, checkpoint_every=10**9, progress=progress,
    ), replicas=Replicas())


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def markdown_table(data: dict) -> str:
    """bench.md: the protocol, the machine, the table, and published figures on the same scenes."""
    p, m = data["protocol"], data["machine"]
    recs = [r for r in data["records"].values() if "skipped" not in r]
    recs.sort(key=lambda r: (r["scene"], r["method"], r["renderer"], r["budget_min"]))
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, numba {m['numba']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f". Updated {data.get('updated')}.",
        f"Protocol: downscale {p['downscale']}, every {p['every']}-th test view, {p['batch_rays']} rays per step, budgets "
        f"{', '.join(f'{b:g}' for b in sorted(set(p['minutes'])))} min of training time"
        + (", one run per budget with the learning rate scheduled over it (budget schedule)." if p.get("schedule", "method") == "budget"
           else ", snapshots of one run per method (the papers' step schedules).")
        + (f" Settings: {'; '.join(p['overrides'])}." if p.get("overrides") else "")
        + (f" {p['processes']} processes ran the cells at once on this machine: their times share it." if p.get("processes", 1) > 1 else ""),
        "",
        "| scene | method | renderer | budget (min) | steps | s/step | samples/ray | PSNR | SSIM | LPIPS-Alex | LPIPS-VGG | ms/frame | FPS | MB | params | MFLOPs/ray |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        flops = None if r["flops_per_ray"] is None else r["flops_per_ray"] / 1e6
        lines.append(
            f"| {r['scene']} | {r['method']} | {r['renderer']} | {r['budget_min']:g} | {r['steps']} | {_fmt(r['s_per_step'], '.3f')} "
            f"| {_fmt(r['samples_per_ray'], '.1f')} | {_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.3f')} | {_fmt(r['lpips_alex'], '.3f')} "
            f"| {_fmt(r['lpips_vgg'], '.3f')} | {_fmt(r['ms_per_frame'], '.0f')} | {_fmt(r['fps'], '.2f')} | {_fmt(r['storage_mb'], '.1f')} "
            f"| {_fmt(r['params'], ',')} | {_fmt(flops, '.2f')} |"
        )
    skipped = [r for r in data["records"].values() if "skipped" in r]
    for r in skipped:
        lines.append(f"\n{r['method']} on {r['scene']}: no {r['renderer']} ({r['skipped']})")
    scenes = {r["scene"] for r in recs}
    pub = [x for x in PUBLISHED if x[1] in scenes]
    if pub:
        lines += ["", "Published figures on the same scenes (other resolutions, GPUs and training times; context, not a comparison):", "",
                  "| method | scene | PSNR | resolution | hardware, training | source |", "|---|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c:.2f} | {d} | {e} | {f} |" for a, b, c, d, e, f in pub]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both (lower ms, higher PSNR), sorted by ms."""
    front, best = [], -float("inf")
    for ms, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((ms, q))
            best = q
    return front


def write_reports(data: dict, out: Path) -> None:
    """bench.md, pareto.png and training.png from bench.json's content."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_text(out / "bench.md", markdown_table(data))
    recs = [r for r in data["records"].values() if "skipped" not in r and r.get("psnr") is not None and r.get("ms_per_frame")]
    methods = sorted({r["method"] for r in recs})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in recs:
        marker = "s" if r["renderer"] == "nerftree" else ("^" if r["method"] in ("r2l",) else "o")
        ax.scatter(r["ms_per_frame"], r["psnr"], color=colours[r["method"]], marker=marker, s=20 + 8 * r["budget_min"])
    front = pareto_front([(r["ms_per_frame"], r["psnr"]) for r in recs])
    if front:
        ax.plot(*zip(*front), "k--", lw=1, label="Pareto front")
    for m in methods:
        ax.scatter([], [], color=colours[m], marker="o", label=m)
    if any(r["renderer"] == "nerftree" for r in recs):
        ax.scatter([], [], color="grey", marker="s", label="baked NerfTree")
    ax.set_xscale("log")
    ax.set_xlabel("ms per frame (log scale)")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("quality vs render time (marker size: training minutes)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (scene, method) in sorted({(r["scene"], r["method"]) for r in recs if r["renderer"] == "model"}):
        rows = sorted((r for r in recs if r["renderer"] == "model" and r["scene"] == scene and r["method"] == method), key=lambda r: r["budget_min"])
        ax.plot([r["budget_min"] for r in rows], [r["psnr"] for r in rows], "o-", color=colours[method], label=f"{method} ({scene})")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title("quality per training minute")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)
