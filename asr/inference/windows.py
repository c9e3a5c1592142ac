"""Long audio in windows cut at pauses, and the windows' hypotheses joined into one transcript."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asr.decoding.hypothesis import Decoder, Hypothesis
from asr.decoding.parallel import ParallelDecoder
from asr.inference.results import TimedWord, timed_words

# Files longer than the window are cut into windows at pauses. A BiLSTM does worst on input
# longer than anything it was trained on (the demo model: WER 8 % on its utterances one by one,
# 23-43 % on 8-24 s of them joined), so the window is the checkpoint's longest training
# utterance, kept within these bounds; its memory and latency also grow with the input.
LONG_AUDIO_SECONDS = 30.0  # the window when the checkpoint does not say, and the longest one
MIN_WINDOW_SECONDS = 4.0  # shorter windows would be mostly overlap
WINDOW_OVERLAP_SECONDS = 1.0  # context on each side of a cut ...
WINDOW_OVERLAP_FRACTION = 0.125  # ... but at most this share of the window
CUT_SEARCH_SECONDS = 8.0  # how far before the longest allowed span a quiet cut point is sought


@dataclass(frozen=True)
class Window:
    start: int  # first sample given to the model
    end: int  # one past the last sample
    keep_start: float  # seconds: the window's own span, whose words it contributes ...
    keep_end: float  # ... [keep_start, keep_end); the rest is context shared with its neighbours


@dataclass(frozen=True)
class FileEmissions:
    """The acoustic model's output for one file, window by window (one window when short)."""

    windows: tuple[Window, ...]  # the pieces the file was cut into, in time order
    matrices: tuple[np.ndarray, ...]  # (T, V) log-probabilities per window
    duration: float  # seconds of audio in the whole file


def decode_windows(decoder: ParallelDecoder | Decoder, files: Sequence[FileEmissions]) -> list[list[Hypothesis]]:
    """The best hypothesis of every window of every file, all windows decoded in one call."""
    matrices = [matrix for file in files for matrix in file.matrices]
    best = iter(nbest[0] for nbest in decoder.decode(matrices)) if isinstance(decoder, ParallelDecoder) \
        else iter(decoder.decode_matrix(m)[0] for m in matrices)
    return [[next(best) for _ in file.matrices] for file in files]


def join_windows(file: FileEmissions, hypotheses: Sequence[Hypothesis], seconds_per_step: float,
                 sample_rate: int) -> tuple[str, tuple[TimedWord, ...]]:
    """A file's transcript and timed words from its windows' hypotheses: each window keeps
    the words centred in its own span. The one function behind transcribe, evaluate and tune-lm."""
    if len(file.windows) == 1:
        return hypotheses[0].text, timed_words(hypotheses[0], seconds_per_step, 0.0, file.duration)
    words: list[TimedWord] = []
    for window, hypothesis in sorted(zip(file.windows, hypotheses), key=lambda item: item[0].start):
        for word in timed_words(hypothesis, seconds_per_step, window.start / sample_rate, file.duration):
            if window.keep_start <= (word.start + word.end) / 2 < window.keep_end:
                words.append(word)
    return " ".join(w.word for w in words), tuple(words)


def smoothed_power(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean square power of 10 ms frames, smoothed over 100 ms: (num_samples // hop,).

    The pause finder of long audio (:func:`plan_windows`) and live mode (asr/inference/live.py).
    """
    hop = sample_rate // 100
    frames = samples[: len(samples) // hop * hop].reshape(-1, hop)  # (frames, hop), a view
    power = np.einsum("ij,ij->i", frames, frames) / hop  # no squared copy of an hour of audio
    return np.convolve(power, np.ones(10) / 10, mode="same")


def plan_windows(samples: np.ndarray, sample_rate: int, max_seconds: float = LONG_AUDIO_SECONDS,
                 overlap: float = WINDOW_OVERLAP_SECONDS, search: float = CUT_SEARCH_SECONDS) -> list[Window]:
    """Cut long audio into windows of at most ``max_seconds`` (overlap included), at the
    quietest moments.

    Each cut goes to the lowest-energy 100 ms within ``search`` seconds (and within the second
    half) before the longest allowed span, so cuts fall in pauses when there are any. Windows
    extend ``overlap`` seconds past each cut as context; words are assigned to the window
    owning their centre.
    """
    total = len(samples)
    if total <= max_seconds * sample_rate:
        return [Window(0, total, 0.0, math.inf)]
    if max_seconds <= 2 * overlap:
        raise ValueError(f"windows of {max_seconds} s leave no room between overlaps of {overlap} s")
    hop = sample_rate // 100
    energy = smoothed_power(samples, sample_rate)
    span = int((max_seconds - 2 * overlap) * sample_rate)  # longest own span: window = span + 2 overlaps
    reach = int(search * sample_rate)
    cuts = [0]
    while total - cuts[-1] > span:
        latest = cuts[-1] + span
        earliest = max(cuts[-1] + span // 2, latest - reach)
        # Frames wholly inside [earliest, latest]: a cut at a frame's start never passes latest.
        first, last = -(-earliest // hop), latest // hop
        candidates = energy[first:last + 1]
        cuts.append((first + int(candidates.argmin())) * hop if len(candidates) else latest)
    cuts.append(total)
    margin = int(overlap * sample_rate)
    windows = []
    for number, (left, right) in enumerate(zip(cuts[:-1], cuts[1:])):
        keep_start = left / sample_rate if number > 0 else 0.0
        keep_end = right / sample_rate if right < total else math.inf
        windows.append(Window(max(0, left - margin), min(total, right + margin), keep_start, keep_end))
    return windows
