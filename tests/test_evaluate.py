"""Evaluation scores what training would: normalised references, bad lines reported and
skipped, nothing scored never passing for WER 0 %, and tune-lm decoding as evaluate does."""

import json

import numpy as np
import soundfile

from asr.cli import main
from asr.data.manifest import read_manifest
from asr.decoding.greedy import GreedyDecoder
from asr.scoring.evaluate import evaluate, evaluate_manifest
from asr.inference.recognizer import load_model
from asr.scoring.tune import compute_emissions, decode_texts, fingerprint, load_emissions, save_emissions


def manifest_lines(utterances, **changes) -> list[str]:
    return [json.dumps({"id": u.id, "audio": u.audio, "text": changes.get("text", lambda t: t)(u.text),
                        "duration": u.duration}) for u in utterances]


def test_references_are_normalised_as_in_training(trained_checkpoint, tone_corpus, tmp_path):
    utterances = read_manifest(tone_corpus["valid"])
    shouted = tmp_path / "shouted.jsonl"
    shouted.write_text("\n".join(manifest_lines(utterances, text=lambda t: f"\u201c{t.upper()}!\u201d")) + "\n")
    recognizer = load_model(trained_checkpoint)
    plain, loud = evaluate_manifest(recognizer, tone_corpus["valid"]), evaluate_manifest(recognizer, shouted)
    assert [s.reference for s in loud.scores] == [u.text for u in utterances]
    assert loud.words == plain.words and loud.chars == plain.chars and loud.complete


def test_bad_lines_are_reported_by_line_and_the_rest_is_scored(trained_checkpoint, tone_corpus, tmp_path, capsys):
    utterances = read_manifest(tone_corpus["valid"])
    lines = [line.encode() for line in manifest_lines(utterances)]
    no_duration = json.dumps({"id": "no-duration", "audio": utterances[0].audio, "text": utterances[0].text})
    lines += [
        b'{"id": "cut", "audio": "x.wav", "te',  # 5: malformed JSON
        json.dumps({"id": "no-text", "audio": utterances[0].audio, "duration": 1.0}).encode(),  # 6
        b'{"id": "latin", "audio": "x.wav", "text": "caf\xe9", "duration": 1.0}',  # 7: not UTF-8
        json.dumps({"id": "oov", "audio": utterances[0].audio, "text": "Caf\u00e9", "duration": 1.0}).encode(),  # 8
        no_duration.encode(),  # 9: the duration is read from the audio
    ]
    manifest = tmp_path / "eval.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    code = main(["evaluate", str(trained_checkpoint), str(manifest), "--utterances", str(tmp_path / "u.jsonl")])
    captured = capsys.readouterr()
    assert code == 1  # finished, but not everything was scored
    assert "5 scored, 0 failed, 4 skipped" in captured.out
    for number, reason in ((5, "malformed JSON"), (6, "missing key(s) 'text'"), (7, "not valid UTF-8"),
                           (8, "outside the model's vocabulary ('é')")):
        assert f"warning: skipped {manifest}:{number}: " in captured.err
        assert reason in next(line for line in captured.err.splitlines() if f"{manifest}:{number}:" in line)
    scored = [json.loads(line)["id"] for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert scored == [u.id for u in utterances] + ["no-duration"]


def test_an_empty_or_wholly_bad_manifest_is_an_error(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["evaluate", str(trained_checkpoint), str(tmp_path / "empty.jsonl")]) == 2
    captured = capsys.readouterr()
    assert "no utterance to evaluate (it is empty)" in captured.err and "WER" not in captured.out
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav"}\nnot json\n')
    assert main(["evaluate", str(trained_checkpoint), str(tmp_path / "bad.jsonl")]) == 2
    assert f"{tmp_path / 'bad.jsonl'}:1: missing key(s) 'text'" in capsys.readouterr().err


def test_nothing_scored_is_not_wer_zero(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "gone.jsonl").write_text(json.dumps({"audio": str(tmp_path / "gone.wav"), "text": "a",
                                                     "duration": 1.0}) + "\n")
    assert main(["evaluate", str(trained_checkpoint), str(tmp_path / "gone.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "WER n/a" in out and "0.00 %" not in out and "gone.wav: file not found" in out


def test_tune_lm_decodes_a_windowed_file_exactly_as_evaluate(trained_checkpoint, tone_corpus, tmp_path):
    utterances = read_manifest(tone_corpus["valid"]) * 3
    pause = np.zeros(8000, dtype=np.float32)
    joined = np.concatenate([np.concatenate([soundfile.read(u.audio, dtype="float32")[0], pause]) for u in utterances])
    soundfile.write(tmp_path / "long.flac", joined, 16000)
    reference = " ".join(u.text for u in utterances)
    long_utterance = utterances[0].__class__("long", str(tmp_path / "long.flac"), reference, len(joined) / 16000)
    recognizer = load_model(trained_checkpoint)
    recognizer.window_seconds = 4.0  # the file is ~15 s: several windows
    report = evaluate(recognizer, [long_utterance])
    emissions = compute_emissions(recognizer, [long_utterance], "test")
    assert len(emissions.files[0].windows) > 2
    assert decode_texts(emissions, GreedyDecoder(recognizer.vocabulary)) == [report.scores[0].hypothesis]
    assert emissions.references == [report.scores[0].reference]
    # The cache keeps the windows: decoding what was read back gives the same text.
    save_emissions(tmp_path / "cache.pt", emissions)
    cached = load_emissions(tmp_path / "cache.pt", "test")
    assert [f.windows for f in cached.files] == [f.windows for f in emissions.files]
    assert decode_texts(cached, GreedyDecoder(recognizer.vocabulary)) == [report.scores[0].hypothesis]
    # Another window length makes other emissions: a cache made with one is not used for the other.
    assert fingerprint(trained_checkpoint, [long_utterance], 4.0) != fingerprint(trained_checkpoint, [long_utterance], 8.0)
