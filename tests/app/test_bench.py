import json

from turbonerf.app.bench import pareto_front
from turbonerf.cli.main import main
from turbonerf.engine import runtime

TINY = ["vanilla-nerf:width=32", "vanilla-nerf:depth=2", "vanilla-nerf:color_width=16", "vanilla-nerf:n_coarse=8",
        "vanilla-nerf:n_fine=8", "instant-ngp:n_levels=4", "instant-ngp:log2_table_size=12", "instant-ngp:max_resolution=64",
        "instant-ngp:hidden=16", "instant-ngp:grid_resolution=16", "instant-ngp:steps_per_diagonal=128"]


def test_pareto_front():
    assert pareto_front([(1, 20), (2, 25), (3, 24), (0.5, 10), (4, 30)]) == [(0.5, 10), (1, 20), (2, 25), (4, 30)]


def test_bench_two_methods_two_budgets_then_nothing_reruns(tiny_scene, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    args = ["bench", "--scenes", str(tiny_scene), "--methods", "vanilla-nerf", "instant-ngp", "instant-ngp@paper",
            "--minutes", "0.02", "--minutes", "0.04", "--out", str(out), "--downscale", "1", "--every", "1",
            "--batch-rays", "64", "--no-progress", "--no-lpips-vgg", "--bake", "--bake-coarse-res", "8"]
    for kv in TINY + [kv.replace("instant-ngp:", "instant-ngp@paper:") for kv in TINY if kv.startswith("instant-ngp:")]:
        args += ["--set", kv]
    args += ["--set", "instant-ngp:schedule=budget", "--set", "instant-ngp@paper:carve_from_views=false",
             "--set", "instant-ngp@paper:bf16=true"]
    assert main(args) == 0
    data = json.loads((out / "bench.json").read_text())
    assert len(data["records"]) == 3 * 2 + 3  # methods x budgets + a baked tree per method
    # budget schedule: one run per budget, scheduled over it; the variant: one run with a snapshot, the paper's steps
    runs = out / "runs" / "scene"
    for b in ("0.02", "0.04"):
        spec = json.loads((runs / "instant-ngp" / f"{b}min" / "run.json").read_text())
        assert spec["training"]["schedule"]["kind"] == "budget" and spec["training"]["max_minutes"] == float(b)
        assert spec["config"]["carve_from_views"] is True
    paper = json.loads((runs / "instant-ngp@paper" / "run.json").read_text())
    assert paper["training"]["schedule"] == {"kind": "method"} and paper["config"]["carve_from_views"] is False
    # bf16=true takes effect only on hardware with native bf16; the default variant is float32 anywhere
    assert paper["training"]["bf16"] is runtime.native_bf16("cpu")
    assert json.loads((runs / "instant-ngp" / "0.02min" / "run.json").read_text())["training"]["bf16"] is False
    assert (runs / "instant-ngp@paper" / "checkpoints" / "snapshot_0.02min.safetensors").is_file()
    assert data["records"]["scene|instant-ngp@paper|0.04|model"]["psnr"] > 0
    for name in ("bench.md", "pareto.png", "training.png"):
        assert (out / name).stat().st_size > 0
    assert data["machine"]["cpu"] and data["protocol"]["downscale"] == 1
    rec = data["records"]["scene|instant-ngp|0.04|model"]
    assert rec["psnr"] > 0 and rec["steps"] > 0 and rec["ms_per_frame"] > 0 and rec["flops_per_ray"] > 0
    assert "| scene | method |" in (out / "bench.md").read_text()

    import turbonerf.app.bench as bench

    def boom(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "train", boom)
    monkeypatch.setattr(bench, "evaluate_run", boom)
    monkeypatch.setattr(bench, "bake_run", boom)
    assert main(args) == 0


def test_a_sharded_bench_merges_every_process_cells_into_one_bench(tiny_scene, tmp_path, monkeypatch):
    """The two ranks of ``bench --nproc 2`` run one after the other here (their barriers are then
    no-ops): rank 1 keeps its cell in a part file, rank 0 merges it into bench.json."""
    import turbonerf.app.bench as bench
    from turbonerf.engine.distributed import Replicas

    out = tmp_path / "bench"
    opts = bench.BenchOptions(
        scenes=[tiny_scene], methods=["vanilla-nerf", "instant-ngp"], minutes=[0.01], out=out, downscale=1, every=1,
        overrides=TINY, batch_rays=64, lpips_vgg=False, progress=False,
    )
    monkeypatch.setattr(Replicas, "barrier", lambda self: None)
    assert bench.run_bench(opts, Replicas(rank=1, world_size=2)) is None
    assert not (out / "bench.json").exists()
    part = json.loads((out / "bench.part1.json").read_text())["records"]
    assert list(part) == ["scene|instant-ngp|0.01|model"]  # pair 1 of 2 is rank 1's
    data = bench.run_bench(opts, Replicas(rank=0, world_size=2))
    assert sorted(data["records"]) == ["scene|instant-ngp|0.01|model", "scene|vanilla-nerf|0.01|model"]
    assert data["protocol"]["processes"] == 2 and not list(out.glob("bench.part*.json"))
    assert json.loads((out / "bench.json").read_text())["records"] == data["records"]
    assert "2 processes ran the cells at once" in (out / "bench.md").read_text()

    def boom(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "train", boom)
    monkeypatch.setattr(bench, "evaluate_run", boom)
    assert len(bench.run_bench(opts, Replicas())["records"]) == 2
