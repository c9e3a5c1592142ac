"""LM weight and word score search on a dev set (``asr tune-lm``).

The acoustic model runs once: its emissions are kept (and optionally cached on disk), then
every (LM weight, word score) pair is a beam search over the same emissions, in parallel.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from asr.audio import AudioError, load_audio
from asr.data import Utterance
from asr.decoding import BeamSearchDecoder, DecodingSettings, GreedyDecoder, ParallelDecoder, build_decoder
from asr.metrics import ErrorCounts, error_counts
from asr.text import CharVocabulary
from asr.transcribe import SpeechRecognizer


@dataclass
class Emissions:
    ids: list[str]  # utterance ids, in manifest order (failed audio left out)
    references: list[str]  # their transcripts
    matrices: list[np.ndarray]  # (T, V) log-probabilities per utterance
    fingerprint: str  # checkpoint + manifest identity, to reject a stale cache
    failed: list[str]  # "utterance id: reason" for audio that could not be read


def fingerprint(checkpoint: str | Path, utterances: Sequence[Utterance]) -> str:
    stat = os.stat(checkpoint)
    digest = hashlib.sha1(f"{Path(checkpoint).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for u in utterances:
        digest.update(f"{u.id}|{u.audio}|{u.text}\n".encode())
    return digest.hexdigest()


def compute_emissions(recognizer: SpeechRecognizer, utterances: Sequence[Utterance], fingerprint: str) -> Emissions:
    kept: list[tuple[Utterance, torch.Tensor]] = []
    failed = []
    for utt in utterances:
        try:
            kept.append((utt, torch.from_numpy(load_audio(utt.audio, recognizer.sample_rate))))
        except AudioError as err:
            failed.append(f"{utt.id}: {err}")
    matrices = recognizer.emission_matrices([waveform for _, waveform in kept])
    failed += [f"{utt.id}: {m}" for (utt, _), m in zip(kept, matrices) if isinstance(m, str)]
    ok = [(utt, m) for (utt, _), m in zip(kept, matrices) if not isinstance(m, str)]
    return Emissions([u.id for u, _ in ok], [u.text for u, _ in ok], [m for _, m in ok], fingerprint, failed)


def save_emissions(path: str | Path, emissions: Emissions) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"ids": emissions.ids, "references": emissions.references, "fingerprint": emissions.fingerprint,
                "failed": emissions.failed, "matrices": [torch.from_numpy(m) for m in emissions.matrices]}, tmp)
    os.replace(tmp, path)


def load_emissions(path: str | Path, expected_fingerprint: str) -> Emissions | None:
    """The cached emissions, or None when absent or made from another checkpoint/manifest."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if data.get("fingerprint") != expected_fingerprint:
        return None
    return Emissions(data["ids"], data["references"], [m.numpy() for m in data["matrices"]],
                     data["fingerprint"], data["failed"])


@dataclass(frozen=True)
class TuningRow:
    lm_weight: float
    word_score: float
    words: ErrorCounts  # word errors over the dev set
    chars: ErrorCounts


@dataclass
class TuningResult:
    greedy: TuningRow  # the baseline, for reference
    rows: list[TuningRow]  # every pair tried
    best_row: TuningRow  # the pair with the lowest WER then CER (or CER then WER) ...
    best: DecodingSettings  # ... as settings, ready to save


def score(emissions: Emissions, texts: Sequence[str], lm_weight: float = 0.0, word_score: float = 0.0) -> TuningRow:
    references, texts = emissions.references, list(texts)
    return TuningRow(lm_weight, word_score, error_counts(references, texts, "word"), error_counts(references, texts, "char"))


def best_row(rows: Sequence[TuningRow], metric: Literal["wer", "cer"] = "wer") -> TuningRow:
    """The row with the lowest WER (ties: CER), or with ``metric="cer"`` the lowest CER (ties: WER)."""
    if metric == "cer":
        return min(rows, key=lambda r: (r.chars.rate, r.words.rate))
    return min(rows, key=lambda r: (r.words.rate, r.chars.rate))


def tune_lm(
    emissions: Emissions,
    vocabulary: CharVocabulary,
    base: DecodingSettings,
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
    workers: int = 1,
    progress=None,
    metric: Literal["wer", "cer"] = "wer",
) -> TuningResult:
    """Grid search of LM weight x word score; the LM and lexicon are loaded once.

    ``metric`` ranks the pairs: WER for word LMs, usually CER for a character LM.
    """
    greedy = GreedyDecoder(vocabulary)
    baseline = score(emissions, [greedy.decode_matrix(m)[0].text for m in emissions.matrices])
    template = build_decoder(vocabulary, replace(base, method="beam"))
    assert isinstance(template, BeamSearchDecoder)
    rows: list[TuningRow] = []
    for lm_weight, word_score in itertools.product(lm_weights, word_scores):
        options = replace(base.beam, lm_weight=lm_weight, word_score=word_score, nbest=1)
        decoder = template.with_options(options)  # the LM and lexicon trie are loaded once
        with ParallelDecoder(decoder, workers) as parallel:
            texts = [nbest[0].text for nbest in parallel.decode(emissions.matrices)]
        rows.append(score(emissions, texts, lm_weight, word_score))
        if progress:
            progress(rows[-1])
    best = best_row(rows, metric)
    settings = replace(base, method="beam", beam=replace(base.beam, lm_weight=best.lm_weight, word_score=best.word_score))
    return TuningResult(baseline, rows, best, settings)
