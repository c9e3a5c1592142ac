"""Scoring a model on a manifest (``asr evaluate``): WER/CER with a report people can read.

References are normalised exactly as training normalises transcripts
(:func:`asr.data.text.normalize_text`), so casing and punctuation cost nothing; a reference the
model's vocabulary cannot spell is reported and left out rather than scored as errors the
model could never avoid. Bad manifest lines are reported and skipped; the rest is scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr.data.manifest import ManifestError, Utterance, read_manifest_lines
from asr.data.text import ENGLISH, CharVocabulary, normalize_text
from asr.inference.recognizer import SpeechRecognizer
from asr.inference.results import Transcription
from asr.scoring.metrics import ErrorCounts, UtteranceScore, score_utterances
from asr.utils.atomic import atomic_write


@dataclass
class EvaluationReport:
    scores: list[UtteranceScore]  # per scored utterance, in manifest order (references normalised)
    failed: list[Transcription] = field(default_factory=list)  # utterances whose audio failed
    audio_seconds: float = 0.0  # audio of the scored utterances
    skipped: list[str] = field(default_factory=list)  # "manifest:line: reason" for lines that were not scored
    warnings: list[str] = field(default_factory=list)  # "audio: warning" for files used despite a problem
    speakers: list[str] = field(default_factory=list)  # per score, its manifest speaker ("" when not given)
    durations: list[float] = field(default_factory=list)  # per score, seconds of its audio

    @property
    def words(self) -> ErrorCounts:
        return sum((s.words for s in self.scores), ErrorCounts(0, 0, 0, 0))

    @property
    def chars(self) -> ErrorCounts:
        return sum((s.chars for s in self.scores), ErrorCounts(0, 0, 0, 0))

    @property
    def complete(self) -> bool:
        """Every manifest line was scored: no failed audio, no skipped line."""
        return not self.failed and not self.skipped

    def worst(self, count: int = 10) -> list[UtteranceScore]:
        return sorted(self.scores, key=lambda s: (-s.words.errors, -s.words.rate, s.id))[:count]

    def format(self, worst: int = 10) -> str:
        w, c = self.words, self.chars
        lines = [f"utterances: {len(self.scores)} scored, {len(self.failed)} failed, {len(self.skipped)} skipped; "
                 f"audio {self.audio_seconds / 60:.1f} min"]
        if not self.scores:
            lines.append("WER n/a, CER n/a: no utterance could be scored")
        else:
            lines += [
                f"WER {100 * w.rate:.2f} %  ({w.errors} errors / {w.reference_length} words: "
                f"{w.substitutions} substitutions, {w.deletions} deletions, {w.insertions} insertions)",
                f"CER {100 * c.rate:.2f} %  ({c.errors} errors / {c.reference_length} characters: "
                f"{c.substitutions} substitutions, {c.deletions} deletions, {c.insertions} insertions)",
            ]
        for title, items in (("failed", [f"{t.path}: {t.error}" for t in self.failed]), ("skipped", self.skipped),
                             ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items]
        if worst and self.scores:
            lines.append(f"worst {min(worst, len(self.scores))} utterances by word errors:")
            for s in self.worst(worst):
                lines += [
                    f"  {s.id}  ({s.words.errors} word errors, WER {100 * s.words.rate:.0f} %)",
                    f"    REF: {s.reference}",
                    f"    HYP: {s.hypothesis}",
                ]
        return "\n".join(lines)


@dataclass(frozen=True)
class References:
    kept: list[int]  # indices of the utterances that can be scored
    texts: list[str]  # their normalised references
    skipped: list[str]  # "label: reason" for the others


def normalized_references(utterances: Sequence[Utterance], vocabulary: CharVocabulary,
                          labels: Sequence[str] | None = None, language: str = ENGLISH) -> References:
    """References normalised as in training (by ``language``'s rules, the model's
    data.language); those with characters the vocabulary cannot spell are skipped with a
    reason (``labels`` name each utterance, e.g. "manifest:line")."""
    labels = labels if labels is not None else [u.id for u in utterances]
    kept, texts, skipped = [], [], []
    for index, (utterance, label) in enumerate(zip(utterances, labels)):
        reference = normalize_text(utterance.text, language)
        unknown = vocabulary.unknown_characters(reference)
        if unknown:
            shown = ", ".join(repr(char) for char in sorted(unknown))
            skipped.append(f"{label}: reference of {utterance.id} has characters outside the model's vocabulary "
                           f"({shown}) in {reference!r}")
            continue
        kept.append(index)
        texts.append(reference)
    return References(kept, texts, skipped)


def evaluate(recognizer: SpeechRecognizer, utterances: Sequence[Utterance],
             labels: Sequence[str] | None = None) -> EvaluationReport:
    """Transcribe the utterances and score each against its normalised reference."""
    references = normalized_references(utterances, recognizer.vocabulary, labels, recognizer.config.data.language)
    scorable = [utterances[i] for i in references.kept]
    results = recognizer.transcribe([u.audio for u in scorable])
    ok = [(u, reference, r) for u, reference, r in zip(scorable, references.texts, results) if r.ok]
    scores = score_utterances([u.id for u, _, _ in ok], [ref for _, ref, _ in ok], [r.text for _, _, r in ok])
    warnings = [f"{r.path}: {warning}" for r in results for warning in r.warnings]
    return EvaluationReport(scores, [r for r in results if not r.ok], sum(r.duration for _, _, r in ok),
                            list(references.skipped), warnings, speakers=[u.speaker for u, _, _ in ok],
                            durations=[r.duration for _, _, r in ok])


def evaluate_manifest(recognizer: SpeechRecognizer, manifest: str | Path) -> EvaluationReport:
    """:func:`evaluate` on a manifest; its bad lines are reported in ``skipped``, the rest
    scored. Raises :class:`ManifestError` when no line at all is usable."""
    reading = read_manifest_lines(manifest)
    if not reading.utterances:
        why = f"{len(reading.problems)} bad lines, the first {reading.problems[0]}" if reading.problems else "it is empty"
        raise ManifestError(f"{manifest}: no utterance to evaluate ({why})")
    report = evaluate(recognizer, reading.utterances, [f"{manifest}:{n}" for n in reading.line_numbers])
    report.skipped[:0] = [str(problem) for problem in reading.problems]
    return report


def write_utterance_scores(path: str, report: EvaluationReport) -> None:
    """One JSON line per utterance: id, reference, hypothesis and its error counts."""
    with atomic_write(path) as out:
        for score in report.scores:
            record = {"id": score.id, "reference": score.reference, "hypothesis": score.hypothesis}
            for unit, counts in (("word", score.words), ("char", score.chars)):
                record[unit] = {"errors": counts.errors, "length": counts.reference_length, "sub": counts.substitutions,
                                "del": counts.deletions, "ins": counts.insertions}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
