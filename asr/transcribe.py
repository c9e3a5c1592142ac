"""Transcription and evaluation: the Python API behind ``asr transcribe`` and ``asr evaluate``.

    >>> import asr
    >>> model = asr.load_model("exp/run/best.pt")
    >>> for result in model.transcribe(["a.flac", "b.wav"]):
    ...     print(result.path, result.text if result.ok else result.error)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.audio import AudioError, load_audio
from asr.checkpoint import CheckpointError, load_checkpoint
from asr.config import ExperimentConfig, from_dict
from asr.data import Utterance, read_manifest
from asr.decoding import BeamSearchDecoder, Decoder, DecodingSettings, GreedyDecoder, Hypothesis, ParallelDecoder, build_decoder
from asr.features import FeatureFrontend
from asr.metrics import ErrorCounts, UtteranceScore, score_utterances
from asr.model import AcousticModel
from asr.text import CharVocabulary

# Audio seconds per inference batch: bounds memory while keeping the LSTM's matrices large.
BATCH_SECONDS = 120.0
FILES_PER_GROUP = 256  # files read into memory at once ...
GROUP_SECONDS = 30 * 60.0  # ... or this much audio (an hour-long file is a group of its own)
# Files longer than this are cut into windows: LibriSpeech training utterances are <= 35 s,
# and a BiLSTM's memory and latency grow with the input length.
LONG_AUDIO_SECONDS = 30.0
WINDOW_OVERLAP_SECONDS = 1.0  # context on each side of a cut
CUT_SEARCH_SECONDS = 8.0  # how far before the longest allowed span a quiet cut point is sought


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds from the start of the file
    end: float  # seconds
    confidence: float  # mean CTC posterior of the word's characters, in [0, 1]


@dataclass(frozen=True)
class Transcription:
    path: str  # the input file
    text: str = ""  # the transcript ("" when the file failed)
    error: str | None = None  # why the file could not be transcribed, else None
    duration: float = 0.0  # seconds of audio
    hypothesis: Hypothesis | None = None  # decoder output, with token frames and score
    words: tuple[TimedWord, ...] = ()  # the transcript's words with times and confidences

    @property
    def ok(self) -> bool:
        return self.error is None


class SpeechRecognizer:
    """A trained model ready to transcribe: front end, acoustic model, vocabulary, decoder."""

    def __init__(
        self,
        config: ExperimentConfig,
        vocabulary: CharVocabulary,
        frontend: FeatureFrontend,
        model: AcousticModel,
        device: torch.device,
    ) -> None:
        self.config = config
        self.vocabulary = vocabulary
        self.frontend = frontend.eval()
        self.model = model.eval()
        self.device = device
        self.decoder: Decoder = GreedyDecoder(vocabulary)
        self.decoding = DecodingSettings()
        self.workers = 1  # beam search worker processes
        self.window_seconds = LONG_AUDIO_SECONDS  # longer files are cut into windows of at most this
        self.precision = "fp32"  # bf16: the acoustic model runs under bf16 autocast

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @property
    def seconds_per_step(self) -> float:
        """Duration of one output step: the feature hop times the model's subsampling."""
        features = self.config.features
        return features.hop_length / features.sample_rate * self.config.model.subsampling_factor

    def use_decoding(self, settings: DecodingSettings, workers: int = 1) -> str | None:
        """Switch decoders. An unusable LM or lexicon falls back to greedy decoding: the
        returned message says why (None when ``settings`` were applied as given)."""
        from asr.lm import LanguageModelError

        self.workers = workers
        try:
            self.decoder, self.decoding = build_decoder(self.vocabulary, settings), settings
            return None
        except LanguageModelError as err:
            self.decoder, self.decoding = GreedyDecoder(self.vocabulary), DecodingSettings()
            return f"{err}; falling back to greedy decoding"

    @torch.inference_mode()
    def emissions(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities (B, T, V) and output lengths (B,) for a batch of mono waveforms."""
        lengths = torch.tensor([len(w) for w in waveforms], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(list(waveforms), batch_first=True).to(self.device)  # (B, S)
        features, frame_lengths = self.frontend(padded, lengths)  # features stay fp32 (log of small powers)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            log_probs, output_lengths = self.model(features, frame_lengths)
        return log_probs.float(), output_lengths

    def emission_matrices(self, waveforms: Sequence[torch.Tensor]) -> list[np.ndarray | str]:
        """(T, V) log-probabilities per waveform, in input order, computed in length-sorted
        batches; a batch that fails (e.g. out of memory) gives its waveforms an error string."""
        order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))  # similar lengths: little padding
        results: list[np.ndarray | str] = [""] * len(waveforms)
        for batch in _batches_by_duration(order, [len(w) for w in waveforms], self.sample_rate):
            try:
                log_probs, lengths = self.emissions([waveforms[i] for i in batch])
            except RuntimeError as err:  # report, go on with the other batches
                for i in batch:
                    results[i] = f"recognition failed: {err}"
                continue
            for i, matrix, length in zip(batch, log_probs.cpu().numpy(), lengths.tolist()):
                results[i] = matrix[:length]
        return results

    def transcribe(self, paths: Iterable[str | Path]) -> list[Transcription]:
        """Transcribe files; a file that cannot be read gets ``error`` set, the rest go on.

        Files are read a group at a time (at most FILES_PER_GROUP files, GROUP_SECONDS of
        audio), so memory stays bounded for any number of files; files longer than
        ``LONG_AUDIO_SECONDS`` are cut into windows (:func:`plan_windows`) and stitched.
        """
        paths = [str(p) for p in paths]
        results: list[Transcription | None] = [None] * len(paths)
        # Greedy decoding is too cheap to ship to worker processes.
        workers = self.workers if isinstance(self.decoder, BeamSearchDecoder) else 1
        with ParallelDecoder(self.decoder, workers) as decoder:
            group: list[tuple[int, str, torch.Tensor]] = []
            group_samples = 0
            for index, path in enumerate(paths):
                try:
                    waveform = torch.from_numpy(load_audio(path, self.sample_rate))
                except AudioError as err:
                    results[index] = Transcription(path, error=err.reason)
                    continue
                group.append((index, path, waveform))
                group_samples += len(waveform)
                if len(group) >= FILES_PER_GROUP or group_samples >= GROUP_SECONDS * self.sample_rate:
                    self._recognize_group(group, results, decoder)
                    group, group_samples = [], 0
            if group:
                self._recognize_group(group, results, decoder)
        return results  # type: ignore[return-value]  (every slot is filled)

    def _recognize_group(self, files: list[tuple[int, str, torch.Tensor]], results: list[Transcription | None],
                         decoder: ParallelDecoder) -> None:
        # Pieces: whole short files, or windows of long ones.
        pieces: list[tuple[int, Window]] = []
        waveforms: list[torch.Tensor] = []
        for index, _, waveform in files:
            for window in plan_windows(waveform.numpy(), self.sample_rate, self.window_seconds):
                pieces.append((index, window))
                waveforms.append(waveform[window.start : window.end])
        matrices = self.emission_matrices(waveforms)
        failed = {index: m for (index, _), m in zip(pieces, matrices) if isinstance(m, str)}
        good = [(piece, m) for piece, m in zip(pieces, matrices) if piece[0] not in failed]
        hypotheses = [nbest[0] for nbest in decoder.decode([m for _, m in good])]
        decoded: dict[int, list[tuple[Window, Hypothesis]]] = {index: [] for index, _, _ in files}
        for ((index, window), _), hypothesis in zip(good, hypotheses):
            decoded[index].append((window, hypothesis))
        for index, path, waveform in files:
            duration = len(waveform) / self.sample_rate
            if index in failed:
                results[index] = Transcription(path, error=failed[index])
            elif len(decoded[index]) == 1:
                hypothesis = decoded[index][0][1]
                results[index] = Transcription(path, hypothesis.text, None, duration, hypothesis,
                                               self.timed_words(hypothesis))
            else:
                words = self._stitch(decoded[index])
                results[index] = Transcription(path, " ".join(w.word for w in words), None, duration, None, words)

    def timed_words(self, hypothesis: Hypothesis, offset: float = 0.0) -> tuple[TimedWord, ...]:
        step = self.seconds_per_step
        return tuple(TimedWord(w.word, round(offset + w.start * step, 3), round(offset + w.end * step, 3),
                               round(w.confidence, 4)) for w in hypothesis.words)

    def _stitch(self, windows: list[tuple[Window, Hypothesis]]) -> tuple[TimedWord, ...]:
        """Words of overlapping windows: each window keeps the words centred in its own span."""
        words: list[TimedWord] = []
        for window, hypothesis in sorted(windows, key=lambda item: item[0].start):
            for word in self.timed_words(hypothesis, offset=window.start / self.sample_rate):
                if window.keep_start <= (word.start + word.end) / 2 < window.keep_end:
                    words.append(word)
        return tuple(words)


@dataclass(frozen=True)
class Window:
    start: int  # first sample given to the model
    end: int  # one past the last sample
    keep_start: float  # seconds: the window's own span, whose words it contributes ...
    keep_end: float  # ... [keep_start, keep_end); the rest is context shared with its neighbours


def plan_windows(samples: np.ndarray, sample_rate: int, max_seconds: float = LONG_AUDIO_SECONDS,
                 overlap: float = WINDOW_OVERLAP_SECONDS, search: float = CUT_SEARCH_SECONDS) -> list[Window]:
    """Cut long audio into windows of at most ``max_seconds``, at the quietest moments.

    Each cut goes to the lowest-energy 100 ms within ``search`` seconds before the longest
    allowed span, so cuts fall in pauses when there are any. Windows extend ``overlap``
    seconds past each cut as context; words are assigned to the window owning their centre.
    """
    total = len(samples)
    if total <= max_seconds * sample_rate:
        return [Window(0, total, 0.0, math.inf)]
    hop = sample_rate // 100  # 10 ms energy frames
    frames = samples[: total // hop * hop].reshape(-1, hop)  # (frames, hop), a view
    power = np.einsum("ij,ij->i", frames, frames) / hop  # no squared copy of an hour of audio
    energy = np.convolve(power, np.ones(10) / 10, mode="same")  # 100 ms smoothing
    span = int((max_seconds - 2 * overlap) * sample_rate)  # longest own span: window = span + 2 overlaps
    reach = int(search * sample_rate)
    cuts = [0]
    while total - cuts[-1] > span:
        latest = cuts[-1] + span
        earliest = max(cuts[-1] + span // 2, latest - reach)
        window_frames = energy[earliest // hop : latest // hop]
        cuts.append((earliest // hop + int(window_frames.argmin())) * hop if len(window_frames) else latest)
    cuts.append(total)
    margin = int(overlap * sample_rate)
    windows = []
    for number, (left, right) in enumerate(zip(cuts[:-1], cuts[1:])):
        keep_start = left / sample_rate if number > 0 else 0.0
        keep_end = right / sample_rate if right < total else math.inf
        windows.append(Window(max(0, left - margin), min(total, right + margin), keep_start, keep_end))
    return windows


def _batches_by_duration(order: list[int], lengths: list[int], sample_rate: int):
    """Consecutive runs of ``order`` (indices sorted by length) of at most BATCH_SECONDS padded audio."""
    batch: list[int] = []
    for index in order:
        # Sorted ascending, so the newest item is the longest: padded cost = count * its length.
        if batch and (len(batch) + 1) * lengths[index] / sample_rate > BATCH_SECONDS:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")


def load_model(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> SpeechRecognizer:
    """Load a checkpoint written by ``asr train`` for transcription.

    ``precision``: fp32; bf16 autocast (CPUs with AVX-512 bf16 / AMX, and GPUs); or int8
    dynamic quantisation of the LSTM and linear weights (CPU only).
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, not {precision!r}")
    device = torch.device(device)
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only; use bf16 on a GPU")
    payload = load_checkpoint(path, map_location="cpu")
    try:
        config = from_dict(ExperimentConfig, payload["config"])
        vocabulary = CharVocabulary(payload["vocabulary"])
        frontend = FeatureFrontend(config.features)
        frontend.normalizer.mean.copy_(payload["normalizer"]["mean"])
        frontend.normalizer.std.copy_(payload["normalizer"]["std"])
        model = AcousticModel(config.model, config.features.n_mels, len(vocabulary))
        model.load_state_dict(payload["model"])
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: checkpoint does not match this version of asr ({err})") from err
    if precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear},
                                                       dtype=torch.qint8)
    recognizer = SpeechRecognizer(config, vocabulary, frontend.to(device), model.to(device), device)
    recognizer.precision = precision
    return recognizer


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationReport:
    scores: list[UtteranceScore]  # per utterance, in manifest order
    failed: list[Transcription] = field(default_factory=list)  # utterances whose audio failed
    audio_seconds: float = 0.0

    @property
    def words(self) -> ErrorCounts:
        return sum((s.words for s in self.scores), ErrorCounts(0, 0, 0, 0))

    @property
    def chars(self) -> ErrorCounts:
        return sum((s.chars for s in self.scores), ErrorCounts(0, 0, 0, 0))

    def worst(self, count: int = 10) -> list[UtteranceScore]:
        return sorted(self.scores, key=lambda s: (-s.words.errors, -s.words.rate, s.id))[:count]

    def format(self, worst: int = 10) -> str:
        w, c = self.words, self.chars
        lines = [
            f"utterances: {len(self.scores)} scored, {len(self.failed)} failed; audio {self.audio_seconds / 60:.1f} min",
            f"WER {100 * w.rate:.2f} %  ({w.errors} errors / {w.reference_length} words: "
            f"{w.substitutions} substitutions, {w.deletions} deletions, {w.insertions} insertions)",
            f"CER {100 * c.rate:.2f} %  ({c.errors} errors / {c.reference_length} characters: "
            f"{c.substitutions} substitutions, {c.deletions} deletions, {c.insertions} insertions)",
        ]
        if self.failed:
            lines.append("failed:")
            lines += [f"  {t.path}: {t.error}" for t in self.failed]
        if worst and self.scores:
            lines.append(f"worst {min(worst, len(self.scores))} utterances by word errors:")
            for s in self.worst(worst):
                lines += [
                    f"  {s.id}  ({s.words.errors} word errors, WER {100 * s.words.rate:.0f} %)",
                    f"    REF: {s.reference}",
                    f"    HYP: {s.hypothesis}",
                ]
        return "\n".join(lines)


def evaluate(recognizer: SpeechRecognizer, utterances: Sequence[Utterance]) -> EvaluationReport:
    """Transcribe every utterance of a manifest and score it against its reference."""
    results = recognizer.transcribe([u.audio for u in utterances])
    ok = [(u, r) for u, r in zip(utterances, results) if r.ok]
    scores = score_utterances([u.id for u, _ in ok], [u.text for u, _ in ok], [r.text for _, r in ok])
    return EvaluationReport(scores, [r for r in results if not r.ok], sum(r.duration for _, r in ok))


def evaluate_manifest(recognizer: SpeechRecognizer, manifest: str | Path) -> EvaluationReport:
    return evaluate(recognizer, read_manifest(manifest))


# --------------------------------------------------------------------------- subtitles


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float  # seconds
    text: str


def subtitle_cues(words: Sequence[TimedWord], max_seconds: float = 6.0, max_words: int = 14,
                  pause: float = 0.8) -> list[Cue]:
    """Group timed words into subtitle cues: a new cue after a pause, or when one gets too long."""
    cues: list[Cue] = []
    current: list[TimedWord] = []
    for word in words:
        if current and (word.start - current[-1].end >= pause or word.end - current[0].start > max_seconds
                        or len(current) >= max_words):
            cues.append(Cue(current[0].start, current[-1].end, " ".join(w.word for w in current)))
            current = []
        current.append(word)
    if current:
        cues.append(Cue(current[0].start, current[-1].end, " ".join(w.word for w in current)))
    return cues


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_srt(cues: Sequence[Cue]) -> str:
    blocks = [f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def format_vtt(cues: Sequence[Cue]) -> str:
    blocks = [f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n" for c in cues]
    return "\n".join(["WEBVTT\n", *blocks])
