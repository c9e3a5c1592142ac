"""Transcription: output files that never overwrite each other, warnings that reach the user,
word times inside the file, and long audio cut at pauses into windows the model knows."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SAMPLE_RATE, tone_audio
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.cli import main
from asr.decoding.hypothesis import Hypothesis, WordSpan
from asr.inference.recognizer import load_model
from asr.inference.windows import (
    LONG_AUDIO_SECONDS,
    MIN_WINDOW_SECONDS,
    FileEmissions,
    Window,
    join_windows,
    plan_windows,
)
from asr.inference.results import timed_words
from asr.inference.writers import output_names


def test_output_names_keep_folders_and_never_collide():
    assert output_names(["d1/same.flac", "d2/same.flac"], "json") == [Path("d1/same.json"), Path("d2/same.json")]
    names = output_names(["x/a.flac", "x/a.wav", "x/a.flac", "x/b.ogg"], "text")
    assert [str(n) for n in names] == ["a.flac.txt", "a.wav.txt", "a.flac-2.txt", "b.txt"]
    assert [str(n) for n in output_names(["/data/one/deep/c.wav"], "vtt")] == ["c.vtt"]


def test_same_file_name_in_two_folders_gives_two_outputs(trained_checkpoint, tmp_path, capsys):
    texts = {"d1": "bad cab", "d2": "ace"}
    for folder, text in texts.items():
        (tmp_path / folder).mkdir()
        soundfile.write(tmp_path / folder / "same.flac", tone_audio(text), SAMPLE_RATE)
    out = tmp_path / "out"
    code = main(["transcribe", str(trained_checkpoint), str(tmp_path / "d1" / "same.flac"),
                 str(tmp_path / "d2" / "same.flac"), "--format", "json", "--output-dir", str(out)])
    assert code == 0
    records = {folder: json.loads((out / folder / "same.json").read_text()) for folder in texts}
    assert records["d1"]["path"].endswith("d1/same.flac") and records["d2"]["path"].endswith("d2/same.flac")
    assert records["d1"]["duration"] != records["d2"]["duration"]  # two different results, none overwritten
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["same.json", "same.json"]  # no temporaries left


def test_output_dir_that_is_a_file_fails_before_loading_anything(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    # The checkpoint does not even exist: the output folder must be refused first.
    code = main(["transcribe", str(tmp_path / "absent.pt"), str(tmp_path / "a.wav"), "--output-dir",
                 str(tmp_path / "taken")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--output-dir {tmp_path / 'taken'} exists and is not a folder" in err and "checkpoint" not in err


def test_truncated_wav_is_transcribed_with_a_warning(trained_checkpoint, tmp_path, capsys):
    soundfile.write(tmp_path / "whole.wav", tone_audio("bed deed"), SAMPLE_RATE, subtype="PCM_16")
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "half.wav").write_bytes(data[: len(data) // 2])
    code = main(["transcribe", str(trained_checkpoint), str(tmp_path / "half.wav"), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0
    record = json.loads(captured.out)
    assert "error" not in record and record["duration"] > 0
    assert "truncated" in record["warnings"][0]
    assert f"warning: {tmp_path / 'half.wav'}: file is truncated" in captured.err


def test_one_path_is_one_file_never_its_letters(trained_checkpoint, tmp_path):
    from asr.inference.recognizer import load_model

    soundfile.write(tmp_path / "a.wav", tone_audio("bed deed"), SAMPLE_RATE, subtype="PCM_16")
    recognizer = load_model(trained_checkpoint)
    for one in (str(tmp_path / "a.wav"), tmp_path / "a.wav"):
        (result,) = recognizer.transcribe(one)
        assert result.ok and result.path == str(tmp_path / "a.wav")
    assert recognizer.transcribe(one)[0].text == recognizer.transcribe([one])[0].text


def test_word_times_never_pass_the_end_of_the_file():
    step = 0.03
    # A word whose last step ends one step after the audio (the last output step reaches past it).
    hypothesis = Hypothesis("ab", [1, 2], [0, 1], 0.0, (WordSpan("ab", 30, 34, 0.9),))
    duration = 34 * step - 0.02
    (word,) = timed_words(hypothesis, step, duration=duration)
    assert word.end == pytest.approx(duration) and word.start <= word.end
    # Windowed files are clipped the same way.
    file = FileEmissions((Window(0, 100, 0.0, 0.5), Window(0, 100, 0.5, math.inf)), (np.zeros((1, 3)),) * 2, duration)
    _, words = join_windows(file, [Hypothesis("", [], [], 0.0), hypothesis], step, SAMPLE_RATE)
    assert words and all(w.end <= duration for w in words)


# --------------------------------------------------------------------------- windows


def speech_with_pauses(pauses: list[tuple[float, float]], seconds: float, rate: int = 16000) -> np.ndarray:
    """Loud noise ("speech") with silent stretches at the given (start, end) seconds."""
    samples = np.random.default_rng(0).normal(0, 0.3, int(seconds * rate)).astype(np.float32)
    for start, end in pauses:
        samples[int(start * rate) : int(end * rate)] = 0.0
    return samples


@settings(max_examples=25, deadline=None)
@given(max_seconds=st.floats(4.0, 12.0), seconds=st.floats(5.0, 60.0), spacing=st.floats(0.0, 1.0))
def test_windows_never_exceed_the_limit_and_cut_in_pauses(max_seconds, seconds, spacing):
    rate = 16000
    overlap = min(1.0, max_seconds / 8)
    # Pauses close enough that one lies in every cut's search range (the second half of a span).
    longest_spacing = (max_seconds - 2 * overlap) / 2 - 0.45
    pause_every = 0.6 + spacing * (longest_spacing - 0.6)
    pauses = [(t, t + 0.4) for t in np.arange(pause_every, seconds, pause_every)]
    samples = speech_with_pauses(pauses, seconds, rate)
    windows = plan_windows(samples, rate, max_seconds, overlap)
    assert all(w.end - w.start <= max_seconds * rate for w in windows)
    assert windows[0].start == 0 and windows[-1].end == len(samples)
    assert windows[0].keep_start == 0.0 and windows[-1].keep_end == math.inf
    for left, right in zip(windows[:-1], windows[1:]):
        assert left.keep_end == right.keep_start  # own spans tile the file
        cut = int(left.keep_end * rate)
        assert np.all(samples[cut : cut + rate // 100] == 0.0)  # the 10 ms after each cut are silent


def test_window_follows_the_longest_training_utterance(trained_checkpoint):
    recognizer = load_model(trained_checkpoint)
    for trained, expected in ((None, LONG_AUDIO_SECONDS), (7.5, 7.5), (1.0, MIN_WINDOW_SECONDS), (300.0, LONG_AUDIO_SECONDS)):
        recognizer.max_train_seconds = trained
        assert recognizer.window_seconds == expected
    recognizer.max_train_seconds = 6.0
    # 20 s is shorter than the old 30 s threshold, longer than what the model was trained on: cut.
    samples = speech_with_pauses([(t, t + 0.4) for t in range(2, 20, 2)], 20.0)
    windows = recognizer.plan_windows(samples)
    assert len(windows) >= 4 and all(w.end - w.start <= 6.0 * SAMPLE_RATE for w in windows)
    recognizer.window_seconds = 1e9  # an explicit setting wins
    assert len(recognizer.plan_windows(samples)) == 1


def test_long_audio_script_scores_joined_utterances_like_evaluate(trained_checkpoint, tone_corpus, capsys):
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "long_audio.py"
    spec = importlib.util.spec_from_file_location("long_audio", script)
    long_audio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long_audio)
    assert long_audio.main([str(trained_checkpoint), str(tone_corpus["valid"]), "--group-sizes", "1,0",
                            "--gap", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1:3] for row in rows] == [[" 1 ", " 4 "], [" 4 ", " 1 "]]
    # One utterance per file with no gap is the manifest itself: the script agrees with evaluate.
    from asr.scoring.evaluate import evaluate_manifest
    from asr.inference.recognizer import load_model

    report = evaluate_manifest(load_model(trained_checkpoint), tone_corpus["valid"])
    assert float(rows[0].split("|")[4]) == pytest.approx(100 * report.words.rate, abs=0.01)


def test_load_model_decodes_with_the_tuned_settings_like_the_cli(trained_checkpoint, tmp_path):
    import shutil
    import warnings

    from test_cli import tone_lm

    import asr
    from asr.decoding.beam import BeamSearchOptions
    from asr.decoding.settings import DecodingSettings, save_decoding_settings
    from asr.inference.recognizer import DecodingFallbackWarning

    checkpoint = tmp_path / "model.pt"
    shutil.copy(trained_checkpoint, checkpoint)
    assert asr.load_model(checkpoint).decoding == DecodingSettings()  # nothing tuned: greedy
    tuned = DecodingSettings("beam", tone_lm(tmp_path), None, BeamSearchOptions(beam_size=8, lm_weight=0.5))
    save_decoding_settings(tmp_path / "model.pt.decoding.yaml", tuned)
    model = asr.load_model(checkpoint)  # what `asr transcribe` would decode with, without a flag
    assert model.decoding == tuned and model.decoding_problem is None
    assert asr.load_model(checkpoint, decoding=DecodingSettings()).decoding == DecodingSettings()
    Path(tuned.lm).unlink()  # the LM went away: greedy, and the user is told why
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = asr.load_model(checkpoint)
    assert model.decoding == DecodingSettings() and "falling back to greedy" in model.decoding_problem
    assert [w.category for w in caught] == [DecodingFallbackWarning]


def test_inference_and_serving_import_no_training_or_dataset_code():
    import subprocess
    import sys

    # (asr.data.phones may load: the model's phone head takes its size from the phone inventory.)
    code = ("import sys, asr, asr.cli, asr.inference.recognizer, asr.scoring.evaluate, asr.inference.writers, asr.deploy.package, asr.serving.app, "
            "asr.inspect.gates, asr.data.manifest; print(sorted(m for m in sys.modules if m in ('asr.training.loop', 'asr.data.dataset', "
            "'asr.utils.download', 'asr.data.librispeech')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
