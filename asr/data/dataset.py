"""Manifests, the speech dataset, length-bucketed batching and collation.

A manifest is JSONL, one utterance per line::

    {"id": "84-121123-0000", "audio": "/data/84/121123/84-121123-0000.flac",
     "text": "go do you hear", "duration": 1.47, "speaker": "84"}
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import soxr
import torch
from torch.utils.data import Dataset, Sampler

from asr.data.audio import AudioError, load_audio
from asr.config import FeatureConfig

from asr.data.manifest import Utterance
from asr.data.text import CharVocabulary, OutOfVocabularyError


# --------------------------------------------------------------------------- dataset


def output_frames(duration: float, subsampling_factor: int, features: FeatureConfig = FeatureConfig()) -> int:
    """Acoustic-model output steps for an utterance of ``duration`` seconds."""
    return math.ceil(features.frames_for_duration(duration) / subsampling_factor)


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
    features: FeatureConfig = FeatureConfig(),  # the run's frame rate
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
        if output_frames(utt.duration, subsampling_factor, features) < ctc_min_frames(labels):
            report.too_short += 1
            continue
        kept.append(utt)
    report.kept = len(kept)
    return kept, report


@dataclass(frozen=True)
class JoinedUtterance:
    """Several utterances of one speaker trained as one input, with silence before and
    between them (``gaps[0]`` leads, ``gaps[i]`` precedes ``parts[i]``)."""

    parts: tuple[Utterance, ...]  # in the order they are heard
    gaps: tuple[float, ...]  # seconds of silence before each part
    speed: float = 1.0  # each part carries its own speed; the join adds none

    @property
    def id(self) -> str:
        return "+".join(part.id for part in self.parts)

    @property
    def text(self) -> str:
        return " ".join(part.text for part in self.parts)

    @property
    def duration(self) -> float:
        return sum(part.duration for part in self.parts) + sum(self.gaps)

    @property
    def speaker(self) -> str:
        return self.parts[0].speaker


TrainingItem = Utterance | JoinedUtterance


def parts_of(item: TrainingItem) -> tuple[Utterance, ...]:
    return item.parts if isinstance(item, JoinedUtterance) else (item,)


def join_utterances(utterances: Sequence[Utterance], fraction: float, max_parts: int, max_gap: float,
                    max_duration: float, seed: int) -> list[TrainingItem]:
    """Group about ``fraction`` of the utterances into joins of 2..``max_parts`` utterances
    of the same speaker (each join at most ``max_duration`` seconds); the rest stay single.

    Every utterance appears exactly once, so an epoch holds the same speech as without joins.
    The grouping depends only on ``seed``: a resumed run trains on the same items.
    """
    if fraction <= 0:
        return list(utterances)
    rng = random.Random(seed)
    by_speaker: dict[str, list[Utterance]] = {}
    for utterance in utterances:
        by_speaker.setdefault(utterance.speaker, []).append(utterance)
    items: list[TrainingItem] = []
    for speaker in sorted(by_speaker):
        pending = by_speaker[speaker][:]
        rng.shuffle(pending)
        while pending:
            first = pending.pop()
            if not pending or rng.random() >= fraction:
                items.append(first)
                continue
            parts, gaps, target = [first], [rng.uniform(0, max_gap)], rng.randint(2, max_parts)
            while pending and len(parts) < target:
                gap = rng.uniform(0, max_gap)
                if sum(p.duration for p in parts) + sum(gaps) + gap + pending[-1].duration > max_duration:
                    break
                parts.append(pending.pop())
                gaps.append(gap)
            items.append(JoinedUtterance(tuple(parts), tuple(gaps)) if len(parts) > 1 else first)
    return items


class SpeechDataset(Dataset):
    """Items are (index, waveform float32 (num_samples,), labels int64 (num_labels,)), the
    waveform at ``sample_rate`` (the run's features.sample_rate, as inference loads it)."""

    def __init__(
        self,
        utterances: Sequence[TrainingItem],
        vocabulary: CharVocabulary,
        cache_audio: bool = False,
        sample_rate: int = FeatureConfig().sample_rate,
    ) -> None:
        self.utterances = list(utterances)
        self.vocabulary = vocabulary
        self.cache_audio = cache_audio
        self.sample_rate = sample_rate
        self._cache: dict[int, torch.Tensor] = {}
        # Why each unreadable utterance failed, by index (filled in the process that loads it).
        self.failures: dict[int, str] = {}

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

    def _load(self, utterance: TrainingItem) -> torch.Tensor:
        rate = self.sample_rate
        if isinstance(utterance, JoinedUtterance):
            pieces = []
            for gap, part in zip(utterance.gaps, utterance.parts):
                pieces += [torch.zeros(round(gap * rate)), self._load(part)]
            return torch.cat(pieces)
        samples = load_audio(utterance.audio, rate)
        if utterance.speed != 1.0:
            # Treat the audio as recorded at speed x the rate and resample it to the rate, as
            # `sox speed` does: tempo and pitch change together.
            samples = soxr.resample(samples, rate * utterance.speed, rate).astype(np.float32)
        return torch.from_numpy(samples)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """None (after a warning naming the file) if the audio cannot be read: one bad file
        must not end a training run; collate drops it from the batch."""
        labels = torch.tensor(self.vocabulary.encode(self.utterances[index].text), dtype=torch.long)
        try:
            return index, self._waveform(index), labels
        except AudioError as err:
            self.failures[index] = str(err)
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


def frame_counts(utterances: Sequence[TrainingItem], features: FeatureConfig = FeatureConfig()) -> list[int]:
    """Feature frames of each utterance at the run's frame rate (the batches' padded-frame budget)."""
    return [features.frames_for_duration(u.duration) for u in utterances]
