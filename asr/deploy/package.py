"""``asr package``: a trained model written as a model folder (:mod:`asr.storage.model_folder`),
with its tuned decoding files, an audio sample, and a model card giving the WER/CER measured
on the packaged folder itself.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asr.config import to_dict
from asr.data.audio import audio_duration
from asr.decoding.settings import load_decoding_settings, save_decoding_settings
from asr.inference.recognizer import DecodingFallbackWarning, load_model
from asr.scoring.evaluate import evaluate_manifest
from asr.storage.checkpoint import CHECKPOINT_VERSION, Checkpoint
from asr.storage.hub import resolve_model
from asr.storage.model_folder import (
    CARD_FILE,
    CONFIG_FILE,
    DECODING_FILE,
    FOLDER_FORMAT,
    FOLDER_VERSION,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    PackageError,
    copy_decoding_files,
    read_model,
    tuned_settings_file,
    write_weights,
)
from asr.utils.atomic import atomic_folder, json_safe
from asr.version import __version__

MAX_SAMPLE_SECONDS = 30.0  # a sample shows what the model does; a long one only makes the folder heavy


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
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise PackageError(f"{out_dir} already exists; give a new folder (or remove it first)")
    checkpoint = resolve_model(checkpoint)  # once: an hf:// reference would be looked up at every use
    saved = read_model(checkpoint)
    if sample is not None:
        seconds = audio_duration(sample)  # AudioError names the file when it is missing or unreadable
        if seconds > MAX_SAMPLE_SECONDS:
            raise PackageError(f"{sample}: the sample is {seconds:.0f} s long; give one of at most "
                               f"{MAX_SAMPLE_SECONDS:.0f} s (it travels with every download of the model)")
    settings_file = tuned_settings_file(checkpoint)
    with atomic_folder(out_dir) as tmp:
        files = {"weights": WEIGHTS_FILE, "vocabulary": VOCABULARY_FILE, "decoding": None, "sample": None}
        write_weights(saved, tmp / WEIGHTS_FILE)
        (tmp / VOCABULARY_FILE).write_text(json.dumps(saved.vocabulary.tokens[1:], ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        if settings_file.is_file():
            settings = copy_decoding_files(load_decoding_settings(settings_file), settings_file, tmp)
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
    lines += ["", "## Usage", "", "```bash", "pip install lstm-asr  # plus 'lstm-asr[hub]' for hf:// models",
              "asr transcribe MODEL audio.flac   # MODEL: this folder, or hf://ORG/NAME", "```", "",
              "```python", "import asr", 'model = asr.load_model("MODEL")',
              'print(model.transcribe(["audio.flac"])[0].text)', "```"]
    if files.get("sample"):
        lines += ["", "## Sample", "", f"`{files['sample']}` transcribes as:", "", f"> {sample_text}"]
    lines += ["", "## Files", "", (f"`{CONFIG_FILE}` (settings), `{VOCABULARY_FILE}` (output characters), "
                                   f"`{WEIGHTS_FILE}` (weights and normalisation statistics). "
                                   "Loading runs no pickled code."), ""]
    return "\n".join(lines)


