"""What recognition returns: a file's transcription and its timed words."""

from __future__ import annotations

import math
from dataclasses import dataclass

from asr.decoding.hypothesis import Hypothesis


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds from the start of the file
    end: float  # seconds, at most the file's duration
    confidence: float  # mean CTC posterior of the word's characters, in [0, 1]


@dataclass(frozen=True)
class Transcription:
    path: str  # the input file
    text: str = ""  # the transcript ("" when the file failed)
    error: str | None = None  # why the file could not be transcribed, else None
    duration: float = 0.0  # seconds of audio
    hypothesis: Hypothesis | None = None  # decoder output, with token frames and score (None when windowed)
    words: tuple[TimedWord, ...] = ()  # the transcript's words with times and confidences
    warnings: tuple[str, ...] = ()  # what was odd about the file but did not stop it (truncated, ...)

    @property
    def ok(self) -> bool:
        return self.error is None


def timed_words(hypothesis: Hypothesis, seconds_per_step: float, offset: float = 0.0,
                duration: float = math.inf) -> tuple[TimedWord, ...]:
    """The hypothesis' words in seconds; ends are clipped to ``duration``, the file's length
    (the last output step may reach up to one step past the last sample)."""
    words = []
    for w in hypothesis.words:
        end = min(round(offset + w.end * seconds_per_step, 3), duration)
        start = min(round(offset + w.start * seconds_per_step, 3), end)
        words.append(TimedWord(w.word, start, end, round(w.confidence, 4)))
    return tuple(words)
