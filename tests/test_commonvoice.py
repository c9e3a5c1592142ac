"""Common Voice language folders (asr/data/commonvoice.py) read by `asr prepare`, on hand-made folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from conftest import SAMPLE_RATE, tone_audio

from asr.cli import main
from asr.data import commonvoice
from asr.data.commonvoice import Mp3SupportError, scan_commonvoice
from asr.data.corpora import corpus_layout
from asr.data.manifest import ManifestError, Utterance, speakers_for_share

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"
MP3 = "MP3" in soundfile.available_formats()
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "commonvoice" / "run.sh"


def row(client: str, clip: str, sentence: str) -> str:
    return f"{client}\t{clip}\t{sentence}\t2\t0\ttwenties\t\t\tes\t\n"


def write_clip(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp3":
        soundfile.write(path, tone_audio(text), SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        soundfile.write(path, tone_audio(text), SAMPLE_RATE)


def folder(tmp_path: Path, ext: str = ".flac") -> Path:
    """A Spanish folder as a release ships it: clips/, validated.tsv and its train/test parts."""
    root = tmp_path / "es"
    for name, text in (("a", "abc"), ("b", "cab"), ("c", "bca"), ("d", "ab")):
        write_clip(root / "clips" / f"common_voice_es_{name}{ext}", text)
    rows = [row("x" * 128, f"common_voice_es_a{ext}", '"¿Qué tal?", dijo ""Ana"".'),
            row("y" * 128, f"common_voice_es_b{ext}", "Mañana, en Cádiz."),
            row("y" * 128, f"common_voice_es_c{ext}", ""),  # no sentence: a bad line
            row("z" * 128, f"common_voice_es_missing{ext}", "No hay audio.")]
    (root / "validated.tsv").write_bytes((HEADER + "".join(rows)).encode() + b"w\tx.flac\t\xff bad\t\t\t\t\t\t\t\n"
                                         + b"v\tcommon_voice_es_d.flac\ttoo\tfew\n")
    (root / "train.tsv").write_text(HEADER + rows[1])
    (root / "test.tsv").write_text(HEADER + rows[0])
    return root


def test_a_language_folder_becomes_utterances_normalised_by_its_language(tmp_path):
    root = folder(tmp_path)
    assert corpus_layout(root) == "commonvoice" and corpus_layout(tmp_path) == "librispeech"
    report = scan_commonvoice(root, language="es")
    by_id = {u.id: u for u in report.utterances}
    assert sorted(by_id) == ["common_voice_es_a", "common_voice_es_b"]
    assert by_id["common_voice_es_a"].text == "qué tal dijo ana"  # quotes are punctuation, not CSV quoting
    assert by_id["common_voice_es_b"].text == "mañana en cádiz"
    assert by_id["common_voice_es_b"].speaker == "y" * 128  # client_id
    assert by_id["common_voice_es_a"].audio == str((root / "clips" / "common_voice_es_a.flac").resolve())
    assert abs(by_id["common_voice_es_a"].duration - len(tone_audio("abc")) / SAMPLE_RATE) < 1e-3
    missing = root / "clips" / "common_voice_es_missing.flac"
    assert report.missing_audio == [f"{root / 'validated.tsv'}:5: {missing}: file not found"]
    bad = "\n".join(report.bad_lines)
    assert "validated.tsv:4: an empty path or sentence" in bad
    assert "validated.tsv:6: not valid UTF-8" in bad and "validated.tsv:7: 4 tab-separated fields" in bad
    # The release's own parts, by --split.
    assert [u.id for u in scan_commonvoice(root, "train", "es").utterances] == ["common_voice_es_b"]
    assert [u.id for u in scan_commonvoice(root, "test", "es").utterances] == ["common_voice_es_a"]


def test_a_missing_table_or_column_is_named(tmp_path):
    root = folder(tmp_path)
    with pytest.raises(ManifestError, match=r"dev.tsv: not found; this folder has validated, train, test"):
        scan_commonvoice(root, "dev")
    (root / "validated.tsv").write_text("client_id\tfilename\tsentence\nx\ty.mp3\tz\n")
    with pytest.raises(ManifestError, match=r"validated.tsv:1: no path column"):
        scan_commonvoice(root)


@pytest.mark.skipif(not MP3, reason="this libsndfile cannot write MP3")
def test_mp3_clips_are_read_through_soundfile(tmp_path):
    root = folder(tmp_path, ".mp3")
    report = scan_commonvoice(root, language="es")
    assert sorted(u.id for u in report.utterances) == ["common_voice_es_a", "common_voice_es_b"]
    # MP3 frames pad the start and end: the duration is the clip's, give or take a frame (26 ms at 16 kHz... 72 ms).
    assert all(abs(u.duration - len(tone_audio("abc")) / SAMPLE_RATE) < 0.1 for u in report.utterances)


def test_without_mp3_support_it_says_what_is_needed(tmp_path, monkeypatch):
    root = folder(tmp_path, ".mp3") if MP3 else tmp_path / "es"
    if not MP3:  # the clips need not exist: the check comes first
        (root / "clips").mkdir(parents=True)
        (root / "validated.tsv").write_text(HEADER + row("x", "common_voice_es_a.mp3", "hola"))
    monkeypatch.setattr(commonvoice.soundfile, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC"})
    with pytest.raises(Mp3SupportError, match=r"cannot read MP3: it needs libsndfile 1.1.0 or newer"):
        scan_commonvoice(root)


def test_asr_prepare_holds_out_a_share_of_the_clips_by_speaker(tmp_path, capsys):
    root = tmp_path / "de"
    rows = []
    # One speaker reads 6 clips, fourteen read 1: a 25 % share is 5 single-clip speakers, not the one with 6.
    for number in range(20):
        client = "big" if number < 6 else f"s{number:02d}" + "0" * 126
        write_clip(root / "clips" / f"c{number}.flac", "ab")
        rows.append(row(client, f"c{number}.flac", "Straße"))
    (root / "validated.tsv").write_text(HEADER + "".join(rows))
    out, dev = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    assert main(["prepare", str(root), str(out), "--language", "de", "--dev-out", str(dev), "--dev-share", "0.25"]) == 0
    train = [json.loads(line) for line in out.open()]
    test = [json.loads(line) for line in dev.open()]
    assert len(test) == 5 and len(train) == 15 and not {u["speaker"] for u in train} & {u["speaker"] for u in test}
    assert {u["text"] for u in train + test} == {"straße"}  # German's rules: ß stays
    printed = capsys.readouterr().out
    assert re.search(r"15 utterances, .* 10 speakers \(big s\d\d0{13}\.\.\. s", printed)  # 128-character ids cut short
    assert main(["prepare", str(root), str(out), "--language", "??", "--split", "validated"]) == 2
    assert main(["prepare", str(root), str(out), "--split", "test"]) == 2  # no test.tsv: named, not a traceback


def test_a_share_takes_speakers_until_it_is_reached_and_never_all():
    utterances = [Utterance(f"u{i}", "a.flac", "x", 1.0, speaker) for i, speaker in enumerate("aaaabcdefg")]
    chosen = speakers_for_share(utterances, 0.3, seed=1)
    assert sum(u.speaker in chosen for u in utterances) == 3 and "a" not in chosen
    assert speakers_for_share(utterances, 0.3, seed=1) == chosen  # seeded
    with pytest.raises(ManifestError, match="takes all 2 speakers"):
        speakers_for_share(utterances[:5], 0.99)
    with pytest.raises(ManifestError, match="between 0 and 1"):
        speakers_for_share(utterances, 1.5)


@pytest.mark.slow
def test_the_recipe_prepares_fine_tunes_and_scores_a_language(trained_checkpoint, tmp_path):
    """recipes/commonvoice/run.sh end to end on a hand-made folder, from the tone model (its shape)."""
    root = tmp_path / "cv" / "xx"
    rows = []
    for number, text in enumerate(["bad cab", "a dab", "ace", "bed deed", "cede a bee", "dace", "abba", "be bad",
                                   "cab", "dead"]):
        write_clip(root / "clips" / f"c{number}.flac", text)
        rows.append(row(f"speaker{number}", f"c{number}.flac", text.upper() + "."))
    (root / "validated.tsv").write_text(HEADER + "".join(rows))
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(RECIPE), "xx", "--data-dir", str(tmp_path / "cv"), "--init", str(trained_checkpoint),
         "--minutes", "0.05", "--exp", str(tmp_path / "exp"), "--",
         "model.num_layers=2", "model.hidden_size=48", "train.threads=1"],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 utterances" in done.stdout and "2 utterances" in done.stdout  # 20 % of the clips held out by speaker
    assert "init from" in done.stderr and "front end and 2 recurrent layers taken" in done.stderr
    assert re.search(r"xx finetuned: WER [\d.]+ % +CER [\d.]+ %", done.stdout)
    assert (tmp_path / "exp" / "xx" / "finetuned" / "test_report.txt").is_file()
