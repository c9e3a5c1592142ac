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
