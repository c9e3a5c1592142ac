"""Model folders (``asr package``): a trained model in files that load without pickle.

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
through the checkpoint upgrade steps, so every later asr loads it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from asr.version import __version__
from asr.utils.atomic import atomic_folder, atomic_path, json_safe
from asr.storage.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    apply_upgrades,
    checkpoint_from_payload,
    payload_from_parts,
    read_checkpoint,
    upgrade_payload,
)
from asr.config import ConfigError, ExperimentConfig, from_dict, to_dict
from asr.errors import AsrError

FOLDER_FORMAT = "asr-model"
FOLDER_VERSION = 1  # bump when the folder's files or their fields change; add a step to FOLDER_UPGRADES
CONFIG_FILE = "config.json"
VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "model.safetensors"
DECODING_FILE = "decoding.yaml"
CARD_FILE = "README.md"
HUB_PREFIX = "hf://"
MAX_SAMPLE_SECONDS = 30.0  # a sample shows what the model does; a long one only makes the folder heavy
# FOLDER_UPGRADES[v] turns a version-v config.json dict into version v + 1 (none yet).
FOLDER_UPGRADES: dict[int, Any] = {}


class PackageError(AsrError):
    """A model folder cannot be written: bad inputs or an existing destination."""


class HubError(AsrError):
    """The Hugging Face Hub cannot be reached, lacks the model, or huggingface_hub is missing."""


# --------------------------------------------------------------------------- reading


def is_hub_reference(model: str | Path) -> bool:
    return str(model).startswith(HUB_PREFIX)


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@revision]`` -> (repo id, revision or None)."""
    repo_id, _, revision = reference[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"{reference}: a Hub model is hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo_id, revision or None


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise HubError("Hugging Face Hub models need the huggingface_hub package: pip install 'asr[hub]'") from err
    return huggingface_hub


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set: use the local cache only (read at every call, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_from_hub(reference: str) -> Path:
    """The local folder of ``hf://ORG/NAME[@revision]``, downloaded into the Hub cache if needed."""
    hub = _huggingface_hub()
    repo_id, revision = parse_hub_reference(reference)
    offline = hub_offline()
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, local_files_only=offline)
    except (hub.errors.HfHubHTTPError, hub.errors.LocalEntryNotFoundError, hub.errors.HFValidationError,
            OSError) as err:
        hint = " (HF_HUB_OFFLINE is set and the model is not in the local cache)" if offline else ""
        raise HubError(f"{reference}: cannot get the model from the Hugging Face Hub{hint}: {err}") from err
    return Path(folder)


def resolve_model(model: str | Path) -> Path:
    """A local checkpoint file or folder for ``model`` (downloading hf:// references)."""
    return download_from_hub(str(model)) if is_hub_reference(model) else Path(model)


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


def store_tuned_settings(model: str | Path, settings) -> Path:
    """Save tuned decoding settings where transcribe/evaluate look for them; returns the file.

    Beside a checkpoint: CKPT.decoding.yaml naming the LM and lexicon by absolute path. In a
    model folder: its decoding.yaml, with the LM and lexicon copied into the folder and named
    relative to it, so the folder can still move or be shared. Never into an hf:// cache.
    """
    from asr.decoding.beam import save_decoding_settings

    target = tuned_settings_target(model)
    if Path(model).is_dir():
        settings = _copy_decoding_files(settings, target, Path(model))
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class EvaluationResult:
    name: str  # the evaluation set's name, as given (NAME=manifest)
    manifest: str  # its manifest
    wer: float  # word error rate, in [0, inf)
    cer: float  # character error rate
    utterances: int  # utterances scored
    unscored: int  # manifest lines left out: unreadable audio, bad lines, unspellable references


@dataclass(frozen=True)
class PackageReport:
    folder: Path  # the model folder written
    files: tuple[str, ...]  # its files, relative to it
    evaluations: tuple[EvaluationResult, ...]  # measured on the packaged model
    decoding: str  # the decoding the evaluations used (the folder's tuned settings, else greedy)
    sample_text: str | None  # the model's transcript of the sample, if one was given


def _copy_decoding_files(settings, source_file: Path, folder: Path):
    """Copy the LM and lexicon the tuned settings name into ``folder``; settings with relative paths."""
    from asr.decoding.beam import DecodingSettings

    settings: DecodingSettings
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


def _write_weights(saved: Checkpoint, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"normalizer.mean": saved.normalizer_mean, "normalizer.std": saved.normalizer_std}
    tensors.update({f"model.{name}": value for name, value in saved.model_state.items()})
    # safetensors refuses views that share storage; each tensor gets its own contiguous copy.
    save_file({name: value.detach().cpu().contiguous().clone() for name, value in tensors.items()}, str(path),
              metadata={"format": FOLDER_FORMAT, "format_version": str(FOLDER_VERSION)})


def package_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    evaluations: Mapping[str, str | Path] | None = None,
    sample: str | Path | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    name: str | None = None,
) -> PackageReport:
    """Write ``checkpoint`` (with its tuned decoding settings and their LM/lexicon) as a model
    folder at ``out_dir``, which must not exist. The folder is built beside it and renamed into
    place at the end: it appears whole or not at all.

    ``evaluations`` (name -> manifest) are scored with the packaged folder itself, its tuned
    decoding included, and go into the model card's ``model-index``; ``sample`` is an audio
    file copied in and transcribed for the card.
    """
    from asr.decoding.beam import load_decoding_settings, save_decoding_settings

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise PackageError(f"{out_dir} already exists; give a new folder (or remove it first)")
    checkpoint = resolve_model(checkpoint)  # once: an hf:// reference would be looked up at every use
    saved = read_model(checkpoint)
    if sample is not None:
        from asr.data.audio import audio_duration

        seconds = audio_duration(sample)  # AudioError names the file when it is missing or unreadable
        if seconds > MAX_SAMPLE_SECONDS:
            raise PackageError(f"{sample}: the sample is {seconds:.0f} s long; give one of at most "
                               f"{MAX_SAMPLE_SECONDS:.0f} s (it travels with every download of the model)")
    settings_file = tuned_settings_file(checkpoint)
    with atomic_folder(out_dir) as tmp:
        files = {"weights": WEIGHTS_FILE, "vocabulary": VOCABULARY_FILE, "decoding": None, "sample": None}
        _write_weights(saved, tmp / WEIGHTS_FILE)
        (tmp / VOCABULARY_FILE).write_text(json.dumps(saved.vocabulary.tokens[1:], ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        if settings_file.is_file():
            settings = _copy_decoding_files(load_decoding_settings(settings_file), settings_file, tmp)
            save_decoding_settings(tmp / DECODING_FILE, settings)
            files["decoding"] = DECODING_FILE
        if sample is not None:
            files["sample"] = "sample" + Path(sample).suffix.lower()
            shutil.copyfile(sample, tmp / files["sample"])
        meta = {
            "format": FOLDER_FORMAT,
            "format_version": FOLDER_VERSION,
            "asr_version": __version__,
            "checkpoint_version": CHECKPOINT_VERSION,  # the layout of the fields below
            "config": to_dict(saved.config),
            "metrics": saved.metrics,
            "train_audio": None if saved.train_audio is None else saved.train_audio.to_dict(),
            "files": files,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(json_safe(meta), indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        results, decoding, sample_text = _measure(tmp, evaluations or {}, files["sample"])
        card = model_card(saved, name or out_dir.name, license, datasets, results, decoding, files, sample_text)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        written = tuple(sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    return PackageReport(out_dir, written, tuple(results), decoding, sample_text)


def _measure(folder: Path, evaluations: Mapping[str, str | Path], sample: str | None):
    """Score the folder as users will load it (its tuned decoding included) and transcribe the sample."""
    import warnings

    from asr.scoring.evaluate import evaluate_manifest
    from asr.inference.recognizer import DecodingFallbackWarning, load_model

    if not evaluations and sample is None:
        return [], "greedy", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecodingFallbackWarning)  # refused just below
        recognizer = load_model(folder)  # with the folder's tuned decoding, as users will load it
    if recognizer.decoding_problem:
        raise PackageError(f"the tuned decoding settings cannot be used: {recognizer.decoding_problem}")
    results = []
    for set_name, manifest in evaluations.items():
        report = evaluate_manifest(recognizer, manifest)
        if not report.scores:
            raise PackageError(f"--eval {set_name}={manifest}: no utterance could be scored\n{report.format(worst=0)}")
        results.append(EvaluationResult(set_name, str(manifest), report.words.rate, report.chars.rate,
                                        len(report.scores), len(report.failed) + len(report.skipped)))
    sample_text = None
    if sample is not None:
        (transcription,) = recognizer.transcribe([folder / sample])
        if not transcription.ok:
            raise PackageError(f"sample audio: {transcription.error}")
        sample_text = transcription.text
    # File names relative to the folder: it is being built under a temporary name, and moves.
    return results, recognizer.decoding.describe(relative_to=folder), sample_text


def model_card(saved: Checkpoint, name: str, license: str, datasets: Sequence[str],
               evaluations: Sequence[EvaluationResult], decoding: str, files: Mapping[str, str | None],
               sample_text: str | None) -> str:
    """README.md with Hugging Face front matter (model-index holds WER/CER in percent)."""
    front: dict[str, Any] = {
        "language": ["en"],
        "license": license,
        "library_name": "asr",
        "pipeline_tag": "automatic-speech-recognition",
        "tags": ["ctc", "bilstm", "speech-recognition"],
    }
    if datasets:
        front["datasets"] = list(datasets)
    if evaluations:
        front["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": "automatic-speech-recognition", "name": "Speech Recognition"},
                "dataset": {"name": result.name, "type": result.name},
                "metrics": [
                    {"type": "wer", "value": round(100 * result.wer, 2), "name": "WER"},
                    {"type": "cer", "value": round(100 * result.cer, 2), "name": "CER"},
                ],
            } for result in evaluations],
        }]
    config = saved.config
    parameters = sum(value.numel() for value in saved.model_state.values() if value.is_floating_point())
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {name}", "",
        (f"An English speech recognition model made with asr {__version__}: log-mel features, "
         f"a {config.model.num_layers}-layer bidirectional {config.model.cell.upper()} and CTC."), "",
        (f"- Network: {config.model.num_layers} x {config.model.hidden_size} units per direction, "
         f"{parameters:,} parameters; {config.features.n_mels} mel bands at {config.features.sample_rate} Hz, "
         f"{config.model.subsampling_factor}x frame subsampling"),
    ]
    if saved.train_audio is not None:
        audio = saved.train_audio
        lines.append(f"- Trained on {audio.utterances} utterances, in inputs of up to {audio.max_seconds:.1f} s "
                     f"(mean {audio.mean_seconds:.1f} s); longer audio is cut into windows")
    lines.append(f"- Decoding: {decoding}" + (f" (settings in {DECODING_FILE})" if files.get("decoding") else ""))
    if evaluations:
        lines += ["", "## Results", "", "Measured on this folder by `asr package` (asr.scoring.evaluate.evaluate).", "",
                  "| set | utterances | WER % | CER % |", "|---|---|---|---|"]
        lines += [(f"| {r.name} | {r.utterances}{f' ({r.unscored} left out)' if r.unscored else ''} | "
                   f"{100 * r.wer:.2f} | {100 * r.cer:.2f} |") for r in evaluations]
    lines += ["", "## Usage", "", "```bash", "pip install asr  # plus 'asr[hub]' for hf:// models",
              "asr transcribe MODEL audio.flac   # MODEL: this folder, or hf://ORG/NAME", "```", "",
              "```python", "import asr", 'model = asr.load_model("MODEL")',
              'print(model.transcribe(["audio.flac"])[0].text)', "```"]
    if files.get("sample"):
        lines += ["", "## Sample", "", f"`{files['sample']}` transcribes as:", "", f"> {sample_text}"]
    lines += ["", "## Files", "", (f"`{CONFIG_FILE}` (settings), `{VOCABULARY_FILE}` (output characters), "
                                   f"`{WEIGHTS_FILE}` (weights and normalisation statistics). "
                                   "Loading runs no pickled code."), ""]
    return "\n".join(lines)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a model folder to the Hugging Face Hub (creating the repository); returns its URL."""
    hub = _huggingface_hub()
    if hub_offline():
        raise HubError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set")
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"asr package ({__version__})")
    except (hub.errors.HfHubHTTPError, hub.errors.HFValidationError, OSError) as err:
        raise HubError(f"cannot push {folder} to the Hugging Face Hub as {repo_id}: {err}") from err
    return f"https://huggingface.co/{repo_id}"
