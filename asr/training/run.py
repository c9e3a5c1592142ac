"""What one training run carries: its position (TrainState, saved in last.pt), its parts
(Run, built once by ``loop.build_run``) and one epoch's statistics (EpochStats)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from asr.config import ExperimentConfig
from asr.data.dataset import BucketBatchSampler
from asr.data.text import CharVocabulary
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.training.distributed import Distributed
from asr.training.logs import TensorBoard, log


@dataclass
class TrainState:
    """Where training stands; saved in last.pt so that a run resumes exactly."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    step: int = 0  # optimiser steps so far
    best_cer: float = math.inf  # lowest validation CER so far
    train_seconds: float = 0.0  # wall time spent training, summed over resumed runs
    schedule_steps: int = 0  # steps the cosine decay spans when fitted to the time budget; 0 = by epochs
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation


@dataclass
class Run:
    """Everything one training run works with, built once by ``loop.build_run``."""

    config: ExperimentConfig
    dist: Distributed
    device: torch.device
    vocabulary: CharVocabulary
    frontend: FeatureFrontend
    model: AcousticModel  # the network itself: saved, validated
    step_model: torch.nn.Module  # what training steps call: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    train_sampler: BucketBatchSampler
    valid_loader: DataLoader | None
    board: TensorBoard | None  # rank 0 only
    out_dir: Path
    state: TrainState = field(default_factory=TrainState)
    session_start: float = field(default_factory=time.monotonic)
    trained_before: float = 0.0  # seconds trained by earlier sessions of this run
    # Monotonic time rank 0 last passed the schedule-fitting point in end_of_epoch: the fit
    # measures one whole epoch cycle (training, validation, checkpoints, barrier).
    schedule_mark: float | None = None
    schedule_fitted: bool = False  # the budget schedule was measured in this session
    phone_labels: list[torch.Tensor] | None = None  # per training utterance, for the phone CTC loss
    frozen: list[torch.nn.Parameter] = field(default_factory=list)  # fixed for the first train.freeze_steps steps

    def say(self, message: str) -> None:
        if self.dist.is_main:
            log(message)

    def train_seconds(self) -> float:
        return self.trained_before + time.monotonic() - self.session_start


@dataclass
class EpochStats:
    """One epoch's training figures, over this session's batches of it."""

    loss_sum: float = 0.0
    steps: int = 0
    audio_seconds: float = 0.0  # over all ranks
    data_seconds: float = 0.0  # spent waiting for the loader's next batch (the device idles)
    start: float = field(default_factory=time.monotonic)
    stopped: bool = False  # the step or time budget ran out

    @property
    def mean_loss(self) -> float | None:
        """None when this session trained no batch of the epoch (resumed at its very end)."""
        return self.loss_sum / self.steps if self.steps else None

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / max(1e-9, time.monotonic() - self.start)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_seconds / max(1e-9, time.monotonic() - self.start)
