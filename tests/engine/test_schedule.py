"""Budget schedules: warm-up, hold and decay as fractions of the budget, and the loop using them."""

import json
import math

import pytest
from conftest import TINY_VANILLA

from turbonerf.app.train import TrainOptions, budget_schedule, train
from turbonerf.engine.schedule import BudgetSchedule, budget_progress
from turbonerf.errors import TurboNerfError


def test_budget_schedule_shape():
    s = BudgetSchedule(warmup=0.1, decay_start=0.5, final=0.01, start=0.01)
    assert s(0.0) == pytest.approx(0.01)
    assert s(0.05) == pytest.approx(0.505)
    assert s(0.1) == s(0.3) == s(0.49) == 1.0
    assert s(0.75) == pytest.approx(0.1)  # halfway through the decay: sqrt(0.01)
    assert s(1.0) == pytest.approx(0.01) and s(2.0) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        BudgetSchedule(warmup=0.7, decay_start=0.5)


def test_budget_progress_takes_the_tighter_budget():
    assert budget_progress(50, 30.0, 100, 60.0) == 0.5
    assert budget_progress(80, 30.0, 100, 60.0) == 0.8
    assert budget_progress(10, 45.0, 100, 60.0) == 0.75
    assert budget_progress(10, 45.0, math.inf, math.inf) == 0.0


def test_the_budget_schedule_is_asked_for_and_needs_a_budget():
    assert budget_schedule(TrainOptions(method=None, data=None, out=".", max_steps=10)) is None
    assert budget_schedule(TrainOptions(method=None, data=None, out=".", max_steps=10, schedule="budget")) is not None
    assert budget_schedule(TrainOptions(method=None, data=None, out=".", max_minutes=1.0, schedule="budget")) is not None
    with pytest.raises(TurboNerfError, match="needs a budget"):
        budget_schedule(TrainOptions(method=None, data=None, out=".", schedule="budget"))


def test_training_follows_the_budget_schedule_and_says_so(tiny_scene, tmp_path):
    run = tmp_path / "run"
    train(TrainOptions(method="vanilla-nerf", data=tiny_scene, out=run, max_steps=20, batch_rays=32, overrides=TINY_VANILLA,
                       progress=False, log_every=1, schedule="budget", lr_final=0.1))
    lrs = [json.loads(line)["lr"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    base = max(lrs)
    s = BudgetSchedule(final=0.1)
    assert lrs[0] == pytest.approx(base * s(0 / 20))  # step 1 was trained with the factor at progress 0
    assert lrs[-1] == pytest.approx(base * s(19 / 20))
    assert lrs[10] == pytest.approx(base)  # held
    spec = json.loads((run / "run.json").read_text())
    assert spec["training"]["schedule"]["kind"] == "budget" and spec["training"]["max_steps"] == 20
