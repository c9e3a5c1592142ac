"""CTC hypotheses: the decoder interface, and words with times and confidences read from a CTC frame path."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from asr.data.text import CharVocabulary

if TYPE_CHECKING:  # annotations only: results and writers that use hypotheses need no torch
    import torch


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: int  # first output step of the word's first character
    end: int  # one past the last output step of its last character
    confidence: float  # mean posterior of the path's label over the word's non-blank steps, in [0, 1]


@dataclass(frozen=True)
class Hypothesis:
    text: str  # decoded transcript
    token_ids: list[int]  # label ids after collapsing repeats and removing blanks
    frames: list[int]  # output step at which each token in token_ids starts
    score: float  # greedy: log-probability of the best path; beam: the search's total score
    words: tuple[WordSpan, ...] = ()  # one per word of ``text``, in order
    lm_score: float = 0.0  # beam search with an LM: the LM part of ``score`` (log10, unweighted)


class Decoder(Protocol):
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]: ...

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]: ...


def hypothesis_from_path(
    path: Sequence[int],
    log_probs: np.ndarray,
    vocabulary: CharVocabulary,
    score: float,
    word_ends: Sequence[tuple[int, str | None]] | None = None,
    lm_score: float = 0.0,
) -> Hypothesis:
    """Build a hypothesis from a CTC frame path (one label per output step).

    ``log_probs`` is the utterance's (T, V) matrix, for word confidences. Words are split at
    the space label, or, for lexicon decoding, at ``word_ends`` = (step, word) pairs, since
    lexicon words may follow each other without a space step (word None: spell it out).
    """
    blank, space = vocabulary.blank_id, vocabulary.tokens.index(" ")
    token_ids: list[int] = []
    frames: list[int] = []
    segments: list[tuple[int, int, int]] = []  # (label, first step, one past last step)
    previous = blank
    for step, label in enumerate(path):
        if label != previous and label != blank:
            token_ids.append(label)
            frames.append(step)
            segments.append((label, step, step + 1))
        elif label == previous and label != blank:
            label_, first, _ = segments[-1]
            segments[-1] = (label_, first, step + 1)
        previous = label

    # Group character segments into words.
    groups: list[tuple[str | None, list[tuple[int, int, int]]]] = []
    if word_ends is None:
        current: list[tuple[int, int, int]] = []
        for segment in segments + [(space, len(path), len(path))]:
            if segment[0] == space:
                if current:
                    groups.append((None, current))
                current = []
            else:
                current.append(segment)
    else:
        ends = iter(sorted(word_ends, key=lambda end: end[0]))
        end_step, end_word = next(ends, (math.inf, None))
        current = []
        for segment in segments:
            if segment[0] != space:
                current.append(segment)
            if segment[2] > end_step:  # this segment reaches the step where the word ended
                if current:
                    groups.append((end_word, current))
                current = []
                end_step, end_word = next(ends, (math.inf, None))
        if current:  # characters after the last completed word (should not happen): keep them
            groups.append((None, current))

    words = []
    for word, group in groups:
        if word is None:
            word = vocabulary.decode(label for label, _, _ in group)
        start, end = group[0][1], group[-1][2]
        steps = [step for label, first, last in group for step in range(first, last)]
        labels = [label for label, first, last in group for _ in range(first, last)]
        confidence = float(np.exp(log_probs[steps, labels]).mean()) if steps else 0.0
        words.append(WordSpan(word, start, end, confidence))
    text = " ".join(w.word for w in words)
    return Hypothesis(text, token_ids, frames, score, tuple(words), lm_score)
