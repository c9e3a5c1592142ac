"""One checkpoint file holds everything needed to transcribe (and to resume training).

Layout (a dict of plain types and tensors, so it loads with ``weights_only=True``, which
never executes pickled code)::

    format: "asr-checkpoint"      version: CHECKPOINT_VERSION
    config: ExperimentConfig as a nested dict (features, model, ... settings)
    vocabulary: list of characters (the blank, id 0, is implied)
    normalizer: {"mean": (n_mels,), "std": (n_mels,)}
    model: acoustic model state_dict
    metrics: {"epoch": ..., "valid_wer": ..., ...}
    train_state: optional; optimiser, scheduler, position and RNG states for exact resume
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from asr import __version__
from asr.errors import AsrError

CHECKPOINT_FORMAT = "asr-checkpoint"
CHECKPOINT_VERSION = 1  # bump when the layout or the network's parameter names change


class CheckpointError(AsrError):
    """A checkpoint is missing, corrupt or from an incompatible version."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "asr_version": __version__, **payload}
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give it normal file permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an asr checkpoint")
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} (written by asr {payload.get('asr_version', '?')}) "
            f"is not supported by this asr {__version__}, which reads version {CHECKPOINT_VERSION}"
        )
    for key in ("config", "vocabulary", "normalizer", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def average_checkpoints(paths: list[str | Path]) -> dict[str, Any]:
    """Element-wise mean of the model weights of several checkpoints of one run.

    Config, vocabulary and normalisation come from the last checkpoint; integer buffers
    (e.g. BatchNorm's step counter) are taken from it too. Training state is dropped.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    last = payloads[-1]
    for path, payload in zip(paths, payloads):
        if payload["config"]["model"] != last["config"]["model"] or payload["vocabulary"] != last["vocabulary"]:
            raise CheckpointError(f"{path}: a different model or vocabulary than {paths[-1]}; cannot average")
    averaged = {}
    for name, value in last["model"].items():
        if value.is_floating_point():
            averaged[name] = sum(p["model"][name].double() for p in payloads).div(len(payloads)).to(value.dtype)
        else:
            averaged[name] = value
    metrics = {"averaged_from": [str(p) for p in paths]}
    keep = {k: v for k, v in last.items() if k not in ("format", "version", "asr_version", "train_state", "metrics")}
    return {**keep, "model": averaged, "metrics": metrics}
