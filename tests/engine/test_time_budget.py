# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
SOLVER.TIME_BUDGET_MINUTES: the schedule shortened to the iterations that fit the budget (LR
decay, final checkpoint and evaluation), kept on resume; off by default. A fake clock stands in
for the step times, so the chosen length is known in advance.
"""

import os
import weakref

import pytest
import torch
from e2e_helpers import make_tiny_datasets, read_metrics, tiny_cfg

from mask_former.engine import Trainer
from mask_former.engine.time_budget import TimeBudget


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> str:
    return make_tiny_datasets(str(tmp_path_factory.mktemp("datasets")))


def _budgeted_trainer(cfg, times):
    """A Trainer whose TimeBudget probes iterations 2-4, rounds to 2 and reads ``times``."""
    trainer = Trainer(cfg)
    index = next(i for i, h in enumerate(trainer._hooks) if isinstance(h, TimeBudget))
    hook = TimeBudget(
        cfg.SOLVER.TIME_BUDGET_MINUTES,
        probe_start=2,
        probe_end=4,
        round_to=2,
        clock=iter(times).__next__,
    )
    hook.trainer = weakref.proxy(trainer)
    trainer._hooks[index] = hook
    return trainer


def _cfg(out: str, minutes: float, **opts):
    return tiny_cfg(
        out,
        **{
            "SOLVER.MAX_ITER": 20,
            "SOLVER.TIME_BUDGET_MINUTES": minutes,
            "SOLVER.CHECKPOINT_PERIOD": 6,
            **opts,
        },
    )


def test_budget_shortens_schedule_checkpoint_and_evaluation(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    # Loop starts at t=0, iteration 2 done at 10 s, iteration 4 at 20 s: 5 s per iteration,
    # 40 s of the minute left = 8 more iterations: 12 of at most 20.
    trainer = _budgeted_trainer(_cfg(out, 1.0), [0.0, 10.0, 20.0])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == trainer.max_iter == 12
    assert trainer.scheduler.max_iters == 12
    # The LR of the last iteration is the poly decay's at 11 of 12 iterations, not of 20.
    base_lr, power = trainer.cfg.SOLVER.BASE_LR, trainer.cfg.SOLVER.POLY_LR_POWER
    last_lr = [r["lr"] for r in read_metrics(out) if "lr" in r][-1]
    assert last_lr == pytest.approx(base_lr * (1 - 11 / 12) ** power, rel=1e-6)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 11
    evaluations = [r for r in read_metrics(out) if "sem_seg/mIoU" in r]
    assert [r["iteration"] for r in evaluations] == [12]


def test_budget_never_lengthens_and_resume_keeps_the_chosen_length(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = _cfg(out, 60.0, **{"SOLVER.MAX_ITER": 8, "DATASETS.TEST": "()"})
    # An hour at 5 s per iteration: 720 iterations fit, but MAX_ITER (8) is the longest schedule.
    trainer = _budgeted_trainer(cfg, [0.0, 10.0, 20.0])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 8

    # Over budget already at the probe's end: the run stops there (4 iterations).
    out2 = str(tmp_path / "late")
    cfg2 = _cfg(out2, 0.1, **{"DATASETS.TEST": "()"})
    trainer = _budgeted_trainer(cfg2, [0.0, 10.0, 20.0])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 4
    assert os.path.isfile(os.path.join(out2, "model_final.pth"))

    # Resumed from the checkpoint of iteration 5 of a run that chose 12 of 20: a new trainer
    # (whose own probe would start at iteration 20) ends at 12 too.
    out3 = str(tmp_path / "resumed")
    cfg3 = _cfg(out3, 1.0, **{"DATASETS.TEST": "()"})
    trainer = _budgeted_trainer(cfg3, [0.0, 10.0, 20.0])
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(out3, "last_checkpoint"), "w") as f:
        f.write("model_0000005.pth")
    resumed = Trainer(cfg3)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    assert resumed.iter == 12 and resumed.scheduler.max_iters == 12


def test_budget_off_by_default_and_negative_is_an_error(datasets_root, tmp_path):
    trainer = Trainer(tiny_cfg(str(tmp_path / "a"), **{"DATASETS.TEST": "()"}))
    assert not any(isinstance(h, TimeBudget) for h in trainer._hooks)
    with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES must be >= 0"):
        Trainer(tiny_cfg(str(tmp_path / "b"), **{"SOLVER.TIME_BUDGET_MINUTES": -1.0}))


def test_resumed_at_probe_start_without_chosen_length_keeps_max_iter(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    # A run without a budget, interrupted after its checkpoint of iteration 1 (iterations 0, 1).
    plain = _cfg(out, 0.0, **{"SOLVER.MAX_ITER": 12, "SOLVER.CHECKPOINT_PERIOD": 2})
    plain.DATASETS.TEST = ()
    trainer = Trainer(plain)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    # Resumed with a budget whose probe starts at iteration 2: no step of it was timed, so the
    # run keeps its 12 iterations (the clock would otherwise give 8: 5 s per iteration, 20 s of
    # the half minute left at iteration 4).
    budgeted = plain.clone()
    budgeted.SOLVER.TIME_BUDGET_MINUTES = 0.5
    resumed = _budgeted_trainer(budgeted, [0.0, 10.0, 20.0])
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert resumed.iter == 12
