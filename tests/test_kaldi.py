"""Kaldi data directories (asr/data/kaldi.py) read by `asr prepare`, on hand-made directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
from conftest import SAMPLE_RATE, tone_audio

from asr.cli import main
from asr.data.corpora import corpus_layout
from asr.data.kaldi import scan_kaldi


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def corpus(tmp_path: Path) -> Path:
    """speechocean762's shape: train/ data directory, audio under the corpus root's WAVE/."""
    root = tmp_path / "ocean"
    for name, text in (("a", "abc"), ("b", "cab"), ("c", "bca")):
        write(root / "WAVE" / "SPK1" / f"{name}.wav", b"")
        soundfile.write(root / "WAVE" / "SPK1" / f"{name}.wav", tone_audio(text), SAMPLE_RATE)
    absolute = tmp_path / "elsewhere" / "d.flac"
    absolute.parent.mkdir()
    soundfile.write(absolute, tone_audio("ab"), SAMPLE_RATE)
    data = root / "train"
    # speechocean762 separates the id with a tab, other corpora with spaces.
    write(data / "wav.scp", "u1\tWAVE/SPK1/a.wav\nu2  WAVE/SPK1/b.wav\n\nu3 sox WAVE/SPK1/c.wav -t wav - |\n"
                            f"u4 {absolute}\nu5 WAVE/SPK1/missing.wav\nu6 WAVE/SPK1/c.wav\n")
    write(data / "text", "u1\tHELLO, WORLD!\nu2 IT'S  FINE\nu3 PIPED\nu4 ABSOLUTE PATH\nu5 NOWHERE\n".encode()
          + b"u7 \xff\xfe BAD BYTES\n")
    write(data / "utt2spk", "u1 s1\nu2 s1\nu3 s2\nu4 s2\nu5 s2\nu6 s2\n")
    return data


def test_a_data_directory_becomes_utterances(tmp_path):
    data = corpus(tmp_path)
    assert corpus_layout(data) == "kaldi" and corpus_layout(tmp_path) == "librispeech"
    report = scan_kaldi(data)
    by_id = {u.id: u for u in report.utterances}
    assert sorted(by_id) == ["u1", "u2", "u4"]
    assert by_id["u1"].text == "hello world" and by_id["u2"].text == "it's fine"
    assert by_id["u1"].speaker == "s1" and by_id["u4"].speaker == "s2"
    assert by_id["u1"].audio == str((data.parent / "WAVE" / "SPK1" / "a.wav").resolve())  # relative to the corpus root
    assert abs(by_id["u1"].duration - len(tone_audio("abc")) / SAMPLE_RATE) < 1e-3
    problems = "\n".join(report.missing_audio)
    assert "command pipeline" in problems and "missing.wav: file not found" in problems
    assert any("u7" not in line and "text:6" in line for line in report.bad_lines)  # bad UTF-8, named by line
    assert report.missing_transcripts == [str((data.parent / "WAVE" / "SPK1" / "c.wav").resolve())]  # u6: no text


def test_segments_are_cut_into_files_once(tmp_path):
    data = tmp_path / "data"
    long = np.concatenate([tone_audio("abc"), np.zeros(SAMPLE_RATE // 2, np.float32), tone_audio("ba")])
    soundfile.write(tmp_path / "rec.wav", long, SAMPLE_RATE)
    first = len(tone_audio("abc")) / SAMPLE_RATE
    write(data / "wav.scp", f"rec1 {tmp_path / 'rec.wav'}\n")
    write(data / "segments", f"x1 rec1 0 {first}\nx2 rec1 {first + 0.5} {len(long) / SAMPLE_RATE}\n"
                             "x3 rec9 0 1\nx4 rec1 oops\n")
    write(data / "text", "x1 ABC\nx2 BA\nx3 LOST\n")
    cut = tmp_path / "cut"
    report = scan_kaldi(data, segments_dir=cut)
    assert [u.id for u in report.utterances] == ["x1", "x2"]
    x1 = soundfile.read(cut / "x1.flac", dtype="float32")[0]
    assert len(x1) == len(tone_audio("abc")) and np.abs(x1 - tone_audio("abc")).max() < 1e-3  # 16-bit FLAC
    assert any("rec9" in line for line in report.missing_audio)
    assert any("segments:4" in line for line in report.bad_lines)
    stamp = (cut / "x1.flac").stat().st_mtime_ns
    scan_kaldi(data, segments_dir=cut)
    assert (cut / "x1.flac").stat().st_mtime_ns == stamp  # kept: a second prepare does not cut again


def test_asr_prepare_reads_a_data_directory(tmp_path, capsys):
    data = corpus(tmp_path)
    out = tmp_path / "train.jsonl"
    assert main(["prepare", str(data), str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["u1", "u2", "u4"]
    captured = capsys.readouterr()
    assert "3 utterances" in captured.out and "command pipeline" in captured.err
