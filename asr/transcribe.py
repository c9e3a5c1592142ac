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

import torch

from asr.audio import AudioError, load_audio
from asr.checkpoint import CheckpointError, load_checkpoint
from asr.config import ExperimentConfig, from_dict
from asr.data import Utterance, read_manifest
from asr.decoding import Decoder, GreedyDecoder, Hypothesis
from asr.features import FeatureFrontend
from asr.metrics import ErrorCounts, UtteranceScore, score_utterances
from asr.model import AcousticModel
from asr.text import CharVocabulary

# Audio seconds per inference batch: bounds memory while keeping the LSTM's matrices large.
BATCH_SECONDS = 120.0
FILES_PER_GROUP = 256  # files read into memory at once


@dataclass(frozen=True)
class Transcription:
    path: str  # the input file
    text: str = ""  # the transcript ("" when the file failed)
    error: str | None = None  # why the file could not be transcribed, else None
    duration: float = 0.0  # seconds of audio
    hypothesis: Hypothesis | None = None  # decoder output, with token frames and score

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

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @torch.inference_mode()
    def recognize_waveforms(self, waveforms: Sequence[torch.Tensor]) -> list[Hypothesis]:
        """Decode one batch of mono float waveforms at the model's sample rate."""
        lengths = torch.tensor([len(w) for w in waveforms], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(list(waveforms), batch_first=True).to(self.device)  # (B, S)
        features, frame_lengths = self.frontend(padded, lengths)
        log_probs, output_lengths = self.model(features, frame_lengths)
        return self.decoder(log_probs, output_lengths)

    def transcribe(self, paths: Iterable[str | Path]) -> list[Transcription]:
        """Transcribe files; a file that cannot be read gets ``error`` set, the rest go on."""
        paths = [str(p) for p in paths]
        results: list[Transcription] = []
        # Files are read a group at a time so that a long file list never sits in memory whole.
        for start in range(0, len(paths), FILES_PER_GROUP):
            results += self._transcribe_group(paths[start : start + FILES_PER_GROUP])
        return results

    def _transcribe_group(self, paths: list[str]) -> list[Transcription]:
        results: dict[int, Transcription] = {}
        loaded: list[tuple[int, str, torch.Tensor]] = []
        for index, path in enumerate(paths):
            try:
                loaded.append((index, path, torch.from_numpy(load_audio(path, self.sample_rate))))
            except AudioError as err:
                results[index] = Transcription(path, error=err.reason)
        # Similar lengths together keep padding (wasted LSTM steps) small.
        loaded.sort(key=lambda item: len(item[2]))
        for batch in _batches_by_duration(loaded, self.sample_rate):
            try:
                hypotheses = self.recognize_waveforms([w for _, _, w in batch])
            except RuntimeError as err:  # e.g. out of memory on one huge file: report, go on
                for index, path, _ in batch:
                    results[index] = Transcription(path, error=f"recognition failed: {err}")
                continue
            for (index, path, waveform), hypothesis in zip(batch, hypotheses):
                results[index] = Transcription(path, hypothesis.text, None, len(waveform) / self.sample_rate, hypothesis)
        return [results[i] for i in range(len(paths))]


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
