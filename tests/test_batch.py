"""Batch transcription (asr/inference/batch.py, ``asr transcribe MODEL DIR``): folders walked for
audio files only, the output tree kept, finished outputs skipped so that a stopped run resumes
(unless --overwrite), tsv segments, a progress bar, and a bad file that stops nothing."""

import io
import os
import sys
import time
from pathlib import Path

import soundfile
from conftest import SAMPLE_RATE, tone_audio

from asr.cli import main
from asr.inference import recognizer as recognizer_module
from asr.inference.batch import describe_skipped, find_inputs, plan_batch
from asr.inference.results import TimedWord, Transcription
from asr.inference.writers import render


def touch(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def tone_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone_audio(text), SAMPLE_RATE)
    return path


def test_folders_are_walked_for_audio_files_only(tmp_path):
    root = tmp_path / "in"
    for name in ("top.WAV", "notes.txt", "._top.wav", "a/readme.md", "a/b/c.flac", "a/b/d.opus", ".cache/x.flac",
                 "out/old.flac"):
        touch(root / name)
    (tmp_path / "empty").mkdir()
    found = find_inputs([root, tmp_path / "empty", tmp_path / "given.txt"], exclude=root / "out")
    # Sorted, top-down; any extension for a file given by name; no hidden files or folders; not the output folder.
    assert found.files == [str(root / "top.WAV"), str(root / "a/b/c.flac"), str(root / "a/b/d.opus"),
                           str(tmp_path / "given.txt")]
    assert found.not_audio == [str(root / "._top.wav"), str(root / "notes.txt"), str(root / "a/readme.md")]
    assert len(found.problems) == 1 and found.problems[0].startswith(f"{tmp_path / 'empty'}: no audio files")
    line = describe_skipped(found, shown=2)
    assert line.startswith("skipped 3 files that are not audio") and line.endswith("notes.txt and 1 more")


def test_plan_keeps_the_tree_and_skips_finished_outputs(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    for name in ("top.flac", "a/b/c.flac"):
        tone_file(root / name, "bad cab")
    plan = plan_batch([root], "tsv", out)
    assert [item.output for item in plan.pending] == [out / "top.tsv", out / "a/b/c.tsv"] and not plan.done
    assert all(0.5 < item.seconds < 5 for item in plan.pending)  # from the headers: the progress bar's hours

    touch(out / "top.tsv", b"done before")
    stale = touch(out / "a/b/.c.tsv.x1y2z3.tmp", b"half")  # a run killed while writing c.tsv
    other = touch(out / "a/b/.unrelated.txt.x1y2z3.tmp", b"not ours")
    for path in (stale, other):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    plan = plan_batch([root], "tsv", out)
    assert [item.audio for item in plan.done] == [str(root / "top.flac")]
    assert [item.output for item in plan.pending] == [out / "a/b/c.tsv"]
    assert not stale.exists() and other.exists()
    assert len(plan_batch([root], "tsv", out, overwrite=True).pending) == 2

    # A folder beside a file elsewhere: both keep their paths below what they share.
    elsewhere = tone_file(tmp_path / "other" / "x.flac", "ace")
    plan = plan_batch([root / "a", elsewhere], "text", out)
    assert [item.output for item in plan.pending] == [out / "in/a/b/c.txt", out / "other/x.txt"]


def test_tsv_is_segments_in_milliseconds():
    words = (TimedWord("bad", 0.12, 0.5, 0.9), TimedWord("cab", 0.6, 1.0, 0.8), TimedWord("ace", 2.5, 2.9, 0.7))
    result = Transcription("x.flac", "bad cab ace", duration=3.0, words=words)
    assert render(result, "tsv") == "start\tend\ttext\n120\t1000\tbad cab\n2500\t2900\tace\n"  # a pause: two segments
    assert render(Transcription("y.flac", "", duration=1.0), "tsv") == "start\tend\ttext\n"


def test_folder_in_tree_out_a_bad_file_in_the_middle_and_resume(trained_checkpoint, tmp_path, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    tone_file(root / "1.flac", "bad cab")
    touch(root / "sub" / "2.flac", b"not audio at all\n" * 50)
    tone_file(root / "sub" / "3.flac", "ace")
    touch(root / "notes.txt", b"a note")
    command = ["transcribe", str(trained_checkpoint), str(root), "--output-dir", str(out), "--format", "tsv"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "skipped 1 files that are not audio" in err and "notes.txt" in err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["1.tsv", "sub/3.tsv"]  # the bad file has none, and no temporary is left
    rows = (out / "sub" / "3.tsv").read_text().splitlines()
    assert rows[0] == "start\tend\ttext" and all(int(r.split("\t")[0]) <= int(r.split("\t")[1]) for r in rows[1:])
    summary = err[err.index("transcribed 2 of 3 files"):]  # the failure again at the end, where it is seen
    assert "1 failed" in summary and str(root / "sub" / "2.flac") in summary

    (out / "1.tsv").write_text("kept\n")
    assert main(command) == 1  # resumed: the finished files skipped, the bad one tried again
    err = capsys.readouterr().err
    assert "2 of 3 files already have their output" in err and "transcribed 0 of 1 files" in err
    assert (out / "1.tsv").read_text() == "kept\n"
    assert main(command + ["--overwrite"]) == 1
    assert (out / "1.tsv").read_text().startswith("start\tend\ttext\n")


def test_a_stopped_run_keeps_finished_groups_and_resumes(trained_checkpoint, tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    for name, text in (("a.flac", "bad cab"), ("b.flac", "ace"), ("c.flac", "cab")):
        tone_file(root / name, text)
    monkeypatch.setattr(recognizer_module, "FILES_PER_GROUP", 1)  # a group per file
    transcribe = recognizer_module.SpeechRecognizer.transcribe
    calls: list[list[str]] = []
    stop_at = [2]

    def counted(self, paths):
        calls.append([Path(p).name for p in paths])
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of the batch
        return transcribe(self, paths)

    monkeypatch.setattr(recognizer_module.SpeechRecognizer, "transcribe", counted)
    command = ["transcribe", str(trained_checkpoint), str(root), "--output-dir", str(out)]
    assert main(command) == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # written as soon as its group was done

    calls.clear()
    stop_at[0] = 0
    assert main(command) == 0
    assert calls == [["b.flac"], ["c.flac"]]  # resumed where it stopped
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_files_and_audio_hours_on_a_terminal(trained_checkpoint, tmp_path, monkeypatch, capsys):
    root = tmp_path / "in"
    tone_file(root / "a.flac", "bad cab")
    tone_file(root / "deeper" / "b.flac", "ace")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["transcribe", str(trained_checkpoint), str(root)]) == 0
    shown = terminal.getvalue()
    assert "h audio" in shown and "2/2 files" in shown and "100%" in shown, shown
    printed = capsys.readouterr().out.splitlines()  # no --output-dir: path<TAB>text per file, as for several files
    assert [line.split("\t")[0] for line in printed] == [str(root / "a.flac"), str(root / "deeper" / "b.flac")]


def test_batch_options_that_cannot_work_fail_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    absent = str(tmp_path / "absent.pt")  # the model is never read: the options are refused first
    assert main(["transcribe", absent, str(tmp_path / "in"), "--format", "tsv"]) == 2
    assert "needs --output-dir" in capsys.readouterr().err
    assert main(["transcribe", absent, str(tmp_path / "a.flac"), "--overwrite"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["transcribe", absent, str(tmp_path / "in"), "--output-dir", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'in'}: no audio files in this folder" in capsys.readouterr().err
