"""Training's learning-rate schedule: warm-up then cosine decay, its length set by the epochs
or fitted to the time budget (optim.schedule: budget)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from asr.config import ExperimentConfig
from asr.training.logs import log
from asr.training.run import EpochStats, Run


def make_scheduler(optimizer: torch.optim.Optimizer, config: ExperimentConfig, total_steps: Callable[[], int]):
    """Linear warm-up to the peak learning rate, then cosine decay to ``final_lr_ratio``.

    ``total_steps`` is asked at every step: a budget-fitted schedule learns its length after
    the second epoch.
    """
    warmup = max(1, config.optim.warmup_steps)
    final = config.optim.final_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps() - warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit_schedule_to_budget(run: Run, stats: EpochStats) -> None:
    """Fit the cosine decay to end as train.max_minutes runs out (optim.schedule: budget), or
    with train.epochs if the machine gets through those sooner.

    Measured once per session, over its second whole epoch (the first one also decodes and
    caches the audio): the wall time per step of that epoch's cycle (validation and
    checkpoints included) sets how many steps the rest of the budget holds. Saved in
    last.pt; a resumed run keeps that length until it has measured again, since it may run
    on another machine or with a new train.max_minutes.
    """
    config, state = run.config, run.state
    if config.optim.schedule != "budget" or run.schedule_fitted or run.schedule_mark is None:
        return
    if stats.stopped or state.batch_in_epoch != 0 or stats.steps == 0:
        return
    seconds_per_step = (time.monotonic() - run.schedule_mark) / stats.steps
    steps_left = (60 * config.train.max_minutes - run.train_seconds()) / seconds_per_step
    # A machine fast enough to finish train.epochs within the budget anneals by the epochs.
    state.schedule_steps = min(state.step + max(1, int(steps_left)), config.train.epochs * stats.steps)
    run.schedule_fitted = True
    log(f"schedule fitted to the {config.train.max_minutes:g}-minute budget: {seconds_per_step:.2f} s/step, "
        f"cosine decay ends at step {state.schedule_steps}")
    if state.schedule_steps <= config.optim.warmup_steps:
        log(f"warning: the budget holds only {state.schedule_steps} steps, no more than optim.warmup_steps="
            f"{config.optim.warmup_steps}: the learning rate will not decay; lower optim.warmup_steps")
