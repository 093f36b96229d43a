# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Training for a time budget (``SOLVER.TIME_BUDGET_MINUTES``): SOLVER.MAX_ITER becomes the longest
schedule, and a hook measures the step time early in the run and shortens the schedule (the LR
decay, the final checkpoint, the final evaluation) to the iterations that fit the budget.

The same recipe then ends in time on a slow CPU (a CPU without native bfloat16 trains in float32,
1.7x slower per step; machines of one kind differ by 1.5x from day to day) and trains longer where
the steps are fast. The number of iterations is rounded down to a multiple of ``round_to`` so that
runs on one machine usually agree on it; it is logged, and saved with the checkpoints so that a
resumed run keeps it.
"""

import logging
import time
from typing import Callable, Dict, Optional

from detectron2.engine import TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

__all__ = ["AdjustableLengthLoop", "TimeBudget", "set_schedule_length"]

logger = logging.getLogger(__name__)


class AdjustableLengthLoop(TrainerBase):
    """
    detectron2's training loop (:meth:`TrainerBase.train`), but the end is ``self.max_iter`` read
    at every iteration instead of a ``range`` fixed at the start, so that a hook can shorten the
    run. A trainer gets it by listing it after DefaultTrainer among its bases, whose ``train()``
    then calls this loop.
    """

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
                # As detectron2's loop leaves it: iter == max_iter marks a finished run.
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()


def set_schedule_length(trainer: TrainerBase, max_iter: int) -> None:
    """
    End ``trainer``'s run after ``max_iter`` iterations: its loop, LR schedule (the decay then
    reaches its end at ``max_iter``), final checkpoint and metric printer. The evaluation and
    metric writers read ``trainer.max_iter`` themselves.
    """
    trainer.max_iter = max_iter
    scheduler = getattr(trainer, "scheduler", None)
    if hasattr(scheduler, "max_iters"):  # detectron2.projects.deeplab's WarmupPolyLR
        scheduler.max_iters = max_iter
    elif hasattr(scheduler, "_max_iter"):  # detectron2's LRMultiplier
        scheduler._max_iter = max_iter
    for hook in getattr(trainer, "_hooks", []):
        if isinstance(hook, hooks.PeriodicCheckpointer):
            hook.max_iter = max_iter
            hook.checkpointer.max_iter = max_iter
        for writer in getattr(hook, "_writers", []):
            if hasattr(writer, "_max_iter"):  # CommonMetricPrinter's ETA
                writer._max_iter = max_iter


class TimeBudget(hooks.HookBase):
    """
    Fit the run into ``minutes`` of training (from the start of the loop; the final evaluation
    comes after it): the mean step time over iterations ``probe_start`` to ``probe_end`` (after
    the first, slower steps) gives the iterations that fit, rounded down to a multiple of
    ``round_to``, at most the trainer's ``max_iter`` and at least ``probe_end``. In several
    processes, the smallest of their estimates. A run resumed at or after ``probe_start`` from a
    checkpoint without a chosen length keeps the trainer's ``max_iter``. Periodic evaluations
    (TEST.EVAL_PERIOD) after the probe are not foreseen: they make the run that much longer.
    """

    def __init__(
        self,
        minutes: float,
        *,
        probe_start: int = 20,
        probe_end: int = 120,
        round_to: int = 100,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if minutes <= 0 or not 0 <= probe_start < probe_end:
            raise ValueError(
                f"TimeBudget: minutes must be > 0 and 0 <= probe_start < probe_end, got "
                f"{minutes}, {probe_start}, {probe_end}"
            )
        self._seconds = minutes * 60.0
        self._probe = (probe_start, probe_end)
        self._round_to = round_to
        self._clock = clock
        self._chosen: Optional[int] = None
        self._loop_start = self._probe_start_time = 0.0

    def before_train(self) -> None:
        self._loop_start = self._clock()
        if self._chosen is not None:  # resumed: the length chosen before the interruption
            set_schedule_length(self.trainer, self._chosen)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if self._chosen is not None or self.trainer.start_iter >= self._probe[0]:
            return  # chosen already, or resumed past the probe's start without a chosen length
        if done == self._probe[0]:
            self._probe_start_time = self._clock()
        elif done == self._probe[1]:
            self._choose(done)

    def _choose(self, done: int) -> None:
        now = self._clock()
        per_iter = max(now - self._probe_start_time, 1e-9) / (self._probe[1] - self._probe[0])
        remaining = self._seconds - (now - self._loop_start)
        fits = done + int(max(remaining, 0.0) / per_iter)
        fits = max(fits // self._round_to * self._round_to, done)
        chosen = min(min(comm.all_gather(fits)), self.trainer.max_iter)
        logger.info(
            "Time budget %.1f min: %.3f s per iteration over iterations %d-%d, so %d of at most "
            "%d iterations (about %.1f min)",
            self._seconds / 60,
            per_iter,
            *self._probe,
            chosen,
            self.trainer.max_iter,
            (now - self._loop_start + (chosen - done) * per_iter) / 60,
        )
        self._chosen = chosen
        set_schedule_length(self.trainer, chosen)

    def state_dict(self) -> Dict:
        return {} if self._chosen is None else {"max_iter": self._chosen}

    def load_state_dict(self, state: Dict) -> None:
        self._chosen = state.get("max_iter")
