"""Shared fixtures: a tiny self-made "tone language" corpus and tiny configs.

Each letter is spoken as a short tone of its own pitch, with a short pause between letters and
a longer one between words. It is real audio with a learnable letter-to-sound mapping, made
in milliseconds, so that training tests need no downloads and no speech synthesiser.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.config import ExperimentConfig, from_dict, to_dict
from asr.data.dataset import Utterance, write_manifest

SAMPLE_RATE = 16_000
LETTER_SECONDS = 0.12
GAP_SECONDS = 0.04
WORD_GAP_SECONDS = 0.12


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


def write_tone_corpus(folder: Path, texts: list[str], speaker: str = "1") -> list[Utterance]:
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for number, text in enumerate(texts):
        path = folder / f"{speaker}-0-{number:04d}.flac"
        audio = tone_audio(text, seed=number)
        soundfile.write(path, audio, SAMPLE_RATE)
        utterances.append(Utterance(path.stem, str(path), text, len(audio) / SAMPLE_RATE, speaker))
    return utterances


OVERFIT_TEXTS = ["bad cab", "a dab", "ace", "bed deed", "cede a bee", "dace", "abba", "be bad"]


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and valid manifests of the tone language (8 + 4 utterances)."""
    root = tmp_path_factory.mktemp("tones")
    train = write_tone_corpus(root / "train", OVERFIT_TEXTS, speaker="1")
    valid = write_tone_corpus(root / "valid", OVERFIT_TEXTS[:4], speaker="2")
    write_manifest(root / "train.jsonl", train)
    write_manifest(root / "valid.jsonl", valid)
    return {"root": root, "train": root / "train.jsonl", "valid": root / "valid.jsonl"}


def tiny_config(out_dir: Path, corpus: dict[str, Path], **sections: dict) -> ExperimentConfig:
    """A config small enough to train in seconds on one CPU core."""
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


@pytest.fixture(scope="session")
def trained_checkpoint(tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained checkpoint (accuracy irrelevant) for CLI and round-trip tests."""
    from asr.training.loop import train

    out_dir = tmp_path_factory.mktemp("tiny_model")
    train(tiny_config(out_dir, tone_corpus, train={"epochs": 2}))
    return out_dir / "best.pt"


def write_arpa(path: Path, unigrams: dict[str, float], bigrams: dict[str, float]) -> str:
    """A tiny ARPA bigram model (KenLM needs order >= 2). Values are log10 probabilities."""
    lines = ["\\data\\", f"ngram 1={len(unigrams) + 3}", f"ngram 2={len(bigrams)}", "", "\\1-grams:",
             "-2.0\t<unk>\t0", "-99\t<s>\t-0.3", "-1.0\t</s>\t0"]
    lines += [f"{p}\t{w}\t-0.2" for w, p in unigrams.items()]
    lines += ["", "\\2-grams:"] + [f"{p}\t{pair}" for pair, p in bigrams.items()] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)
