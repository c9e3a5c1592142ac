import json

import numpy as np
import pytest
import soundfile
import torch

from asr.data.dataset import BucketBatchSampler, SpeechDataset, collate, ctc_min_frames, filter_for_training
from asr.data.manifest import ManifestError, Utterance, read_manifest
from asr.data.librispeech import scan_librispeech
from asr.data.manifest import split_by_speaker, write_manifest
from asr.data.text import CharVocabulary


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


def test_bad_manifest_lines_are_reported_by_line_and_the_rest_kept(tmp_path):
    from asr.data.manifest import read_manifest_lines

    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.zeros(8000, dtype=np.float32), 16000)
    good = {"id": "ok", "audio": str(audio), "text": "hi", "duration": 0.5}
    lines = [
        json.dumps(good).encode(),
        b'{"id": "broken", "audio": ',  # 2: malformed JSON
        json.dumps({"id": "no-text", "audio": str(audio), "duration": 0.5}).encode(),  # 3
        b'{"id": "latin", "audio": "x.wav", "text": "caf\xe9", "duration": 1}',  # 4: Latin-1, not UTF-8
        b"",  # 5: blank lines are fine
        json.dumps({"id": "no-duration", "audio": str(audio), "text": "hi"}).encode(),  # 6: read from the audio
        json.dumps({"id": "neg", "audio": str(audio), "text": "hi", "duration": -1}).encode(),  # 7
        json.dumps({"id": "gone", "audio": str(tmp_path / "gone.wav"), "text": "hi"}).encode(),  # 8: no duration, no file
        b"[1, 2]",  # 9: not an object
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    reading = read_manifest_lines(tmp_path / "m.jsonl")
    assert [u.id for u in reading.utterances] == ["ok", "no-duration"] and reading.line_numbers == [1, 6]
    assert reading.utterances[1].duration == pytest.approx(0.5)
    reasons = {p.line: p.reason for p in reading.problems}
    assert sorted(reasons) == [2, 3, 4, 7, 8, 9]
    assert "malformed JSON" in reasons[2] and "'text'" in reasons[3] and "not valid UTF-8 (byte 0xe9" in reasons[4]
    assert "duration" in reasons[7] and "file not found" in reasons[8] and "JSON object" in reasons[9]
    assert all(str(p).startswith(f"{tmp_path / 'm.jsonl'}:{p.line}: ") for p in reading.problems)
    # The strict reader (training) stops at the first bad line, naming it and counting the rest.
    with pytest.raises(ManifestError, match=r"m.jsonl:2: malformed JSON.*and 5 more bad lines"):
        read_manifest(tmp_path / "m.jsonl")


def test_scan_librispeech_skips_a_transcript_line_that_is_not_utf8(tmp_path):
    write_librispeech_folder(tmp_path)
    transcript = tmp_path / "11" / "100" / "11-100.trans.txt"
    lines = transcript.read_bytes().splitlines()
    lines[1] = b"11-100-0001 CAF\xc9 NOIR"  # Latin-1
    transcript.write_bytes(b"\n".join(lines) + b"\n")
    report = scan_librispeech(tmp_path)
    assert len(report.utterances) == 5  # the other speaker's and this file's other lines
    assert report.bad_lines == [f"{transcript}:2: not valid UTF-8 (byte 0xc9 at column 16)"]


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


def test_joins_keep_every_utterance_once_within_speaker_and_duration():
    from asr.data.dataset import JoinedUtterance, join_utterances, parts_of

    utterances = [Utterance(f"{s}-{i}", f"{s}-{i}.wav", f"word {i}", 1.0 + i % 3, speaker=s)
                  for s in ("a", "b") for i in range(20)]
    items = join_utterances(utterances, fraction=0.6, max_parts=3, max_gap=0.5, max_duration=6.0, seed=7)
    assert items == join_utterances(utterances, 0.6, 3, 0.5, 6.0, seed=7)  # resumable: depends on the seed only
    assert sorted(p.id for item in items for p in parts_of(item)) == sorted(u.id for u in utterances)
    joins = [item for item in items if isinstance(item, JoinedUtterance)]
    assert joins and len(joins) < len(items)
    for join in joins:
        assert 2 <= len(join.parts) <= 3 and len({p.speaker for p in join.parts}) == 1
        assert len(join.gaps) == len(join.parts) and all(0 <= g <= 0.5 for g in join.gaps)
        assert join.duration <= 6.0
        assert join.text == " ".join(p.text for p in join.parts)
    assert join_utterances(utterances, 0.0, 3, 0.5, 6.0, seed=7) == utterances


def test_a_joined_item_is_its_parts_with_silence_before_each(tmp_path):
    import soundfile

    from asr.data.dataset import JoinedUtterance

    rate = 16_000
    tones = []
    for k in range(2):
        samples = (0.5 * np.sin(np.arange(rate // 2) * 0.05 * (k + 1))).astype(np.float32)
        soundfile.write(tmp_path / f"{k}.wav", samples, rate, subtype="FLOAT")
        tones.append(samples)
    parts = tuple(Utterance(str(k), str(tmp_path / f"{k}.wav"), "ab"[k], 0.5) for k in range(2))
    join = JoinedUtterance(parts, (0.25, 0.125))
    vocabulary = CharVocabulary.english()
    index, waveform, labels = SpeechDataset([join], vocabulary)[0]
    expected = np.concatenate([np.zeros(4000), tones[0], np.zeros(2000), tones[1]]).astype(np.float32)
    assert torch.equal(waveform, torch.from_numpy(expected))
    assert vocabulary.decode(labels.tolist()) == "a b"
