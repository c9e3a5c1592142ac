"""One checkpoint file holds everything needed to transcribe (and to resume training).

This module alone builds and reads the layout (a dict of plain types and tensors, so it
loads with ``weights_only=True``, which never executes pickled code)::

    format: "asr-checkpoint"      version: CHECKPOINT_VERSION      asr_version: "0.1.0"
    config: ExperimentConfig as a nested dict (features, model, ... settings)
    vocabulary: list of characters (the blank, id 0, is implied)
    normalizer: {"mean": (n_mels,), "std": (n_mels,)}
    model: acoustic model state_dict
    metrics: {"epoch": ..., "valid_wer": ..., ...}
    train_audio: {"max_seconds", "mean_seconds", "utterances"} of the training set (TrainAudio), or None
    train_state: optional; optimiser, scheduler, position and RNG states for exact resume

Older versions are upgraded on load, one step per version (:data:`UPGRADES`);
tests/fixtures holds a checkpoint of every version.
"""

from __future__ import annotations

import glob
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asr.config import ExperimentConfig, from_dict, to_dict
from asr.data.text import CharVocabulary
from asr.errors import AsrError
from asr.utils.atomic import atomic_write, remove_stale_temporaries
from asr.version import __version__

CHECKPOINT_FORMAT = "asr-checkpoint"
CHECKPOINT_VERSION = 2  # bump when the layout or the network's parameter names change; add an upgrade step
# Sections of the config that fix the network's shape and the meaning of its inputs; a run
# cannot resume into a model whose values here differ, except in these training-only keys.
NETWORK_SECTIONS = ("features", "model")
TRAINING_ONLY_MODEL_KEYS = frozenset({"dropout", "weight_dropout", "rnn_input", "phone_ctc_weight", "phone_ctc_layer"})


class CheckpointError(AsrError):
    """A checkpoint is missing, corrupt or from an incompatible version."""


class ResumeMismatchError(CheckpointError):
    """An out_dir's last.pt holds a different network than the config asks for."""


@dataclass(frozen=True)
class TrainAudio:
    """Durations of the utterances a model was trained on: longer input is out of its experience."""

    max_seconds: float  # the longest training input (a joined item counts as one input)
    mean_seconds: float  # their mean duration
    utterances: int  # how many utterances they hold (the parts of joined items each count)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's (and model folder's) ``train_audio`` section."""
        return {"max_seconds": self.max_seconds, "mean_seconds": self.mean_seconds, "utterances": self.utterances}

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> TrainAudio | None:
        """Read a ``train_audio`` section (None, before version 2, stays None)."""
        if section is None:
            return None
        return cls(float(section["max_seconds"]), float(section["mean_seconds"]), int(section["utterances"]))


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint (or model folder) read back and checked: what inference and resume need."""

    source: str  # the file or folder it was read from, for error messages
    config: ExperimentConfig  # the run's settings
    vocabulary: CharVocabulary  # output characters; the blank (id 0) first
    normalizer_mean: torch.Tensor  # (n_mels,) log-mel mean of the training audio
    normalizer_std: torch.Tensor  # (n_mels,) its standard deviation, all > 0
    model_state: dict[str, torch.Tensor]  # the acoustic model's state_dict
    metrics: dict[str, Any]  # validation figures of the epoch that wrote it
    train_audio: TrainAudio | None  # training utterance durations; None before version 2
    train_state: dict[str, Any] | None  # optimiser/scheduler/RNG/position; last.pt only


def build_payload(
    config: ExperimentConfig,
    vocabulary: CharVocabulary,
    normalizer_mean: torch.Tensor,
    normalizer_std: torch.Tensor,
    model_state: Mapping[str, torch.Tensor],
    metrics: dict[str, Any],
    train_audio: TrainAudio | None = None,
    train_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint layout (without format and version, which :func:`save_checkpoint` adds)."""
    payload: dict[str, Any] = {
        "config": to_dict(config),
        "vocabulary": vocabulary.tokens[1:],
        "normalizer": {"mean": normalizer_mean.detach().cpu(), "std": normalizer_std.detach().cpu()},
        "model": {name: value.detach().cpu() for name, value in model_state.items()},
        "metrics": metrics,
        "train_audio": None if train_audio is None else train_audio.to_dict(),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


def payload_from_parts(version: int, asr_version: str, sections: Mapping[str, Any]) -> dict[str, Any]:
    """A payload of layout ``version`` from its sections in plain form (``config`` as a dict,
    ``vocabulary`` as a list, ...), e.g. read back from a model folder; :func:`upgrade_payload`
    then brings it to the current layout."""
    return {**sections, "format": CHECKPOINT_FORMAT, "version": version, "asr_version": asr_version}


def train_audio_of(durations: list[float], utterances: int | None = None) -> TrainAudio | None:
    """Duration statistics of a training set (seconds per input); ``utterances`` counts the
    utterances those inputs hold when some are several joined ones (default: one each)."""
    if not durations:
        return None
    return TrainAudio(max(durations), sum(durations) / len(durations),
                      len(durations) if utterances is None else utterances)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    Temporary files of ``path`` left by an earlier process (killed mid-write) are removed first.
    """
    path = Path(path)
    remove_stale_temporaries(path.parent, glob.escape(path.name))
    payload = payload_from_parts(CHECKPOINT_VERSION, __version__, payload)
    with atomic_write(path, "wb") as out:
        torch.save(payload, out)


def _upgrade_1_to_2(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 2 added the training audio durations; version 1 never recorded them.
    return {**payload, "train_audio": None, "metrics": payload.get("metrics") or {}}


# UPGRADES[v] turns a version-v payload into version v + 1.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _upgrade_1_to_2}


def upgrade_payload(payload: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Bring a payload of any earlier version to CHECKPOINT_VERSION, one step at a time."""
    return apply_upgrades(payload, "version", CHECKPOINT_VERSION, UPGRADES, f"{source}: checkpoint format")


def apply_upgrades(record: dict[str, Any], version_key: str, current: int,
                   upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]], what: str) -> dict[str, Any]:
    """Bring ``record`` from its ``record[version_key]`` to ``current``, one step of ``upgrades``
    at a time (checkpoints here, model folders' config.json in asr.deploy.package); ``what`` names
    the record in the error for a version this asr cannot read."""
    version = record.get(version_key)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= current:
        raise CheckpointError(f"{what} version {version} (written by asr {record.get('asr_version', '?')}) is not "
                              f"supported by this asr {__version__}, which reads versions 1 to {current}")
    while version < current:
        record = {**upgrades[version](record), version_key: version + 1}
        version += 1
    return record


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint's payload without unpickling code, upgraded to the current layout."""
    path = Path(path)
    if not path.is_file():
        hint = " (a model folder: read it with asr.load_model)" if path.is_dir() else ""
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, i.e. running whatever code the file holds: never.
        raise CheckpointError(f"{path}: not a readable checkpoint: it holds something other than tensors and plain "
                              "values (a damaged or foreign file, or one carrying code, which asr never runs)") from err
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an asr checkpoint")
    payload = upgrade_payload(payload, path)
    for key in ("config", "vocabulary", "normalizer", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def checkpoint_from_payload(payload: dict[str, Any], source: str | Path) -> Checkpoint:
    """Type and check an upgraded payload: config, vocabulary, finite weights, positive std."""
    try:
        config = from_dict(ExperimentConfig, payload["config"])
        vocabulary = CharVocabulary(payload["vocabulary"])
        mean, std = payload["normalizer"]["mean"], payload["normalizer"]["std"]
        train_audio = TrainAudio.from_dict(payload.get("train_audio"))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: checkpoint does not match this version of asr ({err!r})") from err
    model_state = dict(payload["model"])
    check_tensors(source, {"normalizer.mean": mean, "normalizer.std": std, **model_state},
                  n_mels=config.features.n_mels)
    return Checkpoint(str(source), config, vocabulary, mean, std, model_state, dict(payload.get("metrics") or {}),
                      train_audio, payload.get("train_state"))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load, upgrade and check a checkpoint file (``.pt``)."""
    return checkpoint_from_payload(load_checkpoint(path, map_location), path)


def check_tensors(source: str | Path, tensors: Mapping[str, Any], n_mels: int) -> None:
    """Refuse what would silently transcribe nothing: NaN/inf weights, a std <= 0."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {name} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: tensor {name} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                                  "the model is corrupt (training diverged, or the file was damaged)")
    for name in ("normalizer.mean", "normalizer.std"):
        if tuple(tensors[name].shape) != (n_mels,):
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, "
                                  f"not ({n_mels},) as features.n_mels says")
    std = tensors["normalizer.std"]
    if not bool((std > 0).all()):
        bands = [i for i, ok in enumerate((std > 0).tolist()) if not ok]
        raise CheckpointError(f"{source}: tensor normalizer.std is zero or negative in mel band(s) {bands}; "
                              "the normalisation statistics are corrupt")


def architecture_differences(saved: dict[str, Any], wanted: ExperimentConfig) -> list[str]:
    """``section.key: saved -> wanted`` for every value of the features and model sections that
    differs, but for the training-only keys: what the weights' shapes and meaning depend on."""
    wanted_dict = to_dict(wanted)
    differences = []
    for section in NETWORK_SECTIONS:
        old, new = saved.get(section, {}), wanted_dict[section]
        for key in sorted(set(old) | set(new)):
            if section == "model" and key in TRAINING_ONLY_MODEL_KEYS:
                continue
            if old.get(key) != new.get(key):
                differences.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return differences


def network_differences(saved: dict[str, Any], wanted: ExperimentConfig) -> list[str]:
    """``section.key: saved -> wanted`` for every network-defining config value that differs."""
    differences = architecture_differences(saved, wanted)
    # The language fixes the text rules the vocabulary spells and the phone head's labels.
    saved_language = saved.get("data", {}).get("language", "en")  # before data.language: English
    if saved_language != wanted.data.language:
        differences.append(f"data.language: {saved_language!r} -> {wanted.data.language!r}")
    # The phone head exists only while its loss weight is positive.
    if (saved.get("model", {}).get("phone_ctc_weight", 0) > 0) != (wanted.model.phone_ctc_weight > 0):
        differences.append(f"model.phone_ctc_weight: {saved['model'].get('phone_ctc_weight')!r} -> "
                           f"{wanted.model.phone_ctc_weight!r} (adds or removes the phone head)")
    return differences


def check_resumable(path: str | Path, saved_config: dict[str, Any], config: ExperimentConfig) -> None:
    """Raise :class:`ResumeMismatchError` when ``path`` (an out_dir's last.pt) holds another network."""
    differences = network_differences(saved_config, config)
    if differences:
        raise ResumeMismatchError(
            f"{path} holds a different model than this config asks for ({'; '.join(differences)}). "
            f"Training there would resume it: choose a new train.out_dir for the new model, "
            f"or set these keys back to the saved values to resume that run"
        )


def last_epoch_checkpoints(folders: list[str | Path], count: int) -> list[Path]:
    """The last ``count`` epoch-N.pt files of one experiment folder, oldest first (``asr average --last``)."""
    if len(folders) != 1 or not Path(folders[0]).is_dir():
        raise CheckpointError("--last N takes one experiment folder holding epoch-N.pt files")
    found = sorted(Path(folders[0]).glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if len(found) < count:
        raise CheckpointError(f"{folders[0]} holds {len(found)} epoch checkpoints, fewer than {count} "
                              "(train with train.keep_epoch_checkpoints=N)")
    return found[-count:]


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

