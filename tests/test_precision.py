"""bf16 where the CPU can run a bf16 LSTM, fp32 with a warning where it cannot (asr/utils/precision.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import soundfile
import torch

import asr.utils.precision
from asr.utils.precision import PrecisionFallbackWarning, bf16_lstm_supported, usable_precision
from asr.inference.recognizer import load_model
from tests.conftest import SAMPLE_RATE, tiny_config, tone_audio


@pytest.fixture()
def no_bf16_lstm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU like an AVX2-only one: oneDNN has no bf16 LSTM."""
    monkeypatch.setattr(asr.utils.precision, "bf16_lstm_supported", lambda device_type: False)


def test_other_precisions_are_kept() -> None:
    for precision in ("fp32", "int8", "fp16"):
        assert usable_precision(precision, torch.device("cpu")) == (precision, None)


def test_bf16_where_it_cannot_run_is_fp32_with_a_reason(no_bf16_lstm) -> None:
    precision, problem = usable_precision("bf16", torch.device("cpu"))
    assert precision == "fp32" and "AVX-512 BF16" in problem


def test_bf16_inference_runs_on_this_cpu_whatever_it_has(trained_checkpoint: Path, tmp_path: Path) -> None:
    """On a CPU without bf16 LSTMs this used to fail inside oneDNN; now it falls back."""
    path = tmp_path / "a.wav"
    soundfile.write(path, tone_audio("bad cab"), SAMPLE_RATE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recognizer = load_model(trained_checkpoint, precision="bf16")
    fell_back = any(issubclass(w.category, PrecisionFallbackWarning) for w in caught)
    assert fell_back == (not bf16_lstm_supported("cpu"))
    assert recognizer.precision == ("fp32" if fell_back else "bf16")
    assert recognizer.transcribe([path])[0].ok


def test_bf16_inference_falls_back(no_bf16_lstm, trained_checkpoint: Path) -> None:
    with pytest.warns(PrecisionFallbackWarning, match="running in fp32"):
        recognizer = load_model(trained_checkpoint, precision="bf16")
    assert recognizer.precision == "fp32"


def test_bf16_training_falls_back(no_bf16_lstm, tone_corpus: dict, tmp_path: Path, capsys) -> None:
    from asr.training.loop import train

    train(tiny_config(tmp_path / "run", tone_corpus, train={"epochs": 1, "max_steps": 2, "precision": "bf16"}))
    assert "train.precision: bf16 was asked for" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").exists()
