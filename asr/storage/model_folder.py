"""Model folders: a trained model as JSON, YAML and safetensors files that load without pickle.

A folder holds::

    config.json        format, format_version, the run's config, metrics, training audio durations
    vocabulary.json    output characters (the blank, id 0, is implied)
    model.safetensors  acoustic model weights ("model.*") and normalisation statistics ("normalizer.*")
    decoding.yaml      optional: tuned decoding settings (``asr tune-lm``), LM/lexicon paths relative
    *.arpa, ...        optional: the LM and lexicon those settings name
    sample.*           optional: a short audio sample
    README.md          a Hugging Face model card with the WER/CER measured at packaging time

Loading reads JSON, YAML and safetensors only: no pickle runs, whatever the folder holds.
A folder is a checkpoint in other clothes: it is read into the same :class:`Checkpoint`,
through the checkpoint upgrade steps, so every later asr loads it. Writing a folder with its
evaluation and model card is :mod:`asr.deploy.package`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from asr.config import ConfigError, ExperimentConfig, from_dict
from asr.decoding.settings import DecodingSettings, save_decoding_settings
from asr.errors import AsrError
from asr.storage.checkpoint import (
    Checkpoint,
    CheckpointError,
    apply_upgrades,
    checkpoint_from_payload,
    payload_from_parts,
    read_checkpoint,
    upgrade_payload,
)
from asr.storage.hub import HubError, is_hub_reference, resolve_model
from asr.utils.atomic import atomic_path

FOLDER_FORMAT = "asr-model"
FOLDER_VERSION = 1  # bump when the folder's files or their fields change; add a step to FOLDER_UPGRADES
CONFIG_FILE = "config.json"
VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "model.safetensors"
DECODING_FILE = "decoding.yaml"
CARD_FILE = "README.md"
# FOLDER_UPGRADES[v] turns a version-v config.json dict into version v + 1 (none yet).
FOLDER_UPGRADES: dict[int, Any] = {}


class PackageError(AsrError):
    """A model folder cannot be written: bad inputs or an existing destination."""


def read_model(model: str | Path) -> Checkpoint:
    """A checkpoint (``.pt``), a model folder or an ``hf://`` reference, read and checked."""
    path = resolve_model(model)
    return read_model_folder(path) if path.is_dir() else read_checkpoint(path)


def tuned_settings_file(model: str | Path) -> Path:
    """Where a model's tuned decoding settings live: FOLDER/decoding.yaml, or CKPT.decoding.yaml."""
    path = resolve_model(model)
    return path / DECODING_FILE if path.is_dir() else Path(str(model) + ".decoding.yaml")


def weights_file(model: str | Path) -> Path:
    """The file holding a model's weights (to fingerprint it): the checkpoint, or the folder's safetensors."""
    path = resolve_model(model)
    return path / WEIGHTS_FILE if path.is_dir() else path


def tuned_settings_target(model: str | Path) -> Path:
    """Where ``asr tune-lm`` stores a model's tuned settings (see :func:`store_tuned_settings`);
    asked before tuning, so that a refusal costs no work."""
    if is_hub_reference(model):
        raise HubError(f"{model}: tune-lm does not store settings in the Hugging Face cache (a later download "
                       "would silently replace them): give --out FILE, or download the folder (huggingface-cli "
                       "download ORG/NAME --local-dir DIR) and tune that")
    return tuned_settings_file(model)


def store_tuned_settings(model: str | Path, settings: DecodingSettings) -> Path:
    """Save tuned decoding settings where transcribe/evaluate look for them; returns the file.

    Beside a checkpoint: CKPT.decoding.yaml naming the LM and lexicon by absolute path. In a
    model folder: its decoding.yaml, with the LM and lexicon copied into the folder and named
    relative to it, so the folder can still move or be shared. Never into an hf:// cache.
    """
    target = tuned_settings_target(model)
    if Path(model).is_dir():
        settings = copy_decoding_files(settings, target, Path(model))
    save_decoding_settings(target, settings)
    return target


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {path.parent} is not a complete asr model folder ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from err


def read_model_folder(folder: str | Path) -> Checkpoint:
    """Read a folder written by :func:`package_model`: JSON and safetensors, never pickle."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    meta = _read_json(config_path, "the model's settings")
    if not isinstance(meta, dict) or meta.get("format") != FOLDER_FORMAT:
        raise CheckpointError(f"{config_path}: not an asr model folder's config (format is not {FOLDER_FORMAT!r})")
    meta = apply_upgrades(meta, "format_version", FOLDER_VERSION, FOLDER_UPGRADES, f"{config_path}: model folder format")
    try:
        from_dict(ExperimentConfig, meta["config"], where=str(config_path))
        layout_version = int(meta["checkpoint_version"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: invalid model settings ({err})") from err
    vocabulary_path = folder / VOCABULARY_FILE
    vocabulary = _read_json(vocabulary_path, "the output characters")
    if not isinstance(vocabulary, list) or not all(isinstance(c, str) for c in vocabulary):
        raise CheckpointError(f"{vocabulary_path}: not a JSON list of characters")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing; {folder} is not a complete asr model folder (the weights)")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from err
    missing = [name for name in ("normalizer.mean", "normalizer.std") if name not in tensors]
    if missing:
        raise CheckpointError(f"{weights_path}: lacks tensor(s) {', '.join(missing)}")
    # The checkpoint layout of the version the folder was written with, then its upgrade steps.
    payload = payload_from_parts(layout_version, meta.get("asr_version", "?"), {
        "config": meta["config"],
        "vocabulary": vocabulary,
        "normalizer": {"mean": tensors["normalizer.mean"], "std": tensors["normalizer.std"]},
        "model": {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")},
        "metrics": meta.get("metrics") or {},
        "train_audio": meta.get("train_audio"),
    })
    return checkpoint_from_payload(upgrade_payload(payload, weights_path), weights_path)


def copy_decoding_files(settings: DecodingSettings, source_file: Path, folder: Path) -> DecodingSettings:
    """Copy the LM and lexicon the tuned settings name into ``folder``; settings with relative paths."""
    renamed: dict[str, str | None] = {}
    taken: set[str] = set()
    for field_name in ("lm", "lexicon"):
        original = getattr(settings, field_name)
        if not original:
            renamed[field_name] = None
            continue
        source = Path(original)
        if not source.is_file():
            raise PackageError(f"{source_file}: names {field_name} {source}, which does not exist")
        if source.resolve().parent == folder.resolve():  # already in the folder (tuned again with it)
            renamed[field_name] = source.name
            taken.add(source.name)
            continue
        name = source.name if source.name not in taken | {CONFIG_FILE, VOCABULARY_FILE, WEIGHTS_FILE,
                                                            DECODING_FILE, CARD_FILE} else f"{field_name}-{source.name}"
        taken.add(name)
        with atomic_path(folder / name) as tmp:  # a model folder in use never holds half an LM
            shutil.copyfile(source, tmp)
        renamed[field_name] = name
    return replace(settings, **renamed)


def write_weights(saved: Checkpoint, path: Path) -> None:
    tensors = {"normalizer.mean": saved.normalizer_mean, "normalizer.std": saved.normalizer_std}
    tensors.update({f"model.{name}": value for name, value in saved.model_state.items()})
    # safetensors refuses views that share storage; each tensor gets its own contiguous copy.
    save_file({name: value.detach().cpu().contiguous().clone() for name, value in tensors.items()}, str(path),
              metadata={"format": FOLDER_FORMAT, "format_version": str(FOLDER_VERSION)})
