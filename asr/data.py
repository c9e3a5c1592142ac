"""Manifests, the speech dataset, length-bucketed batching and collation.

A manifest is JSONL, one utterance per line::

    {"id": "84-121123-0000", "audio": "/data/84/121123/84-121123-0000.flac",
     "text": "go do you hear", "duration": 1.47, "speaker": "84"}
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from torch.utils.data import Dataset, Sampler

from asr.audio import AudioError, audio_duration, load_audio
from asr.config import FRAMES_PER_SECOND, SAMPLE_RATE
from asr.errors import AsrError
from asr.text import CharVocabulary, OutOfVocabularyError, normalize_text


class ManifestError(AsrError, ValueError):
    """A manifest file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str  # unique utterance id, e.g. "84-121123-0000"
    audio: str  # path of the audio file
    text: str  # normalised transcript
    duration: float  # seconds
    speaker: str = ""  # speaker id, used to split train/dev by speaker
    speed: float = 1.0  # speed perturbation factor applied on load (0.9 = slower and lower)


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ManifestError(f"cannot read manifest {path}: {err}") from err
    utterances = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            audio = str(entry["audio"])
            utterances.append(
                Utterance(
                    id=str(entry.get("id", Path(audio).stem)),
                    audio=audio,
                    text=str(entry.get("text", "")),
                    duration=float(entry["duration"]),
                    speaker=str(entry.get("speaker", "")),
                    speed=float(entry.get("speed", 1.0)),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{path}:{number}: malformed manifest line ({err!r})") from err
    return utterances


def write_manifest(path: str | Path, utterances: Sequence[Utterance]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for utt in utterances:
            entry = asdict(utt)
            if entry["speed"] == 1.0:
                del entry["speed"]
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- preparation


@dataclass
class PrepareReport:
    utterances: list[Utterance]
    missing_audio: list[str]  # transcript lines whose audio file does not exist
    missing_transcripts: list[str]  # audio files that no transcript mentions
    unreadable: list[str]  # "path: reason" for audio that exists but cannot be read


AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3")


def scan_librispeech(root: str | Path) -> PrepareReport:
    """Build utterances from a folder in the LibriSpeech layout (``*.trans.txt`` beside audio).

    Each transcript line is ``<utt-id> <TEXT>``; the audio is ``<utt-id>.<ext>`` in the same
    folder and the speaker is the part of the id before the first dash.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    utterances: list[Utterance] = []
    missing_audio: list[str] = []
    unreadable: list[str] = []
    mentioned: set[Path] = set()
    for transcript in sorted(root.rglob("*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            candidates = [transcript.parent / f"{utt_id}{ext}" for ext in AUDIO_EXTENSIONS]
            audio = next((c for c in candidates if c.exists()), None)
            if audio is None:
                missing_audio.append(f"{transcript}: {utt_id}")
                continue
            mentioned.add(audio.resolve())
            try:
                duration = audio_duration(audio)
            except AudioError as err:
                unreadable.append(str(err))
                continue
            utterances.append(
                Utterance(
                    id=utt_id,
                    audio=str(audio.resolve()),
                    text=normalize_text(text),
                    duration=round(duration, 4),
                    speaker=utt_id.split("-")[0],
                )
            )
    missing_transcripts = sorted(
        str(p)
        for ext in AUDIO_EXTENSIONS
        for p in root.rglob(f"*{ext}")
        if p.resolve() not in mentioned
    )
    return PrepareReport(utterances, missing_audio, missing_transcripts, unreadable)


def split_by_speaker(
    utterances: Sequence[Utterance], dev_speakers: int | Sequence[str], seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Split into (train, dev) with no speaker in both; ``dev_speakers`` is a count or ids."""
    speakers = sorted({u.speaker for u in utterances})
    if isinstance(dev_speakers, int):
        if not 0 < dev_speakers < len(speakers):
            raise ValueError(f"cannot hold out {dev_speakers} of {len(speakers)} speakers")
        chosen = set(random.Random(seed).sample(speakers, dev_speakers))
    else:
        chosen = set(dev_speakers)
        unknown = chosen - set(speakers)
        if unknown:
            raise ValueError(f"unknown speaker id(s): {sorted(unknown)}")
    train = [u for u in utterances if u.speaker not in chosen]
    dev = [u for u in utterances if u.speaker in chosen]
    return train, dev


# --------------------------------------------------------------------------- dataset


def output_frames(duration: float, subsampling_factor: int) -> int:
    """Acoustic-model output steps for an utterance of ``duration`` seconds."""
    frames = int(duration * FRAMES_PER_SECOND) + 1
    return math.ceil(frames / subsampling_factor)


def ctc_min_frames(labels: Sequence[int]) -> int:
    """CTC needs one step per label plus a blank between each pair of repeated labels."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


@dataclass
class FilterReport:
    kept: int = 0
    too_long: int = 0  # longer than max_duration
    too_short: int = 0  # fewer output steps than CTC needs for the transcript
    empty: int = 0  # empty transcript
    out_of_vocabulary: int = 0  # characters the vocabulary cannot spell
    unknown_characters: set[str] | None = None

    def summary(self) -> str:
        text = (
            f"kept {self.kept}; skipped {self.too_long} too long, {self.too_short} too short for "
            f"their transcript, {self.empty} empty, {self.out_of_vocabulary} with unknown characters"
        )
        if self.unknown_characters:
            text += f" ({''.join(sorted(self.unknown_characters))!r})"
        return text


def filter_for_training(
    utterances: Sequence[Utterance],
    vocabulary: CharVocabulary,
    subsampling_factor: int,
    max_duration: float,
) -> tuple[list[Utterance], FilterReport]:
    """Drop utterances CTC cannot train on, and count each reason."""
    report = FilterReport(unknown_characters=set())
    kept = []
    for utt in utterances:
        if utt.duration > max_duration:
            report.too_long += 1
            continue
        if not utt.text:
            report.empty += 1
            continue
        try:
            labels = vocabulary.encode(utt.text)
        except OutOfVocabularyError as err:
            report.out_of_vocabulary += 1
            report.unknown_characters |= err.unknown
            continue
        if output_frames(utt.duration, subsampling_factor) < ctc_min_frames(labels):
            report.too_short += 1
            continue
        kept.append(utt)
    report.kept = len(kept)
    return kept, report


class SpeechDataset(Dataset):
    """Items are (index, waveform float32 (num_samples,), labels int64 (num_labels,))."""

    def __init__(
        self, utterances: Sequence[Utterance], vocabulary: CharVocabulary, cache_audio: bool = False
    ) -> None:
        self.utterances = list(utterances)
        self.vocabulary = vocabulary
        self.cache_audio = cache_audio
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def _waveform(self, index: int) -> torch.Tensor:
        cached = self._cache.get(index)
        if cached is None:
            samples = self._load(self.utterances[index])
            if not self.cache_audio:
                return samples
            # int16 halves the memory of float32 at no audible cost; cached or not, an
            # utterance then always yields the same samples (exact resume relies on it).
            cached = self._cache[index] = (samples.clamp(-1, 1) * 32767.0).round().to(torch.int16)
        return cached.float() / 32767.0

    @staticmethod
    def _load(utterance: Utterance) -> torch.Tensor:
        samples = load_audio(utterance.audio)
        if utterance.speed != 1.0:
            # Treat the audio as recorded at speed x 16 kHz and resample it to 16 kHz, as
            # `sox speed` does: tempo and pitch change together.
            samples = soxr.resample(samples, SAMPLE_RATE * utterance.speed, SAMPLE_RATE).astype(np.float32)
        return torch.from_numpy(samples)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """None (after a warning naming the file) if the audio cannot be read: one bad file
        must not end a training run; collate drops it from the batch."""
        labels = torch.tensor(self.vocabulary.encode(self.utterances[index].text), dtype=torch.long)
        try:
            return index, self._waveform(index), labels
        except AudioError as err:
            warnings.warn(f"skipping utterance {self.utterances[index].id}: {err}", stacklevel=1)
            return None


@dataclass
class Batch:
    indices: list[int]  # dataset indices of the utterances in this batch
    waveforms: torch.Tensor  # (B, max_samples) float32, zero padded
    waveform_lengths: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B, max_labels) int64, zero (blank) padded
    label_lengths: torch.Tensor  # (B,) int64

    def pin_memory(self) -> Batch:
        for name in ("waveforms", "waveform_lengths", "labels", "label_lengths"):
            setattr(self, name, getattr(self, name).pin_memory())
        return self


def collate(items: Sequence[tuple[int, torch.Tensor, torch.Tensor] | None]) -> Batch:
    """Pad a list of dataset items into a batch; unreadable items (None) are left out."""
    items = [item for item in items if item is not None]
    if not items:
        empty = torch.zeros(0, 0)
        return Batch([], empty, torch.zeros(0, dtype=torch.long), empty.long(), torch.zeros(0, dtype=torch.long))
    indices, waveforms, labels = zip(*items)
    return Batch(
        indices=list(indices),
        waveforms=torch.nn.utils.rnn.pad_sequence(list(waveforms), batch_first=True),
        waveform_lengths=torch.tensor([len(w) for w in waveforms], dtype=torch.long),
        labels=torch.nn.utils.rnn.pad_sequence(list(labels), batch_first=True),
        label_lengths=torch.tensor([len(l) for l in labels], dtype=torch.long),
    )


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, filled up to a budget of padded frames.

    Utterances are sorted by length (with a small per-epoch jitter so that batch membership
    varies between epochs), cut greedily into batches whose ``batch_size * longest`` stays
    within ``max_frames`` (an utterance over the budget gets a batch of its own), and the
    batch order is shuffled. Everything depends only on ``seed`` and the epoch, so a resumed
    run sees the same batches.

    With ``num_replicas > 1`` (DDP) every rank builds the same global list and takes every
    ``num_replicas``-th batch, each rank the same count. ``start_batch`` counts *global*
    batches already trained on, so a run can resume with a different number of ranks.
    """

    def __init__(
        self,
        frame_counts: Sequence[int],
        max_frames: int,
        shuffle: bool = True,
        seed: int = 0,
        length_jitter: float = 0.02,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.frame_counts = np.asarray(frame_counts, dtype=np.int64)
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.seed = seed
        self.length_jitter = length_jitter if shuffle else 0.0
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches over all ranks, in training order."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        jitter = rng.uniform(-self.length_jitter, self.length_jitter, len(self.frame_counts))
        order = np.argsort(self.frame_counts * (1.0 + jitter), kind="stable")
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in order.tolist():
            frames = int(self.frame_counts[index])
            if current and max(longest, frames) * (len(current) + 1) > self.max_frames:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, frames)
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        self._cache = (self.epoch, batches)
        return batches

    def _remaining(self) -> list[list[int]]:
        remaining = self.global_batches()[self.start_batch :]
        usable = len(remaining) - len(remaining) % self.num_replicas  # equal counts keep DDP in lockstep
        return remaining[:usable]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._remaining()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self._remaining()) // self.num_replicas

    def padding_fraction(self) -> float:
        """Fraction of padded frames in this epoch's batches (what the LSTM computes in vain)."""
        padded = real = 0
        for batch in self.global_batches():
            counts = self.frame_counts[batch]
            padded += int(counts.max()) * len(batch)
            real += int(counts.sum())
        return 1.0 - real / padded if padded else 0.0


def frame_counts(utterances: Sequence[Utterance]) -> list[int]:
    return [int(u.duration * FRAMES_PER_SECOND) + 1 for u in utterances]
