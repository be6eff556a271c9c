import json

import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.app import train as tr
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.app.runs import CHECKPOINT, load_trained
from turbonerf.errors import TurboNerfError


def _opts(scene, out, **kw):
    base = dict(method="vanilla-nerf", data=scene, out=out, overrides=TINY_VANILLA, batch_rays=64, progress=False, log_every=1)
    return tr.TrainOptions(**(base | kw))


def test_two_step_smoke_run(tiny_scene, tmp_path):
    res = tr.train(_opts(tiny_scene, tmp_path / "run", max_steps=2))
    assert res.step == 2
    meta = read_checkpoint_meta(tmp_path / "run" / CHECKPOINT)
    assert meta["step"] == 2 and meta["method"] == "vanilla-nerf"
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2]
    model, spec, _ = load_trained(tmp_path / "run", torch.device("cpu"))
    assert spec.config["width"] == 32


def test_interrupt_saves_checkpoint_and_resume_continues(tiny_scene, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = tr.sample_pixels

    def interrupt_on_fourth(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(tr, "sample_pixels", interrupt_on_fourth)
    with pytest.raises(tr.TrainingInterrupted):
        tr.train(_opts(tiny_scene, tmp_path / "run", max_steps=10))
    assert read_checkpoint_meta(tmp_path / "run" / CHECKPOINT)["step"] == 3
    monkeypatch.setattr(tr, "sample_pixels", real)
    res = tr.train(_opts(tiny_scene, tmp_path / "run", max_steps=5, resume=True))
    assert res.step == 5
    meta = read_checkpoint_meta(tmp_path / "run" / CHECKPOINT)
    assert meta["step"] == 5
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_existing_run_folder_is_not_overwritten(tiny_scene, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(TurboNerfError, match="run folder exists"):
        tr.train(_opts(tiny_scene, out, max_steps=1))
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(TurboNerfError, match="only a turbonerf run folder"):  # not a run: never deleted
        tr.train(_opts(tiny_scene, out, max_steps=1, overwrite=True))
    assert (out / "precious.txt").read_text() == "keep me"


def test_unknown_method_and_bad_option_fail_before_loading(tmp_path):
    with pytest.raises(TurboNerfError, match="unknown method 'nope'"):
        tr.train(_opts(tmp_path / "missing", tmp_path / "run", method="nope"))
    with pytest.raises(TurboNerfError, match="bad --set"):
        tr.train(_opts(tmp_path / "missing", tmp_path / "run", overrides=["widht=3"]))
    assert not (tmp_path / "run").exists()


def test_training_reduces_the_loss(tiny_scene, tmp_path):
    tr.train(_opts(tiny_scene, tmp_path / "run", max_steps=60, overrides=TINY_VANILLA + ["lr=5e-3"], batch_rays=256))
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    first = sum(r["mse"] for r in log[:5]) / 5
    last = sum(r["mse"] for r in log[-5:]) / 5
    assert last < 0.5 * first


def test_box_pixels_stay_inside_their_views_boxes():
    boxes = torch.tensor([[2, 5, 3, 9], [0, 1, 7, 8]])
    img, u, v = tr.sample_box_pixels(boxes, 2000, torch.Generator().manual_seed(0))
    b = boxes[img]
    assert ((v >= b[:, 0]) & (v < b[:, 1]) & (u >= b[:, 2]) & (u < b[:, 3])).all()
    assert set(img.tolist()) == {0, 1}
    assert len(set(zip(u[img == 0].tolist(), v[img == 0].tolist()))) == 18  # every pixel of box 0 drawn
