"""Transcription and evaluation: the Python API behind ``asr transcribe`` and ``asr evaluate``.

    >>> import asr
    >>> model = asr.load_model("exp/run/best.pt")
    >>> for result in model.transcribe(["a.flac", "b.wav"]):
    ...     print(result.path, result.text if result.ok else result.error)
"""

from __future__ import annotations

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
FILES_PER_GROUP = 256  # files read into memory at once


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
        features, frame_lengths = self.frontend(padded, lengths)
        log_probs, output_lengths = self.model(features, frame_lengths)
        return log_probs.float(), output_lengths

    def recognize_waveforms(self, waveforms: Sequence[torch.Tensor]) -> list[Hypothesis]:
        """Decode one batch of mono float waveforms at the model's sample rate."""
        return self.decoder(*self.emissions(waveforms))

    def timed_words(self, hypothesis: Hypothesis) -> tuple[TimedWord, ...]:
        step = self.seconds_per_step
        return tuple(TimedWord(w.word, round(w.start * step, 3), round(w.end * step, 3), round(w.confidence, 4))
                     for w in hypothesis.words)

    def transcribe(self, paths: Iterable[str | Path]) -> list[Transcription]:
        """Transcribe files; a file that cannot be read gets ``error`` set, the rest go on."""
        paths = [str(p) for p in paths]
        results: list[Transcription] = []
        parallel = isinstance(self.decoder, BeamSearchDecoder) and self.workers > 1
        with ParallelDecoder(self.decoder, self.workers if parallel else 1) as beam_pool:
            # Files are read a group at a time so that a long file list never sits in memory whole.
            for start in range(0, len(paths), FILES_PER_GROUP):
                results += self._transcribe_group(paths[start : start + FILES_PER_GROUP], beam_pool if parallel else None)
        return results

    def _transcribe_group(self, paths: list[str], beam_pool: ParallelDecoder | None) -> list[Transcription]:
        results: dict[int, Transcription] = {}
        loaded: list[tuple[int, str, torch.Tensor]] = []
        for index, path in enumerate(paths):
            try:
                loaded.append((index, path, torch.from_numpy(load_audio(path, self.sample_rate))))
            except AudioError as err:
                results[index] = Transcription(path, error=err.reason)
        # Similar lengths together keep padding (wasted LSTM steps) small.
        loaded.sort(key=lambda item: len(item[2]))
        # With a worker pool, beam search waits until the group's emissions are all computed.
        pending: list[tuple[int, str, float, np.ndarray]] = []
        for batch in _batches_by_duration(loaded, self.sample_rate):
            try:
                log_probs, lengths = self.emissions([w for _, _, w in batch])
                if beam_pool is None:
                    hypotheses = self.decoder(log_probs, lengths)
            except RuntimeError as err:  # e.g. out of memory on one huge file: report, go on
                for index, path, _ in batch:
                    results[index] = Transcription(path, error=f"recognition failed: {err}")
                continue
            if beam_pool is not None:
                matrices = log_probs.cpu().numpy()
                pending += [(index, path, len(waveform) / self.sample_rate, matrix[:length])
                            for (index, path, waveform), matrix, length in zip(batch, matrices, lengths.tolist())]
                continue
            for (index, path, waveform), hypothesis in zip(batch, hypotheses):
                results[index] = self._result(path, len(waveform) / self.sample_rate, hypothesis)
        if pending:
            decoded = beam_pool.decode([matrix for *_, matrix in pending])
            for (index, path, duration, _), nbest in zip(pending, decoded):
                results[index] = self._result(path, duration, nbest[0])
        return [results[i] for i in range(len(paths))]

    def _result(self, path: str, duration: float, hypothesis: Hypothesis) -> Transcription:
        return Transcription(path, hypothesis.text, None, duration, hypothesis, self.timed_words(hypothesis))


def _batches_by_duration(items: list[tuple[int, str, torch.Tensor]], sample_rate: int):
    batch: list[tuple[int, str, torch.Tensor]] = []
    for item in items:
        # Sorted ascending, so the newest item is the longest: padded cost = count * its length.
        if batch and (len(batch) + 1) * len(item[2]) / sample_rate > BATCH_SECONDS:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SpeechRecognizer:
    """Load a checkpoint written by ``asr train`` for transcription."""
    device = torch.device(device)
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
    return SpeechRecognizer(config, vocabulary, frontend.to(device), model.to(device), device)


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
