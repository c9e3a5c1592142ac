"""LM weight and word score search on a dev set (``asr tune-lm``).

The acoustic model runs once: its emissions are kept (and optionally cached on disk), then
every (LM weight, word score) pair is a beam search over the same emissions, in parallel.
:func:`tune_model` is the whole of ``asr tune-lm``: each output tuned, the best stored.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from asr.data.audio import AudioError, read_audio
from asr.data.manifest import ManifestError, Utterance, read_manifest_lines
from asr.data.text import CharVocabulary
from asr.decoding.beam import BeamSearchDecoder, BeamSearchOptions
from asr.decoding.greedy import GreedyDecoder
from asr.decoding.hypothesis import Decoder
from asr.decoding.parallel import ParallelDecoder
from asr.decoding.settings import DecodingSettings, build_decoder, save_decoding_settings
from asr.errors import AsrError
from asr.inference.recognizer import SpeechRecognizer, load_model
from asr.inference.windows import FileEmissions, Window, decode_windows, join_windows
from asr.scoring.evaluate import normalized_references
from asr.scoring.metrics import ErrorCounts, error_counts
from asr.storage.hub import resolve_model
from asr.storage.model_folder import store_tuned_settings, tuned_settings_target, weights_file
from asr.utils.atomic import atomic_write


@dataclass
class Emissions:
    ids: list[str]  # utterance ids, in manifest order (failed audio left out)
    references: list[str]  # their transcripts, normalised as `asr evaluate` normalises them
    files: list[FileEmissions]  # per utterance: the (T, V) log-probabilities of its windows
    fingerprint: str  # checkpoint + manifest + window identity, to reject a stale cache
    failed: list[str]  # "utterance id: reason" for audio that could not be read or scored
    seconds_per_step: float  # output step length and ...
    sample_rate: int  # ... audio rate: windows' words are placed and joined as `asr evaluate` does
    units: str = "chars"  # the output they come from: chars, or the phone head
    # Per utterance ("" unknown), for held-out scoring: manifest metadata, so never cached
    # (a cache's caller sets them from its manifest).
    speakers: list[str] = field(default_factory=list)

    @property
    def matrices(self) -> list[np.ndarray]:
        """Every window's (T, V) matrix, utterance by utterance."""
        return [matrix for file in self.files for matrix in file.matrices]


def decode_texts(emissions: Emissions, decoder: Decoder | ParallelDecoder) -> list[str]:
    """One transcript per utterance: windows decoded and joined by the functions that
    ``asr transcribe``/``asr evaluate`` use, so a tuned setting is scored as it will be used."""
    hypotheses = decode_windows(decoder, emissions.files)
    return [join_windows(file, best, emissions.seconds_per_step, emissions.sample_rate)[0]
            for file, best in zip(emissions.files, hypotheses)]


def fingerprint(checkpoint: str | Path, utterances: Sequence[Utterance], window_seconds: float | None = None,
                units: str = "chars") -> str:
    stat = os.stat(weights_file(checkpoint))  # a checkpoint file, or a model folder's weights
    digest = hashlib.sha1(f"{Path(checkpoint).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(f"windows {window_seconds}|emissions v2\n".encode())  # v2: windowed, normalised references
    if units != "chars":
        digest.update(f"units {units}\n".encode())
    for u in utterances:
        digest.update(f"{u.id}|{u.audio}|{u.text}\n".encode())
    return digest.hexdigest()


def compute_emissions(recognizer: SpeechRecognizer, utterances: Sequence[Utterance], fingerprint: str,
                      labels: Sequence[str] | None = None) -> Emissions:
    """The acoustic model's output on every utterance, through the windowing of
    :meth:`SpeechRecognizer.file_emissions`; references as :mod:`asr.scoring.evaluate` scores them
    (``labels`` name the utterances in messages, e.g. "manifest:line")."""
    references = normalized_references(utterances, recognizer.vocabulary, labels, recognizer.config.data.language)
    failed = list(references.skipped)
    kept: list[tuple[Utterance, str, torch.Tensor]] = []
    for index, reference in zip(references.kept, references.texts):
        utt = utterances[index]
        try:
            kept.append((utt, reference, torch.from_numpy(read_audio(utt.audio, recognizer.sample_rate).samples)))
        except AudioError as err:
            failed.append(f"{utt.id}: {err}")
    files = recognizer.file_emissions([waveform for _, _, waveform in kept])
    failed += [f"{utt.id}: {f}" for (utt, _, _), f in zip(kept, files) if isinstance(f, str)]
    ok = [(utt, reference, f) for (utt, reference, _), f in zip(kept, files) if isinstance(f, FileEmissions)]
    return Emissions([u.id for u, _, _ in ok], [r for _, r, _ in ok], [f for _, _, f in ok], fingerprint, failed,
                     recognizer.seconds_per_step, recognizer.sample_rate, recognizer.units,
                     [u.speaker for u, _, _ in ok])


def save_emissions(path: str | Path, emissions: Emissions) -> None:
    with atomic_write(path, "wb") as out:
        torch.save({"ids": emissions.ids, "references": emissions.references, "fingerprint": emissions.fingerprint,
                    "failed": emissions.failed, "matrices": [torch.from_numpy(m) for m in emissions.matrices],
                    "windows": [[(w.start, w.end, w.keep_start, w.keep_end) for w in f.windows]
                                for f in emissions.files],
                    "durations": [f.duration for f in emissions.files],
                    "seconds_per_step": emissions.seconds_per_step, "sample_rate": emissions.sample_rate,
                    "units": emissions.units}, out)


def load_emissions(path: str | Path, expected_fingerprint: str) -> Emissions | None:
    """The cached emissions, or None when absent or made from another checkpoint/manifest."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if data.get("fingerprint") != expected_fingerprint:
        return None
    matrices = iter(m.numpy() for m in data["matrices"])
    files = [FileEmissions(tuple(Window(*w) for w in windows), tuple(next(matrices) for _ in windows), duration)
             for windows, duration in zip(data["windows"], data["durations"])]
    return Emissions(data["ids"], data["references"], files, data["fingerprint"], data["failed"],
                     data["seconds_per_step"], data["sample_rate"], data.get("units", "chars"))


@dataclass(frozen=True)
class TuningRow:
    lm_weight: float
    word_score: float
    words: ErrorCounts  # word errors over the dev set
    chars: ErrorCounts
    # (words, chars) of each speaker
    by_speaker: dict[str, tuple[ErrorCounts, ErrorCounts]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class HeldOutScore:
    """Each speaker scored at the pair that is best on the other speakers, pooled: no speaker's
    errors are counted at settings chosen on its own audio (an honest figure for a dev set
    that also picks the settings)."""

    words: ErrorCounts
    chars: ErrorCounts
    choices: dict[str, TuningRow]  # speaker -> the row (settings) it was scored at

    def summary(self) -> str:
        """The settings chosen, counted: "1.5/-1 x 2" (LM weight / word score)."""
        counted = Counter(f"{row.lm_weight:g}/{row.word_score:g}" for row in self.choices.values())
        return ", ".join(f"{pair} x {count}" for pair, count in counted.most_common())


@dataclass
class TuningResult:
    greedy: TuningRow | None  # the greedy baseline, for reference (None for phones: greedy phones are not words)
    rows: list[TuningRow]  # every pair tried
    best_row: TuningRow  # the pair with the lowest WER then CER (or CER then WER) ...
    best: DecodingSettings  # ... as settings, ready to save
    held_out: HeldOutScore | None = None  # by speaker; None with fewer than two known speakers


def counts_by_speaker(speakers: Sequence[str], references: Sequence[str],
                      texts: Sequence[str]) -> dict[str, tuple[ErrorCounts, ErrorCounts]]:
    """(word, char) error counts of each speaker's utterances, speakers in first-seen order."""
    if not len(speakers) == len(references) == len(texts):
        raise ValueError(f"{len(speakers)} speakers, {len(references)} references, {len(texts)} hypotheses")
    by_speaker: dict[str, tuple[ErrorCounts, ErrorCounts]] = {}
    for speaker in dict.fromkeys(speakers):
        pairs = [(r, t) for s, r, t in zip(speakers, references, texts) if s == speaker]
        kept_references, hypotheses = [r for r, _ in pairs], [t for _, t in pairs]
        by_speaker[speaker] = (error_counts(kept_references, hypotheses, "word"),
                               error_counts(kept_references, hypotheses, "char"))
    return by_speaker


def pooled(by_speaker: dict[str, tuple[ErrorCounts, ErrorCounts]],
           without: str | None = None) -> tuple[ErrorCounts, ErrorCounts]:
    """(word, char) counts summed over the speakers, leaving out ``without``."""
    zero = ErrorCounts(0, 0, 0, 0)
    kept = [counts for speaker, counts in by_speaker.items() if speaker != without]
    return sum((w for w, _ in kept), zero), sum((c for _, c in kept), zero)


def tuning_row(speakers: Sequence[str], references: Sequence[str], texts: Sequence[str], lm_weight: float = 0.0,
               word_score: float = 0.0) -> TuningRow:
    """The errors of ``texts``, in total and per speaker."""
    by_speaker = counts_by_speaker(speakers, references, texts)
    return TuningRow(lm_weight, word_score, *pooled(by_speaker), by_speaker)


def score(emissions: Emissions, texts: Sequence[str], lm_weight: float = 0.0, word_score: float = 0.0) -> TuningRow:
    texts = list(texts)
    return tuning_row(emissions.speakers or [""] * len(texts), emissions.references, texts, lm_weight, word_score)


def _rank(words: ErrorCounts, chars: ErrorCounts, metric: Literal["wer", "cer"]) -> tuple[float, float]:
    return (chars.rate, words.rate) if metric == "cer" else (words.rate, chars.rate)


def best_row(rows: Sequence[TuningRow], metric: Literal["wer", "cer"] = "wer") -> TuningRow:
    """The row with the lowest WER (ties: CER), or with ``metric="cer"`` the lowest CER (ties: WER)."""
    return min(rows, key=lambda r: _rank(r.words, r.chars, metric))


def held_out_score(rows: Sequence[TuningRow], metric: Literal["wer", "cer"] = "wer") -> HeldOutScore | None:
    """Leave-one-speaker-out: each speaker at the best pair on the others (ranked like
    :func:`best_row`), pooled; None unless every utterance's speaker is known and there are two or more."""
    speakers = list(rows[0].by_speaker) if rows else []
    if len(speakers) < 2 or "" in speakers:
        return None
    words = chars = ErrorCounts(0, 0, 0, 0)
    choices = {}
    for speaker in speakers:
        chosen = min(rows, key=lambda row: _rank(*pooled(row.by_speaker, without=speaker), metric))  # noqa: B023
        choices[speaker] = chosen
        words, chars = words + chosen.by_speaker[speaker][0], chars + chosen.by_speaker[speaker][1]
    return HeldOutScore(words, chars, choices)


def compared_scores(results: dict[str, TuningResult]) -> tuple[bool, dict[str, tuple[ErrorCounts, ErrorCounts]]]:
    """The (word, char) errors each tuning is compared at, and whether they are held out by
    speaker: they are when every result has a held-out score (the best rows would favour the
    search with more ways to fit the dev set), else each result's best row."""
    held_out = all(result.held_out is not None for result in results.values())
    return held_out, {units: (result.held_out.words, result.held_out.chars) if result.held_out and held_out
                      else (result.best_row.words, result.best_row.chars) for units, result in results.items()}


def best_tuning(results: dict[str, TuningResult], metric: Literal["wer", "cer"] = "wer") -> str:
    """The key (units) of the tuning that decodes best at :func:`compared_scores`; ties: the first."""
    _, scores = compared_scores(results)
    return min(scores, key=lambda units: _rank(*scores[units], metric))


def tune_lm(
    emissions: Emissions,
    vocabulary: CharVocabulary,
    base: DecodingSettings,
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
    workers: int = 1,
    progress=None,
    metric: Literal["wer", "cer"] = "wer",
    language: str = "en",
) -> TuningResult:
    """Grid search of LM weight x word score; the LM and lexicon are loaded once.

    ``metric`` ranks the pairs: WER for word LMs, usually CER for a character LM;
    ``language``: the model's data.language (its lexicons' text rules and phone labels).
    """
    if base.units != emissions.units:
        raise ValueError(f"{base.units} decoding cannot read emissions of the {emissions.units} output")
    baseline = score(emissions, decode_texts(emissions, GreedyDecoder(vocabulary))) if emissions.units == "chars" \
        else None
    template = build_decoder(vocabulary, replace(base, method="beam"), language)
    assert isinstance(template, BeamSearchDecoder)  # PhoneLexiconDecoder is one too
    rows: list[TuningRow] = []
    for lm_weight, word_score in itertools.product(lm_weights, word_scores):
        options = replace(base.beam, lm_weight=lm_weight, word_score=word_score, nbest=1)
        decoder = template.with_options(options)  # the LM and lexicon trie are loaded once
        with ParallelDecoder(decoder, workers) as parallel:
            texts = decode_texts(emissions, parallel)
        rows.append(score(emissions, texts, lm_weight, word_score))
        if progress:
            progress(rows[-1])
    best = best_row(rows, metric)
    settings = replace(base, method="beam",
                       beam=replace(base.beam, lm_weight=best.lm_weight, word_score=best.word_score))
    return TuningResult(baseline, rows, best, settings, held_out_score(rows, metric))


# --------------------------------------------------------------------------- a model on a dev manifest


class TuningError(AsrError):
    """A tuning that cannot run as asked (no pronunciation lexicon for the phones)."""


@dataclass(frozen=True)
class TuningRequest:
    """What :func:`tune_model` searches: the LM, the grid, and the outputs to tune."""

    lm: str  # KenLM word or character LM
    lm_weights: Sequence[float]
    word_scores: Sequence[float]
    beam_size: int
    beam_threshold: float
    lexicon: str | None = None  # the characters' lexicon or word list (None: the ARPA's words)
    phone_lexicon: str | None = None  # the phones' pronunciation lexicon (`asr lm pronounce`)
    units: Sequence[str] = ("chars",)  # the outputs to tune: chars, phones or both (the best is stored)
    metric: Literal["wer", "cer"] = "wer"  # what the best pair minimises
    workers: int = 1  # decoding processes
    emissions_cache: str | None = None  # the characters' emissions kept here, another output's beside it

    def lexicons(self) -> dict[str, str | None]:
        """Each output to tune, once and in order, with the lexicon it decodes through: the
        characters' ``lexicon``; the phones' ``phone_lexicon``, or ``lexicon`` when only phones are tuned."""
        units = list(dict.fromkeys(self.units))
        phone_lexicon = self.phone_lexicon or (self.lexicon if units == ["phones"] else None)
        if "phones" in units and not phone_lexicon:
            raise TuningError("--units phones needs a pronunciation lexicon (`asr lm pronounce LM OUT`): "
                              "--phone-lexicon (or --lexicon when only phones are tuned)")
        return {unit: phone_lexicon if unit == "phones" else self.lexicon for unit in units}

    def base_settings(self, units: str, lexicon: str | None) -> DecodingSettings:
        """The beam search whose LM weight and word score the grid varies; its files by absolute
        path (the settings outlive the working folder)."""
        return DecodingSettings("beam", _absolute(self.lm), _absolute(lexicon),
                                BeamSearchOptions(beam_size=self.beam_size, beam_threshold=self.beam_threshold), units)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


class TuningProgress(Protocol):
    """What :func:`tune_model` reports as it goes (a subclass inherits these, which do nothing)."""

    def skipped(self, problem: str) -> None:
        """A manifest line or an utterance left out, with why."""

    def units(self, units: str) -> None:
        """The tuning of output ``units`` begins (reported only when several outputs are tuned)."""

    def cached(self, path: str) -> None:
        """The emissions were read from this cache instead of computed."""

    def grid(self, utterances: int, lm_weights: Sequence[float], word_scores: Sequence[float]) -> None:
        """The grid search begins on ``utterances`` utterances."""

    def row(self, row: TuningRow) -> None:
        """One (LM weight, word score) pair scored."""

    def tuned(self, units: str, result: TuningResult) -> None:
        """Output ``units`` tuned."""


class _Quiet(TuningProgress):
    """Reports nothing."""


@dataclass
class TuningOutcome:
    results: dict[str, TuningResult]  # per output tuned, in the order tuned
    chosen: str  # the output whose best settings were stored (:func:`best_tuning`)
    stored: Path  # the settings file written
    copied: bool  # the LM and lexicon were copied into the model's folder (stored beside a model folder)

    @property
    def compared(self) -> tuple[bool, dict[str, tuple[ErrorCounts, ErrorCounts]]]:
        """What the choice between outputs compared (:func:`compared_scores`)."""
        return compared_scores(self.results)


def emissions_cache_file(cache: str, units: str) -> str:
    """One cache per output: the characters' at ``cache``, another's beside it (NAME.phones.pt for NAME.pt)."""
    return cache if units == "chars" else str(Path(cache).with_suffix(f".{units}{Path(cache).suffix}"))


def dev_set_emissions(recognizer: SpeechRecognizer, model: str | Path, utterances: Sequence[Utterance], units: str,
                      labels: Sequence[str] | None = None, cache: str | None = None,
                      progress: TuningProgress | None = None) -> Emissions:
    """The ``units`` output of ``recognizer`` (loaded from ``model``) on ``utterances``: from
    ``cache`` when it holds them for this model, manifest and windowing, else computed (and
    kept there). Their speakers are ``utterances``' own, never a cache's (held-out scoring)."""
    recognizer.units = units  # which output the emissions come from
    identity = fingerprint(model, utterances, recognizer.window_seconds, units)
    path = emissions_cache_file(cache, units) if cache else None
    emissions = load_emissions(path, identity) if path else None
    if emissions is None:
        emissions = compute_emissions(recognizer, utterances, identity, labels)
        if path:
            save_emissions(path, emissions)
    elif progress:
        progress.cached(path)
    speaker_of = {u.id: u.speaker for u in utterances}
    emissions.speakers = [speaker_of.get(i, "") for i in emissions.ids]
    return emissions


def tune_model(checkpoint: str | Path, manifest: str | Path, request: TuningRequest, out: str | Path | None = None,
               device: str = "cpu", progress: TuningProgress | None = None) -> TuningOutcome:
    """Tune ``request`` for each of its outputs on a dev manifest and store the best settings:
    in ``out``, or where transcribe/evaluate look for the model's own (:func:`store_tuned_settings`,
    which refuses an hf:// model: refused here before any work)."""
    progress = progress or _Quiet()
    if out is None:
        tuned_settings_target(checkpoint)  # refuses hf:// before the work, not after
    lexicons = request.lexicons()
    reading = read_manifest_lines(manifest)
    for problem in reading.problems:
        progress.skipped(str(problem))
    if not reading.utterances:
        raise ManifestError(f"{manifest}: no utterance to tune on")
    model = resolve_model(checkpoint)  # once: hf:// is looked up in the Hub cache (or online)
    recognizer = load_model(model, device=device, decoding=DecodingSettings())  # emissions only
    for units in lexicons:  # before any work: phones need a phone head
        recognizer.check_units(units)
    labels = [f"{manifest}:{n}" for n in reading.line_numbers]
    results: dict[str, TuningResult] = {}
    for units, lexicon in lexicons.items():
        if len(lexicons) > 1:
            progress.units(units)
        emissions = dev_set_emissions(recognizer, model, reading.utterances, units, labels, request.emissions_cache,
                                      progress)
        for failure in emissions.failed:
            progress.skipped(failure)
        if not emissions.ids:
            raise ManifestError(f"{manifest}: none of its utterances could be scored")
        progress.grid(len(emissions.ids), request.lm_weights, request.word_scores)
        results[units] = tune_lm(emissions, recognizer.vocabulary, request.base_settings(units, lexicon),
                                 request.lm_weights, request.word_scores, request.workers, progress=progress.row,
                                 metric=request.metric, language=recognizer.config.data.language)
        progress.tuned(units, results[units])
    chosen = best_tuning(results, request.metric)
    if out is not None:
        save_decoding_settings(out, results[chosen].best)
        return TuningOutcome(results, chosen, Path(out), copied=False)
    return TuningOutcome(results, chosen, store_tuned_settings(model, results[chosen].best), copied=model.is_dir())
