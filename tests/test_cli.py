import json
import subprocess
import sys

import numpy as np
import soundfile

from asr.cli import main
from asr.data import write_manifest, read_manifest

from conftest import tiny_config  # noqa: F401  (fixtures come from conftest)


def make_bad_files(folder):
    folder.mkdir(exist_ok=True)
    (folder / "text.wav").write_text("definitely not audio")
    (folder / "empty.flac").write_bytes(b"")
    soundfile.write(folder / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    return [folder / "missing.wav", folder / "text.wav", folder / "empty.flac", folder / "zero.wav"]


def test_transcribe_reports_bad_files_and_still_transcribes_good_ones(trained_checkpoint, tone_corpus, tmp_path, capsys):
    good = sorted(tone_corpus["root"].glob("valid/*.flac"))[:2]
    bad = make_bad_files(tmp_path)
    files = [good[0], *bad, good[1]]
    code = main(["transcribe", str(trained_checkpoint), *map(str, files), "--format", "json"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert [r["path"] for r in records] == [str(f) for f in files]  # input order kept
    assert "error" not in records[0] and "error" not in records[-1]
    assert records[0]["duration"] > 0
    reasons = {r["path"].split("/")[-1]: r["error"] for r in records[1:-1]}
    assert reasons["missing.wav"] == "file not found"
    assert "unreadable" in reasons["text.wav"] and "unreadable" in reasons["empty.flac"]
    assert "zero length" in reasons["zero.wav"]
    assert all(f"error: {f}" in captured.err for f in bad)


def test_transcribe_text_format_and_success_exit_code(trained_checkpoint, tone_corpus, capsys):
    good = sorted(tone_corpus["root"].glob("valid/*.flac"))[:2]
    assert main(["transcribe", str(trained_checkpoint), *map(str, good)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(g) for g in good]


def test_evaluate_prints_counts_and_writes_report(trained_checkpoint, tone_corpus, tmp_path, capsys):
    utterances = read_manifest(tone_corpus["valid"])
    broken = utterances[0].__class__("broken", str(tmp_path / "nope.wav"), "a", 1.0, "x")
    write_manifest(tmp_path / "eval.jsonl", [*utterances, broken])
    report = tmp_path / "report.txt"
    code = main(["evaluate", str(trained_checkpoint), str(tmp_path / "eval.jsonl"), "--report", str(report), "--worst", "2",
                 "--utterances", str(tmp_path / "utts.jsonl")])
    out = capsys.readouterr().out
    assert code == 1  # one utterance failed
    for needle in ("WER", "CER", "substitutions", "deletions", "insertions", "worst 2 utterances", "REF:", "HYP:",
                   "nope.wav: file not found", f"{len(utterances)} scored, 1 failed"):
        assert needle in out
    assert report.read_text().strip() == out.strip()
    per_utterance = [json.loads(line) for line in open(tmp_path / "utts.jsonl")]
    assert [r["id"] for r in per_utterance] == [u.id for u in utterances]
    assert all(r["word"]["length"] == len(r["reference"].split()) for r in per_utterance)


def test_bad_checkpoint_and_config_give_clear_errors(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["transcribe", str(tmp_path / "x.pt"), "a.wav"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("model:\n  layers: 3\n")
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_prepare_and_train_from_the_command_line(tone_corpus, tmp_path, capsys):
    # Re-lay the tone corpus out as LibriSpeech (speaker/chapter/ with a .trans.txt).
    for speaker, manifest in (("1", tone_corpus["train"]), ("2", tone_corpus["valid"])):
        chapter = tmp_path / "corpus" / speaker / "0"
        chapter.mkdir(parents=True)
        lines = []
        for utt in read_manifest(manifest):
            (chapter / f"{utt.id}.flac").write_bytes(open(utt.audio, "rb").read())
            lines.append(f"{utt.id} {utt.text.upper()}")
        (chapter / f"{speaker}-0.trans.txt").write_text("\n".join(lines) + "\n")
    code = main(["prepare", str(tmp_path / "corpus"), str(tmp_path / "train.jsonl"),
                 "--dev-out", str(tmp_path / "dev.jsonl"), "--dev-speaker-ids", "2"])
    assert code == 0
    assert {u.speaker for u in read_manifest(tmp_path / "dev.jsonl")} == {"2"}
    assert len(read_manifest(tmp_path / "train.jsonl")) == 8
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  num_layers: 1\n  hidden_size: 16\ntrain:\n  epochs: 1\n  threads: 1\n")
    code = main(["train", str(config), f"data.train_manifest={tmp_path / 'train.jsonl'}",
                 f"data.valid_manifest={tmp_path / 'dev.jsonl'}", f"train.out_dir={tmp_path / 'exp'}",
                 "data.max_frames_per_batch=1000"])
    assert code == 0
    assert (tmp_path / "exp" / "best.pt").exists() and (tmp_path / "exp" / "last.pt").exists()
    assert "best valid CER" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "asr", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("asr ")
