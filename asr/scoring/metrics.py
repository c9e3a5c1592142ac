"""Word and character error rates through jiwer, corpus-level and per utterance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer


@dataclass(frozen=True)
class ErrorCounts:
    substitutions: int
    deletions: int
    insertions: int
    hits: int

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit; an empty reference counts each inserted unit as 100 %."""
        if self.reference_length == 0:
            return float(self.insertions > 0)
        return self.errors / self.reference_length


def _counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> ErrorCounts:
    return ErrorCounts(output.substitutions, output.deletions, output.insertions, output.hits)


def _split_empty(references: Sequence[str], hypotheses: Sequence[str], unit: str) -> ErrorCounts:
    """Counts for pairs with an empty reference, which jiwer refuses: every unit is inserted."""
    inserted = sum(len(h.split()) if unit == "word" else len(h) for r, h in zip(references, hypotheses) if not r.strip())
    return ErrorCounts(0, 0, inserted, 0)


def error_counts(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> ErrorCounts:
    """Corpus-level edit counts of ``hypotheses`` against ``references`` ("word" or "char")."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    total = _split_empty(references, hypotheses, unit)
    if pairs:
        refs, hyps = zip(*pairs)
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        total = total + _counts(process(list(refs), list(hyps)))
    return total


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_counts(references, hypotheses, "word").rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_counts(references, hypotheses, "char").rate


@dataclass(frozen=True)
class UtteranceScore:
    id: str
    reference: str
    hypothesis: str
    words: ErrorCounts
    chars: ErrorCounts


def score_utterances(
    ids: Sequence[str], references: Sequence[str], hypotheses: Sequence[str]
) -> list[UtteranceScore]:
    return [
        UtteranceScore(i, r, h, error_counts([r], [h], "word"), error_counts([r], [h], "char"))
        for i, r, h in zip(ids, references, hypotheses)
    ]
