import json
import subprocess
import sys

import numpy as np
import soundfile

from asr.cli import main
from asr.data.manifest import read_manifest
from asr.data.manifest import write_manifest

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


def test_evaluate_checks_its_output_files_before_evaluating(trained_checkpoint, tone_corpus, tmp_path, capsys,
                                                            monkeypatch):
    import asr.scoring.evaluate

    def not_reached(*args, **kwargs):
        raise AssertionError("evaluated although the output cannot be written")

    with monkeypatch.context() as patch:
        patch.setattr(asr.scoring.evaluate, "evaluate_manifest", not_reached)
        assert main(["evaluate", str(trained_checkpoint), str(tone_corpus["valid"]), "--report", str(tmp_path)]) == 2
        assert f"--report {tmp_path} is a folder" in capsys.readouterr().err
        (tmp_path / "a-file").write_text("")
        beneath_a_file = tmp_path / "a-file" / "utts.jsonl"
        assert main(["evaluate", str(trained_checkpoint), str(tone_corpus["valid"]), "--utterances",
                     str(beneath_a_file)]) == 2
        assert f"{tmp_path / 'a-file'} is not a folder" in capsys.readouterr().err
    # A write that fails anyway (disk full, permissions changed meanwhile): the report is printed, exit 1.
    import asr.scoring.evaluate

    def disk_full(path, report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(asr.scoring.evaluate, "write_utterance_scores", disk_full)
    report = tmp_path / "new-folder" / "report.txt"  # missing folders are fine: they are created
    code = main(["evaluate", str(trained_checkpoint), str(tone_corpus["valid"]), "--utterances",
                 str(tmp_path / "utts.jsonl"), "--report", str(report), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1 and "WER" in captured.out and "WER" in report.read_text()
    assert f"error: cannot write per-utterance scores to {tmp_path / 'utts.jsonl'}" in captured.err


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


# --------------------------------------------------------------------------- beam search, LM, timestamps


def tone_lm(tmp_path):
    from conftest import OVERFIT_TEXTS, write_arpa

    words = sorted({w for text in OVERFIT_TEXTS for w in text.split()})
    return write_arpa(tmp_path / "tone.arpa", {w: -1.1 for w in words}, {"<s> bad": -0.5, "bad cab": -0.3})


def test_missing_lm_falls_back_to_greedy_with_a_message(trained_checkpoint, tone_corpus, tmp_path, capsys):
    good = sorted(tone_corpus["root"].glob("valid/*.flac"))[:2]
    assert main(["transcribe", str(trained_checkpoint), *map(str, good)]) == 0
    greedy = capsys.readouterr().out
    for broken in (tmp_path / "absent.arpa", tmp_path / "junk.arpa"):
        if broken.name == "junk.arpa":
            broken.write_text("not an ARPA file")
        code = main(["transcribe", str(trained_checkpoint), *map(str, good), "--lm", str(broken), "--workers", "1"])
        captured = capsys.readouterr()
        assert code == 0 and captured.out == greedy
        assert f"warning: {broken}" in captured.err and "falling back to greedy decoding" in captured.err


def test_beam_search_with_lm_from_the_cli(trained_checkpoint, tone_corpus, tmp_path, capsys):
    lm = tone_lm(tmp_path)
    code = main(["evaluate", str(trained_checkpoint), str(tone_corpus["valid"]), "--lm", lm, "--beam", "8",
                 "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0 and "WER" in captured.out
    assert f"decoding: beam 8, LM {lm}" in captured.err
    # Lexicon decoding emits only lexicon words.
    hyps = [line.split("HYP:")[1].split() for line in captured.out.splitlines() if "HYP:" in line]
    words = set(open(lm).read().split())
    assert all(w in words for hyp in hyps for w in hyp)


def test_tune_lm_stores_settings_that_transcribe_then_uses(trained_checkpoint, tone_corpus, tmp_path, capsys):
    import shutil

    checkpoint = tmp_path / "model.pt"
    shutil.copy(trained_checkpoint, checkpoint)
    lm = tone_lm(tmp_path)
    cache = tmp_path / "emissions.pt"
    args = ["tune-lm", str(checkpoint), str(tone_corpus["valid"]), "--lm", lm, "--lm-weights", "0,1",
            "--word-scores", "0,1", "--beam", "8", "--workers", "1", "--emissions-cache", str(cache)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("  lm_weight") for line in out.splitlines()) == 4 and "greedy: WER" in out and "best:   WER" in out
    settings_file = tmp_path / "model.pt.decoding.yaml"
    assert settings_file.is_file() and cache.is_file()
    assert main(args) == 0  # second run reads the cached emissions
    assert f"emissions from {cache}" in capsys.readouterr().err

    good = sorted(tone_corpus["root"].glob("valid/*.flac"))[:1]
    assert main(["transcribe", str(checkpoint), str(good[0]), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"using tuned decoding settings from {settings_file}" in err and "decoding: beam 8, LM" in err
    assert main(["transcribe", str(checkpoint), str(good[0]), "--greedy"]) == 0
    assert "decoding: greedy" in capsys.readouterr().err


def test_json_srt_and_vtt_carry_word_times(trained_checkpoint, tone_corpus, tmp_path, capsys):
    good = sorted(tone_corpus["root"].glob("valid/*.flac"))[:2]
    assert main(["transcribe", str(trained_checkpoint), str(good[0]), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert " ".join(w["word"] for w in record["words"]) == record["text"]
    for word in record["words"]:
        assert 0 <= word["start"] < word["end"] <= record["duration"] + 0.05 and 0 <= word["confidence"] <= 1

    assert main(["transcribe", str(trained_checkpoint), *map(str, good), "--format", "srt"]) == 2  # needs --output-dir
    capsys.readouterr()
    assert main(["transcribe", str(trained_checkpoint), *map(str, good), "--format", "vtt",
                 "--output-dir", str(tmp_path / "subs")]) == 0
    for path in good:
        vtt = (tmp_path / "subs" / (path.stem + ".vtt")).read_text()
        assert vtt.startswith("WEBVTT\n")


def test_subtitle_cues_split_at_pauses_and_format_times():
    from asr.inference.results import TimedWord
    from asr.inference.writers import format_srt, format_vtt, subtitle_cues

    words = [TimedWord("a", 0.5, 0.9, 1.0), TimedWord("cab", 1.0, 1.5, 1.0), TimedWord("dab", 3661.25, 3661.5, 1.0)]
    cues = subtitle_cues(words, pause=0.8)
    assert [(c.start, c.end, c.text) for c in cues] == [(0.5, 1.5, "a cab"), (3661.25, 3661.5, "dab")]
    assert format_srt(cues) == "1\n00:00:00,500 --> 00:00:01,500\na cab\n\n2\n01:01:01,250 --> 01:01:01,500\ndab\n"
    assert format_vtt(cues).startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.500\na cab\n")
    many = [TimedWord(str(i), i * 0.3, i * 0.3 + 0.2, 1.0) for i in range(30)]
    assert all(len(c.text.split()) <= 14 and c.end - c.start <= 6.0 for c in subtitle_cues(many))


# --------------------------------------------------------------------------- long audio


def test_plan_windows_cut_in_pauses_and_tile_the_file():
    from asr.inference.windows import plan_windows

    rate = 16000
    rng = np.random.default_rng(0)
    # 95 s: 6.5 s of "speech" (noise) then 0.5 s of silence, repeated.
    pattern = np.concatenate([rng.normal(0, 0.3, int(6.5 * rate)), np.zeros(int(0.5 * rate))]).astype(np.float32)
    samples = np.tile(pattern, 14)[: 95 * rate]
    windows = plan_windows(samples, rate, max_seconds=20.0, overlap=1.0, search=8.0)
    assert len(windows) >= 5
    assert all((w.end - w.start) / rate <= 20.0 + 1e-9 for w in windows)
    assert windows[0].keep_start == 0.0 and windows[-1].keep_end == float("inf")
    for left, right in zip(windows[:-1], windows[1:]):
        assert left.keep_end == right.keep_start  # own spans tile the file
        cut = left.keep_end % 7.0
        assert 6.5 <= cut <= 7.0  # inside a pause
    assert plan_windows(samples[: 10 * rate], rate, max_seconds=20.0)[0].keep_end == float("inf")  # short: one window


def test_long_file_is_transcribed_in_windows_with_ordered_times(trained_checkpoint, tone_corpus, tmp_path):
    from asr.inference.recognizer import load_model

    utterances = read_manifest(tone_corpus["valid"]) * 3
    pause = np.zeros(8000, dtype=np.float32)
    pieces = [np.concatenate([soundfile.read(u.audio, dtype="float32")[0], pause]) for u in utterances]
    long_file = tmp_path / "long.flac"
    soundfile.write(long_file, np.concatenate(pieces), 16000)
    duration = sum(len(p) for p in pieces) / 16000
    recognizer = load_model(trained_checkpoint)
    recognizer.window_seconds = 4.0  # the tone utterances are ~1-2 s: many windows
    (whole,) = recognizer.transcribe([long_file])
    assert whole.ok and whole.hypothesis is None  # stitched from windows
    starts = [w.start for w in whole.words]
    assert starts == sorted(starts) and all(0 <= w.start < w.end <= duration + 0.05 for w in whole.words)
    assert whole.text == " ".join(w.word for w in whole.words)
    recognizer.window_seconds = 1e9
    (unwindowed,) = recognizer.transcribe([long_file])
    assert unwindowed.hypothesis is not None


def test_prepare_librispeech_with_a_local_folder_of_that_name(tmp_path, monkeypatch, capsys):
    from test_data import write_librispeech_folder

    monkeypatch.chdir(tmp_path)
    write_librispeech_folder(tmp_path / "librispeech")
    transcript = tmp_path / "librispeech" / "22" / "100" / "22-100.trans.txt"
    transcript.write_bytes(transcript.read_bytes().replace(b"HELLO WORLD NUMBER 2", b"H\xc9LLO"))
    # No download option: the folder here is meant, and the note says how to reach the download command.
    assert main(["prepare", "librispeech", "out.jsonl"]) == 0
    err = capsys.readouterr().err
    assert "reading 'librispeech' as the folder" in err and "asr prepare-librispeech" in err
    assert "librispeech/22/100/22-100.trans.txt:3: not valid UTF-8" in err  # the bad line is named, the rest prepared
    assert len(read_manifest(tmp_path / "out.jsonl")) == 5
    # With download options it is the download command (an unknown subset fails before any download).
    assert main(["prepare", "librispeech", "--subsets", "no-such-subset", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "download command" in err and "unknown subset" in err
