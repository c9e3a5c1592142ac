"""Training's data: the manifests read, normalised and filtered, the vocabulary, the bucketed
loaders, the normalisation statistics and the espeak-ng phone labels of the phone CTC loss."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.config import ConfigError, ExperimentConfig
from asr.data.dataset import (
    BucketBatchSampler,
    JoinedUtterance,
    SpeechDataset,
    TrainingItem,
    collate,
    filter_for_training,
    frame_counts,
    join_utterances,
    parts_of,
)
from asr.data.manifest import ManifestError, Utterance, read_manifest, read_manifest_lines
from asr.data.phones import espeak_voice, phonemize
from asr.data.text import CharVocabulary, normalize_text
from asr.model.features import FeatureFrontend, StatsAccumulator
from asr.training.distributed import Distributed
from asr.training.logs import log


@dataclass
class TrainingData:
    """What one run trains and validates on."""

    train_loader: DataLoader
    train_sampler: BucketBatchSampler  # this rank's share of each epoch's batches
    valid_loader: DataLoader | None  # rank 0 only, and only with data.valid_manifest
    phone_labels: list[torch.Tensor] | None  # per training utterance, for the phone CTC loss
    vocabulary: CharVocabulary  # the output characters


def build_data(
    config: ExperimentConfig, vocabulary: CharVocabulary | None, out_dir: Path, dist_info: Distributed,
    device: torch.device, say=log,
) -> TrainingData:
    """The manifests read, normalised, filtered and joined, their phone labels, and the loaders
    over them; ``vocabulary`` None: the config's (:func:`run_vocabulary`), else a resumed run's."""
    train_utts, valid_utts, vocabulary = load_utterances(config, vocabulary, say)
    data = config.data
    train_utts = join_utterances(train_utts, data.join_fraction, data.join_max_utterances, data.join_max_gap,
                                 data.max_duration, config.train.seed)
    phone_labels = training_phone_labels(train_utts, config, out_dir, dist_info, say)  # early: needs espeak-ng
    rate = config.features.sample_rate  # as inference loads audio
    train_set = SpeechDataset(train_utts, vocabulary, cache_audio=config.data.cache_audio, sample_rate=rate)
    train_loader, train_sampler = make_loader(train_set, config, shuffle=True, device=device, dist_info=dist_info)
    valid_loader = None
    if valid_utts and dist_info.is_main:
        valid_loader, _ = make_loader(SpeechDataset(valid_utts, vocabulary, sample_rate=rate), config, shuffle=False,
                                      device=device)
    joins = sum(isinstance(item, JoinedUtterance) for item in train_utts)
    say(f"train: {len(train_utts)} utterances{f' ({joins} of them joins)' if joins else ''}, "
        f"{sum(u.duration for u in train_utts) / 3600:.2f} h, "
        f"{len(train_sampler)} batches/epoch on each of {dist_info.world_size} rank(s), "
        f"padding {100 * train_sampler.padding_fraction():.1f} % of frames")
    return TrainingData(train_loader, train_sampler, valid_loader, phone_labels, vocabulary)


def load_utterances(
    config: ExperimentConfig, vocabulary: CharVocabulary | None = None, say=log
) -> tuple[list[Utterance], list[Utterance], CharVocabulary]:
    """Read both manifests, normalise their transcripts by data.language's rules, settle the
    vocabulary (``vocabulary`` None: :func:`run_vocabulary`) and drop what CTC cannot train on,
    reporting every reason. A validation transcript a vocabulary from the data cannot spell stops the run."""
    factor, language = config.model.subsampling_factor, config.data.language
    if not config.data.train_manifest:
        raise ConfigError("data.train_manifest is not set: give the training manifest (JSONL, `asr prepare`)")
    train_all = normalized(read_manifest(config.data.train_manifest), language)
    extras = [(extra, normalized(read_manifest(extra.manifest), language)) for extra in config.data.extra_train]
    every_train = train_all + [u for _, utterances in extras for u in utterances]
    if vocabulary is None:
        vocabulary = run_vocabulary(config, every_train, say)
    elif config.data.vocabulary_from_data:
        say(f"vocabulary: the resumed run's {len(vocabulary) - 1} characters {''.join(vocabulary.tokens[1:])!r}")
    train, report = filter_for_training(train_all, vocabulary, factor, config.data.max_duration, config.features)
    say(f"train {config.data.train_manifest}: {report.summary()}")
    if not train:
        raise ManifestError(f"{config.data.train_manifest}: no usable training utterances ({report.summary()})")
    for index, (extra, utterances) in enumerate(extras, start=1):
        kept, report = filter_for_training(utterances, vocabulary, factor, config.data.max_duration, config.features)
        mixed = weighted(kept, extra.weight, config.train.seed + index)
        say(f"train {extra.manifest} (weight {extra.weight:g}): {report.summary()}; {len(mixed)} utterances "
            f"({sum(u.duration for u in mixed) / 3600:.2f} h) per epoch")
        train += mixed
    valid: list[Utterance] = []
    if config.data.valid_manifest:
        reading = read_manifest_lines(config.data.valid_manifest)
        if reading.problems:
            read_manifest(config.data.valid_manifest)  # raises ManifestError naming the first bad line
        valid_all = normalized(reading.utterances, language)
        if config.data.vocabulary_from_data:
            check_spelled(valid_all, reading.line_numbers, vocabulary, every_train, config)
        # Validation keeps long utterances; it only needs transcripts the vocabulary can spell.
        valid, report = filter_for_training(valid_all, vocabulary, factor, math.inf, config.features)
        say(f"valid {config.data.valid_manifest}: {report.summary()}")
        seen = {u.audio for item in train for u in parts_of(item)}
        leaked = [u.audio for u in valid if u.audio in seen]
        if leaked:  # e.g. an extra corpus holding the dev speakers: validation would flatter the model
            say(f"warning: {len(leaked)} validation utterance(s) are also training data (e.g. {leaked[0]})")
    return train, valid, vocabulary


def weighted(utterances: Sequence[Utterance], weight: float, seed: int) -> list[Utterance]:
    """A corpus as data.extra_train's ``weight`` mixes it in: every utterance int(weight) times,
    and a fixed random share (the weight's fraction) of them once more, drawn with ``seed``."""
    whole, fraction = divmod(weight, 1.0)
    extra = random.Random(seed).sample(list(utterances), round(fraction * len(utterances)))
    return list(utterances) * int(whole) + extra


def normalized(utterances: Sequence[Utterance], language: str) -> list[Utterance]:
    """The utterances with their transcripts normalised (``asr prepare`` writes them so already:
    then they are the same objects)."""
    normal = [normalize_text(utterance.text, language) for utterance in utterances]
    return [u if text == u.text else replace(u, text=text) for u, text in zip(utterances, normal)]


def run_vocabulary(config: ExperimentConfig, train: Sequence[Utterance], say=log) -> CharVocabulary:
    """data.vocabulary: English's characters, or those of the (normalised) training transcripts
    seen at least data.min_token_count times; the rarer ones are reported, and
    filter_for_training then skips the utterances that hold them."""
    if not config.data.vocabulary_from_data:
        return CharVocabulary.english()
    counts = character_counts(train)
    least = config.data.min_token_count
    vocabulary = CharVocabulary.from_counts(counts, least)
    say(f"vocabulary from {config.data.train_manifest} (data.language {config.data.language}): "
        f"{len(vocabulary) - 1} characters {''.join(vocabulary.tokens[1:])!r}")
    rare = sorted((char for char in counts if counts[char] < least and char != " "), key=lambda c: (-counts[c], c))
    if rare:
        say(f"rare characters dropped (seen fewer than data.min_token_count={least} times), the training utterances "
            f"that hold them skipped: " + ", ".join(f"{char!r} ({counts[char]}x)" for char in rare))
    return vocabulary


def character_counts(utterances: Sequence[Utterance]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for utterance in utterances:
        counts.update(utterance.text)
    return counts


def check_spelled(valid: Sequence[Utterance], line_numbers: Sequence[int], vocabulary: CharVocabulary,
                  train: Sequence[Utterance], config: ExperimentConfig) -> None:
    """Refuse at once a validation transcript that a vocabulary built from the training data
    cannot spell: the model could never get it right, and every epoch's figures would hide that."""
    unspelled = [(number, u) for number, u in zip(line_numbers, valid) if vocabulary.unknown_characters(u.text)]
    if not unspelled:
        return
    number, first = unspelled[0]
    counts = character_counts(train)
    unknown = ", ".join(f"{char!r} ({counts[char]}x in training)" for char in sorted(vocabulary.unknown_characters(
        first.text)))
    more = f" (and {len(unspelled) - 1} more lines)" if len(unspelled) > 1 else ""
    raise ManifestError(
        f"{config.data.valid_manifest}:{number}: the transcript of {first.id}, {first.text!r}, holds {unknown}, "
        f"outside the vocabulary built from {config.data.train_manifest} (characters seen at least "
        f"data.min_token_count={config.data.min_token_count} times){more}: lower data.min_token_count, add training "
        "data with those characters, or fix or remove the line"
    )


def make_loader(
    dataset: SpeechDataset,
    config: ExperimentConfig,
    shuffle: bool,
    device: torch.device,
    dist_info: Distributed | None = None,
) -> tuple[DataLoader, BucketBatchSampler]:
    """Batches of about ``data.max_frames_per_batch`` frames of similar lengths (this rank's share)."""
    dist_info = dist_info or Distributed()
    sampler = BucketBatchSampler(
        frame_counts(dataset.utterances, config.features),
        config.data.max_frames_per_batch,
        shuffle=shuffle,
        seed=config.train.seed,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0,
        # A private generator keeps the global RNG untouched, which exact resume relies on.
        generator=torch.Generator().manual_seed(config.train.seed),
    )
    return loader, sampler


def estimate_normalizer(
    frontend: FeatureFrontend, dataset: SpeechDataset, config: ExperimentConfig, device: torch.device
) -> None:
    """Fit the global mean/std on (a seeded subset of) the training audio, after any per-utterance mean."""
    count = min(len(dataset), config.data.stats_utterances)
    chosen = sorted(random.Random(config.train.seed).sample(range(len(dataset)), count))
    stats = StatsAccumulator(config.features.n_mels)
    for start in tqdm(range(0, count, 16), desc="normalisation stats", leave=False, disable=None):
        batch = collate([dataset[i] for i in chosen[start : start + 16]])
        if not batch.indices:  # every file unreadable (each one reported)
            continue
        features, lengths = frontend.unnormalized(batch.waveforms.to(device), batch.waveform_lengths.to(device))
        stats.add(features, lengths)
    if stats.count == 0:
        reasons = [dataset.failures[i] for i in chosen if i in dataset.failures]
        raise ManifestError(
            f"{config.data.train_manifest}: none of the {count} training utterances read for the normalisation "
            f"statistics could be used ({len(reasons)} unreadable); the first: " + "; ".join(reasons[:3])
        )
    mean, std = stats.result()
    frontend.normalizer.mean.copy_(mean)
    frontend.normalizer.std.copy_(std)


def training_phone_labels(
    utterances: Sequence[TrainingItem], config: ExperimentConfig, out_dir: Path, dist_info: Distributed, say=log
) -> list[torch.Tensor] | None:
    """espeak-ng phone labels for each training utterance, or None when the phone loss is off.
    Rank 0 keeps espeak-ng's output in out_dir/phones.json for resumed runs."""
    if config.model.phone_ctc_weight <= 0:
        return None
    texts = [part.text for item in utterances for part in parts_of(item)]
    language = config.data.language
    by_text = phonemize(texts, out_dir / "phones.json" if dist_info.is_main else None, language)
    labels = [torch.tensor([phone for part in parts_of(item) for phone in by_text[part.text]], dtype=torch.long)
              for item in utterances]
    phones, chars = sum(len(l) for l in labels), sum(len(t) for t in texts)
    say(f"phone CTC (weight {config.model.phone_ctc_weight}, layer {config.model.phone_ctc_layer}): "
        f"{len(by_text)} transcripts phonemised with espeak-ng (voice {espeak_voice(language)}), "
        f"{phones / max(1, chars):.2f} phones per character")
    return labels
