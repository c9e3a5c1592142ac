"""The demo's corpus synthesis (needs espeak-ng; .ci/run installs it)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data.librispeech import scan_librispeech

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_synthesised_corpus_is_librispeech_layout(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "recipes/espeak/synthesize.py"), str(tmp_path), "--utterances-per-speaker", "2"],
        check=True, capture_output=True,
    )
    train, test = scan_librispeech(tmp_path / "train"), scan_librispeech(tmp_path / "test")
    assert not (train.missing_audio or train.missing_transcripts or train.unreadable)
    assert len({u.speaker for u in train.utterances}) == 24 and len({u.speaker for u in test.utterances}) == 4
    assert {u.speaker for u in train.utterances}.isdisjoint({u.speaker for u in test.utterances})
    assert all(0.3 < u.duration < 10 and u.text for u in train.utterances + test.utterances)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_the_spanish_corpus_speaks_spanish_with_unheard_test_voices(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "recipes/espeak/synthesize.py"), str(tmp_path), "--language", "es",
         "--utterances-per-speaker", "1", "--seed", "3"],
        check=True, capture_output=True, text=True,
    )
    train = scan_librispeech(tmp_path / "train", language="es")
    test = scan_librispeech(tmp_path / "test", language="es")
    voices = {line.split("voice ")[1].split(",")[0] for line in completed.stdout.splitlines() if "voice " in line}
    assert {v.split("+")[0] for v in voices} == {"es", "es-419"}
    test_variants = {v.split("+")[1] for v in voices if v.split("+")[1] in ("m5", "m7", "f4", "f5")}
    assert len(test_variants) == 4 and len({u.speaker for u in train.utterances}) == 14
    words = {w for u in train.utterances + test.utterances for w in u.text.split()}
    assert words & {"uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "cero", "la"}
