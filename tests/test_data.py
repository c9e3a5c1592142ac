import json

import numpy as np
import pytest
import soundfile
import torch

from asr.data import (
    BucketBatchSampler,
    ManifestError,
    SpeechDataset,
    Utterance,
    collate,
    ctc_min_frames,
    filter_for_training,
    read_manifest,
    scan_librispeech,
    split_by_speaker,
    write_manifest,
)
from asr.text import CharVocabulary


def librispeech_like_frames(count: int, seed: int = 0) -> list[int]:
    """Durations like LibriSpeech's: most 10-16 s, a tail of short ones (frames at 100/s)."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.normal(12.5, 3.5, count), 1.0, 20.0)
    return (seconds * 100).astype(int).tolist()


def test_bucket_sampler_covers_everything_within_budget_with_little_padding():
    frames = librispeech_like_frames(3000)
    sampler = BucketBatchSampler(frames, max_frames=20_000, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(3000))
    assert all(max(frames[i] for i in b) * len(b) <= 20_000 for b in batches)
    padding = sampler.padding_fraction()
    print(f"padding fraction on LibriSpeech-like lengths: {100 * padding:.2f} %")
    assert padding < 0.10


def test_bucket_sampler_is_deterministic_per_epoch_and_resumable():
    frames = librispeech_like_frames(500)
    a, b = BucketBatchSampler(frames, 20_000, seed=3), BucketBatchSampler(frames, 20_000, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    epoch2 = list(a)
    a.set_epoch(3)
    assert list(a) != epoch2  # batches are reshuffled every epoch
    b.set_epoch(2, start_batch=5)
    assert list(b) == epoch2[5:] and len(b) == len(epoch2) - 5


def test_bucket_sampler_shards_disjointly_across_ranks():
    frames = librispeech_like_frames(400)
    shards = [BucketBatchSampler(frames, 20_000, seed=0, num_replicas=2, rank=r) for r in range(2)]
    first, second = (list(s) for s in shards)
    assert len(first) == len(second)
    assert not {i for b in first for i in b} & {i for b in second for i in b}


def test_bucket_sampler_gives_an_over_budget_utterance_its_own_batch():
    sampler = BucketBatchSampler([100, 5000, 120], max_frames=1000, shuffle=False)
    assert list(sampler) == [[0, 2], [1]]


def test_collate_pads_and_keeps_lengths():
    items = [(0, torch.ones(5), torch.tensor([3, 4])), (1, torch.ones(3), torch.tensor([5, 6, 7]))]
    batch = collate(items)
    assert batch.waveforms.shape == (2, 5) and batch.waveform_lengths.tolist() == [5, 3]
    assert batch.waveforms[1, 3:].abs().sum() == 0
    assert batch.labels.tolist() == [[3, 4, 0], [5, 6, 7]] and batch.label_lengths.tolist() == [2, 3]


def test_manifest_round_trip_and_malformed_lines(tmp_path):
    utts = [Utterance("a-1-0", "/x/a.flac", "hello", 1.5, "a"), Utterance("b-1-0", "/x/b.flac", "", 0.2, "b")]
    write_manifest(tmp_path / "m.jsonl", utts)
    assert read_manifest(tmp_path / "m.jsonl") == utts
    (tmp_path / "bad.jsonl").write_text(json.dumps({"audio": "x.wav"}) + "\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "missing.jsonl")


def test_filter_counts_each_reason():
    vocab = CharVocabulary.english()
    utts = [
        Utterance("ok", "", "ab", 1.0),
        Utterance("long", "", "ab", 40.0),
        Utterance("short", "", "a" * 50, 0.3),  # 0.3 s -> 11 output steps at factor 3, needs 99
        Utterance("empty", "", "", 1.0),
        Utterance("oov", "", "caf\u00e9", 1.0),
    ]
    kept, report = filter_for_training(utts, vocab, subsampling_factor=3, max_duration=30.0)
    assert [u.id for u in kept] == ["ok"]
    assert (report.too_long, report.too_short, report.empty, report.out_of_vocabulary) == (1, 1, 1, 1)
    assert report.unknown_characters == {"\u00e9"}
    assert ctc_min_frames([1, 1, 2]) == 4


def write_librispeech_folder(root):
    """Two speakers; one transcript line without audio, one audio file without transcript."""
    for speaker in ("11", "22"):
        chapter = root / speaker / "100"
        chapter.mkdir(parents=True)
        lines = []
        for utt in range(3):
            utt_id = f"{speaker}-100-{utt:04d}"
            soundfile.write(chapter / f"{utt_id}.flac", np.zeros(1600 * (utt + 1), dtype=np.float32), 16000)
            lines.append(f"{utt_id} HELLO WORLD NUMBER {utt}")
        lines.append(f"{speaker}-100-0099 NO AUDIO FOR THIS ONE")
        (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")
    soundfile.write(root / "11" / "100" / "orphan.flac", np.zeros(1600, dtype=np.float32), 16000)


def test_scan_librispeech_reports_missing_and_splits_by_speaker(tmp_path):
    write_librispeech_folder(tmp_path)
    report = scan_librispeech(tmp_path)
    assert len(report.utterances) == 6
    assert len(report.missing_audio) == 2 and all("0099" in m for m in report.missing_audio)
    assert [p.endswith("orphan.flac") for p in report.missing_transcripts] == [True]
    first = report.utterances[0]
    assert first.speaker == "11" and first.text == "hello world number 0" and first.duration == pytest.approx(0.1)
    train, dev = split_by_speaker(report.utterances, 1, seed=0)
    assert len(train) == len(dev) == 3 and {u.speaker for u in train}.isdisjoint({u.speaker for u in dev})
    train, dev = split_by_speaker(report.utterances, ["22"])
    assert {u.speaker for u in dev} == {"22"}


def test_dataset_returns_waveform_and_labels(tmp_path):
    path = tmp_path / "x.wav"
    soundfile.write(path, np.full(800, 0.5, dtype=np.float32), 16000)
    dataset = SpeechDataset([Utterance("x", str(path), "ab", 0.05)], CharVocabulary.english(), cache_audio=True)
    index, waveform, labels = dataset[0]
    assert index == 0 and waveform.shape == (800,) and labels.tolist() == [3, 4]
    again = dataset[0][1]
    torch.testing.assert_close(waveform, again)  # cached copy gives identical samples
