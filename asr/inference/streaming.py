"""Streaming recognition: samples in as they arrive, a growing transcript out.

    >>> import asr
    >>> stream = asr.load_model("exp/stream/best.pt").stream()
    >>> for piece in pieces:                      # any sizes, at the model's sample rate
    ...     print(stream.accept(piece).text)      # partial: greedy over what the model has output
    >>> result = stream.finish()                  # final: decoded like `asr transcribe`
    >>> result.transcription.text, result.transcription.words

Needs a model that streams (``model.direction: latency_controlled`` or ``unidirectional``)
and features a stream can compute (``features.normalization: global`` or ``causal``). Every
stage keeps just the context its next output needs:

- :class:`StreamingFeatures`: STFT frames as soon as their window of samples is in, with the
  centring zeros of the whole-file front end; running sums for the causal mean.
- :class:`RecognitionStream`: the subsampling front end over a sliding context of frames (as
  much as its kernels reach), then the model window by window (latency-controlled: a chunk
  once its look-ahead is in) or step by step (unidirectional), each layer's forward state
  carried. The emissions equal the model's own whole-utterance pass (tests/test_streaming.py).

The final result decodes all emissions with the recognizer's decoder (greedy, or beam search
with the LM ``asr tune-lm`` chose), as ``transcribe`` decodes a file up to the recognizer's
``window_seconds`` (longer files it cuts into windows; a stream is never cut); partial
results are the greedy path so far, which costs nothing to extend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from asr.config import ExperimentConfig
from asr.data.audio import read_audio
from asr.data.text import CharVocabulary
from asr.decoding.hypothesis import Decoder
from asr.errors import AsrError
from asr.inference.results import Transcription, timed_words
from asr.model.features import FeatureFrontend, remove_running_mean
from asr.model.network import AcousticModel
from asr.utils.precision import autocast


class Recognizer(Protocol):
    """What a stream reads from its :class:`asr.inference.recognizer.SpeechRecognizer` (which
    imports this module for ``stream()``, so this one names the parts instead of the class)."""

    config: ExperimentConfig
    vocabulary: CharVocabulary
    frontend: FeatureFrontend
    model: AcousticModel
    device: torch.device
    decoder: Decoder
    precision: str

    @property
    def sample_rate(self) -> int: ...

    @property
    def seconds_per_step(self) -> float: ...

    @property
    def streaming_problem(self) -> str | None: ...


class StreamingError(AsrError):
    """A model or front end that cannot run on a stream."""


class StreamingFeatures:
    """Normalised log-mel frames of a stream, each as soon as its samples are in; frame for frame
    what the whole-file front end computes (:class:`asr.model.features.FeatureFrontend`)."""

    def __init__(self, frontend: FeatureFrontend) -> None:
        if frontend.mean_removal == "utterance":
            raise StreamingError("features.normalization=utterance subtracts the mean of the whole utterance, "
                                 "which a stream does not have yet; streaming models use global or causal")
        self.frontend = frontend
        config = frontend.log_mel.config
        self.hop, self.n_fft = config.hop_length, config.n_fft
        self.num_frames = config.num_frames
        device = frontend.normalizer.mean.device
        self._pending = torch.zeros(self.n_fft // 2, device=device)  # centring zeros, then samples not yet past
        self.samples = 0  # samples received
        self.frames = 0  # frames returned
        self._sum = torch.zeros(config.n_mels, dtype=torch.float64, device=device)  # causal mean: running sum

    @torch.inference_mode()
    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """Mono float samples -> the frames they complete, (n, n_mels)."""
        self.samples += len(samples)
        self._pending = torch.cat([self._pending, samples.to(self._pending)])
        count = max(0, (len(self._pending) - self.n_fft) // self.hop + 1)
        return self._frames(count)

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """The last frames, over the closing centring zeros."""
        self._pending = torch.cat([self._pending, self._pending.new_zeros(self.n_fft // 2)])
        return self._frames(int(self.num_frames(self.samples)) - self.frames)

    def _frames(self, count: int) -> torch.Tensor:
        if count <= 0:
            return self._pending.new_zeros(0, len(self._sum))
        span = self._pending[: (count - 1) * self.hop + self.n_fft]
        log_mel = self.frontend.log_mel
        features = log_mel.log(log_mel.padded_mel_power(span[None]))[0]  # (count, n_mels)
        self._pending = self._pending[count * self.hop:]
        if self.frontend.mean_removal == "causal":  # continued from the previous call's running sums
            normalised, sums = remove_running_mean(features[None], self._sum[None], self.frames)  # (1, count, n_mels)
            features, self._sum = normalised[0], sums[0, -1]
        self.frames += count
        return self.frontend.normalizer(features)


@dataclass(frozen=True)
class StreamUpdate:
    text: str  # the greedy transcript of everything the model has output so far
    seconds: float  # audio received so far
    decoded_seconds: float  # audio the model's outputs cover: behind ``seconds`` by its look-ahead
    new_steps: int  # output steps this call added


@dataclass(frozen=True)
class StreamResult:
    transcription: Transcription  # decoded as ``transcribe`` decodes a file: text, word times, confidences
    emitted_at: tuple[float, ...]  # per word: seconds of audio received when its last step was output
    emitted_wall: tuple[float, ...]  # per word: time.perf_counter() then (for delays measured in real time)
    log_probs: np.ndarray  # (T, V) every step's emissions


class RecognitionStream:
    """One stream through a recognizer whose model streams. Not thread-safe: one per stream."""

    def __init__(self, recognizer: Recognizer, name: str = "<stream>") -> None:
        config = recognizer.config.model
        if recognizer.streaming_problem:
            raise StreamingError(recognizer.streaming_problem)
        self.recognizer = recognizer
        self.name = name
        self.features = StreamingFeatures(recognizer.frontend)
        self.factor = config.subsampling_factor
        self.reach = config.subsampling_reach_frames()  # frames past a step's first that it reads
        # Left context for the conv blocks (they read as far left as right), whole steps so the
        # strides stay aligned with the whole-file pass; stacking needs none.
        self.context = 0 if config.subsampling == "stack" else -(-self.reach // self.factor) * self.factor
        self.chunked = config.direction == "latency_controlled"
        self.chunk, self.right = config.chunk_steps, config.right_steps
        n_mels = recognizer.config.features.n_mels
        self._frames = torch.zeros(0, n_mels, device=recognizer.device)  # feature frames from _frame_base on
        self._frame_base = 0
        self._next_step = 0  # next subsampled step to compute
        self._steps: torch.Tensor | None = None  # subsampled steps from _step_base on, (n, D)
        self._step_base = 0
        self._states: list | None = None
        self._emissions: list[np.ndarray] = []  # (n, V) pieces in step order
        self._emitted = 0
        self._emitted_at: list[tuple[float, float]] = []  # per step: (audio seconds in, perf_counter)
        self._text = ""  # the greedy path's characters so far (repeats collapsed, blanks dropped)
        self._previous_label = recognizer.vocabulary.blank_id
        self._finished = False

    @property
    def seconds(self) -> float:
        return self.features.samples / self.recognizer.sample_rate

    def accept(self, samples: np.ndarray) -> StreamUpdate:
        """Add mono float32 samples at the recognizer's sample rate; the partial result."""
        if self._finished:
            raise StreamingError(f"{self.name}: the stream has finished (or failed): start another")
        samples = np.asarray(samples)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"{self.name}: samples must be a 1-D float array in [-1, 1] (mono; 16-bit PCM divided "
                             f"by 32768), not {samples.dtype} of shape {samples.shape}")
        samples = samples.astype(np.float32, copy=False)
        if not np.isfinite(samples).all():
            raise ValueError(f"{self.name}: samples must be finite (NaN or infinity received)")
        before = self._emitted
        try:
            self._add_frames(self.features.accept(torch.from_numpy(samples)), final=False)
        except Exception:
            # Its samples are consumed and frames may be half added: what follows would be wrong.
            self._finished = True
            raise
        return self._update(self._emitted - before)

    def finish(self) -> StreamResult:
        """The end of the stream: the last outputs, decoded with the recognizer's decoder."""
        if self._finished:
            raise StreamingError(f"{self.name}: the stream has finished (or failed): start another")
        self._finished = True  # even if what follows fails: the closing frames must not be added twice
        self._add_frames(self.features.finish(), final=True)
        recognizer = self.recognizer
        vocabulary_size = len(recognizer.vocabulary)
        log_probs = np.concatenate(self._emissions) if self._emissions else np.zeros((0, vocabulary_size), np.float32)
        hypothesis = recognizer.decoder.decode_matrix(log_probs)[0]
        duration = self.seconds
        words = timed_words(hypothesis, recognizer.seconds_per_step, 0.0, duration)
        emitted = [self._emitted_at[max(0, min(w.end, len(self._emitted_at)) - 1)] if self._emitted_at else
                   (duration, time.perf_counter()) for w in hypothesis.words]
        transcription = Transcription(self.name, hypothesis.text, None, duration, hypothesis, words)
        return StreamResult(transcription, tuple(round(a, 3) for a, _ in emitted), tuple(w for _, w in emitted),
                            log_probs)

    # ------------------------------------------------------------------ stages

    @property
    def partial_text(self) -> str:
        """The greedy transcript of everything the model has output so far."""
        return " ".join(self._text.split())

    def _update(self, new_steps: int) -> StreamUpdate:
        return StreamUpdate(self.partial_text, self.seconds, self._emitted * self.recognizer.seconds_per_step, new_steps)

    @torch.inference_mode()
    def _add_frames(self, frames: torch.Tensor, final: bool) -> None:
        self._frames = torch.cat([self._frames, frames])
        recognizer = self.recognizer
        with autocast(recognizer.precision, recognizer.device):
            steps = self._subsample(final)
            if steps is not None:
                self._steps = steps if self._steps is None else torch.cat([self._steps, steps])
            self._run_model(final)

    def _subsample(self, final: bool) -> torch.Tensor | None:
        """The subsampled steps the frames so far complete (all of them when final)."""
        available = self._frame_base + len(self._frames)
        if final:
            last = -(-available // self.factor)
        else:  # step j reads frames up to j * factor + reach
            last = (available - 1 - self.reach) // self.factor + 1 if available > self.reach else 0
        if last <= self._next_step:
            return None
        start = max(0, self._next_step * self.factor - self.context)  # a multiple of the factor
        x = self._frames[start - self._frame_base:]  # (n, n_mels)
        output, _ = self.recognizer.model.subsampler(x[None], torch.tensor([len(x)], device=x.device))  # (1, n', D)
        first = start // self.factor
        steps = output[0, self._next_step - first: last - first]  # (last - next, D)
        self._next_step = last
        keep_from = max(0, last * self.factor - self.context)  # what the next call starts from
        self._frames = self._frames[keep_from - self._frame_base:]
        self._frame_base = keep_from
        return steps

    def _run_model(self, final: bool) -> None:
        if self._steps is None:
            return
        model = self.recognizer.model
        device = self._steps.device
        if not self.chunked:  # unidirectional: every new step at once
            if len(self._steps):
                log_probs, self._states = model.forward_window(self._steps[None], torch.tensor([len(self._steps)]),
                                                               self._states)  # (1, n, V)
                self._emit(log_probs[0])
                self._step_base += len(self._steps)
                self._steps = self._steps[len(self._steps):]
            return
        width = self.chunk + self.right
        while True:  # window k starts at step _step_base, a multiple of chunk
            available = len(self._steps)
            if available >= width:
                window, length = self._steps[:width], width
            elif final and available > 0:
                window = torch.nn.functional.pad(self._steps, (0, 0, 0, width - available))  # (W, D): zeros past the end
                length = available
            else:
                return
            log_probs, self._states = model.forward_window(window[None], torch.tensor([length], device=device),
                                                           self._states)  # (1, chunk, V)
            own = min(self.chunk, available)
            self._emit(log_probs[0, :own])
            self._steps = self._steps[own:]
            self._step_base += own

    def _emit(self, log_probs: torch.Tensor) -> None:
        """Keep a piece of emissions and extend the greedy path over it."""
        matrix = log_probs.float().cpu().numpy()  # (n, V)
        self._emissions.append(matrix)
        self._emitted += len(matrix)
        stamp = (self.seconds, time.perf_counter())
        self._emitted_at += [stamp] * len(matrix)
        vocabulary = self.recognizer.vocabulary
        added = []
        for label in matrix.argmax(axis=1).tolist():
            if label != self._previous_label and label != vocabulary.blank_id:
                added.append(label)
            self._previous_label = label
        self._text += vocabulary.decode(added)


def stream_pieces(samples: np.ndarray, sample_rate: int, piece_seconds: float) -> list[np.ndarray]:
    """Cut samples into consecutive pieces of ``piece_seconds`` (the last may be shorter)."""
    size = max(1, int(round(piece_seconds * sample_rate)))
    return [samples[i: i + size] for i in range(0, len(samples), size)] or [samples[:0]]


@dataclass(frozen=True)
class StreamedFile:
    result: StreamResult  # the stream's final result (``result.transcription.path`` is the file)
    delays: tuple[float, ...]  # per word: seconds from its end in the audio to its emission (see stream_file)
    paced: bool  # whether the audio was fed at real-time pace (delays in wall time) or as fast as possible


def stream_file(recognizer: Recognizer, path: str, piece_seconds: float = 0.1, pace: bool = True,
                on_update: Callable[[StreamUpdate], None] | None = None) -> StreamedFile:
    """Feed an audio file through a stream in pieces of ``piece_seconds``, as a microphone would.

    ``pace``: each piece is given when its audio would have finished playing, and a word's
    delay is the wall time from then (its end) to its emission: look-ahead, piece size and
    compute together. Without pace the audio goes in as fast as possible and the delay is
    counted in audio (what had been received when the word was output, minus its end).
    ``on_update`` sees every partial result. Raises :class:`asr.data.audio.AudioError` for a bad file.
    """
    audio = read_audio(path, recognizer.sample_rate)
    stream = RecognitionStream(recognizer, name=str(path))
    pieces = stream_pieces(audio.samples, recognizer.sample_rate, piece_seconds)
    began = time.perf_counter()
    fed = 0
    for piece in pieces:
        fed += len(piece)
        if pace:
            time.sleep(max(0.0, began + fed / recognizer.sample_rate - time.perf_counter()))
        update = stream.accept(piece)
        if on_update is not None:
            on_update(update)
    result = stream.finish()
    words = result.transcription.words
    if pace:
        delays = tuple(round(wall - (began + w.end), 3) for w, wall in zip(words, result.emitted_wall))
    else:
        delays = tuple(round(at - w.end, 3) for w, at in zip(words, result.emitted_at))
    transcription = replace(result.transcription, warnings=audio.warnings)
    return StreamedFile(replace(result, transcription=transcription), delays, pace)
