"""Training's exact resume: seeding, the RNG states, and last.pt / best.pt written and read back."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.config import ExperimentConfig, to_dict
from asr.data.dataset import parts_of
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.storage.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_payload,
    check_resumable,
    read_checkpoint,
    save_checkpoint,
    train_audio_of,
)
from asr.training.logs import log
from asr.training.run import Run, TrainState


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Python's, numpy's, torch's (and CUDA's) RNG states, as last.pt stores them."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in _numpy_state().items()},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _numpy_state() -> dict[str, Any]:
    """numpy's global RNG state with its fields named."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": keys, "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` saved."""
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
        numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"],
    ))
    # RNG states are CPU byte tensors; a checkpoint loaded onto the GPU carries them there.
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def read_last(path: Path, config: ExperimentConfig, device: torch.device) -> Checkpoint | None:
    """An out_dir's last.pt, read and checked to hold the network ``config`` asks for and a
    training state (None when there is none: a new run)."""
    if not path.exists():
        return None
    saved = read_checkpoint(path, map_location=device)
    check_resumable(path, to_dict(saved.config), config)  # before the state dict's size mismatch would
    if saved.train_state is None:
        raise CheckpointError(f"{path} holds no training state (a copy of best.pt?); it cannot be resumed: "
                              "remove it to train from scratch, or choose a new train.out_dir")
    return saved


def resume(
    path: Path,
    saved: Checkpoint,
    config: ExperimentConfig,
    frontend: FeatureFrontend,
    model: AcousticModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    say: Callable[[str], None] = log,
) -> None:
    """Load last.pt (``saved``, from :func:`read_last`) into the model, optimiser, schedule,
    RNGs and ``state`` (in place: the schedule reads it)."""
    if to_dict(saved.config) != to_dict(config):
        say(f"note: {path} was written with different training settings; resuming with the new ones")
    model.load_state_dict(saved.model_state)
    frontend.normalizer.mean.copy_(saved.normalizer_mean)
    frontend.normalizer.std.copy_(saved.normalizer_std)
    train_state = saved.train_state
    assert train_state is not None  # read_last refuses a checkpoint without one
    optimizer.load_state_dict(train_state["optimizer"])
    scheduler.load_state_dict(train_state["scheduler"])
    scaler.load_state_dict(train_state["scaler"])
    restore_rng_states(train_state["rng"])
    for name, value in train_state["position"].items():
        setattr(state, name, value)
    say(f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step}")


def checkpoint_payload(run: Run, metrics: dict[str, Any], train_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """What transcription needs: config, vocabulary, normalisation, weights (+ metrics and
    the training inputs' durations, which bound the windows long audio is cut into), and
    ``train_state`` for last.pt."""
    items = run.train_loader.dataset.utterances
    train_audio = train_audio_of([item.duration for item in items], sum(len(parts_of(item)) for item in items))
    return build_payload(run.config, run.vocabulary, run.frontend.normalizer.mean, run.frontend.normalizer.std,
                         run.model.state_dict(), metrics, train_audio, train_state)


def save_last(run: Run, metrics: dict[str, Any]) -> None:
    """last.pt: the model plus everything an exact resume needs."""
    run.state.train_seconds = run.train_seconds()
    save_checkpoint(run.out_dir / "last.pt", checkpoint_payload(run, metrics, train_state={
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "position": dict(vars(run.state)),
        "rng": rng_states(),
    }))
