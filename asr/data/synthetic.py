"""A synthetic tone language: tiny speech corpora made on the spot, for tests and smoke runs without downloads.

Each letter is spoken as a short tone of its own pitch, with a short pause between letters and
a longer one between words. It is real audio with a learnable letter-to-sound mapping, made
in milliseconds, so that training runs need no downloads and no speech synthesiser.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

from asr.config import SAMPLE_RATE, ExperimentConfig, from_dict, to_dict
from asr.data.manifest import Utterance, write_manifest

__all__ = ["OVERFIT_TEXTS", "SAMPLE_RATE", "tiny_config", "tone_audio", "write_tone_corpus", "write_tone_manifests"]

LETTER_SECONDS = 0.12
GAP_SECONDS = 0.04
WORD_GAP_SECONDS = 0.12

# Eight short utterances over the letters a-e: a tiny model learns them in a few epochs.
OVERFIT_TEXTS = ["bad cab", "a dab", "ace", "bed deed", "cede a bee", "dace", "abba", "be bad"]


def tone_audio(text: str, seed: int = 0) -> np.ndarray:
    """Waveform for ``text``: one tone per letter (pitch by letter), silence between."""
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(0.1 * SAMPLE_RATE), dtype=np.float32)]
    t = np.arange(int(LETTER_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    for char in text:
        if char == " ":
            pieces.append(np.zeros(int(WORD_GAP_SECONDS * SAMPLE_RATE), dtype=np.float32))
            continue
        index = (string.ascii_lowercase + "'").index(char)
        frequency = 300.0 * 2 ** (index / 8)  # letters a third of an octave apart
        envelope = np.hanning(len(t))
        tone = 0.3 * envelope * np.sin(2 * np.pi * frequency * t + rng.uniform(0, np.pi))
        pieces += [tone.astype(np.float32), np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)]
    pieces.append(np.zeros(int(0.1 * SAMPLE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    return audio + rng.normal(0, 0.003, len(audio)).astype(np.float32)


def write_tone_corpus(folder: Path, texts: Sequence[str], speaker: str = "1") -> list[Utterance]:
    """One FLAC file per text under ``folder`` (ids ``SPEAKER-0-NNNN``), and their utterances."""
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for number, text in enumerate(texts):
        path = folder / f"{speaker}-0-{number:04d}.flac"
        audio = tone_audio(text, seed=number)
        soundfile.write(path, audio, SAMPLE_RATE)
        utterances.append(Utterance(path.stem, str(path), text, len(audio) / SAMPLE_RATE, speaker))
    return utterances


def write_tone_manifests(folder: Path, train_texts: Sequence[str] = tuple(OVERFIT_TEXTS),
                         valid_texts: Sequence[str] | None = None) -> dict[str, Path]:
    """Train (speaker 1) and valid (speaker 2) corpora and manifests under ``folder``.

    Returns the paths ``{"root", "train", "valid"}``; ``valid_texts`` defaults to the first
    four training texts.
    """
    valid_texts = list(train_texts[:4] if valid_texts is None else valid_texts)
    write_manifest(folder / "train.jsonl", write_tone_corpus(folder / "train", train_texts, speaker="1"))
    write_manifest(folder / "valid.jsonl", write_tone_corpus(folder / "valid", valid_texts, speaker="2"))
    return {"root": folder, "train": folder / "train.jsonl", "valid": folder / "valid.jsonl"}


def tiny_config(out_dir: Path, corpus: dict[str, Path], **sections: dict) -> ExperimentConfig:
    """A config small enough to train in seconds on one CPU core; ``sections`` update its sections."""
    data = to_dict(ExperimentConfig())
    data["data"].update(train_manifest=str(corpus["train"]), valid_manifest=str(corpus["valid"]),
                        max_frames_per_batch=1000)
    data["model"].update(num_layers=2, hidden_size=48, dropout=0.0)
    data["optim"].update(lr=5e-3, warmup_steps=10, final_lr_ratio=0.2)
    data["train"].update(out_dir=str(out_dir), epochs=2, log_every_steps=1, threads=1)
    data["specaugment"].update(enabled=False)
    for section, values in sections.items():
        data[section].update(values)
    return from_dict(ExperimentConfig, data)
