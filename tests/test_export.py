"""Exported TorchScript and ONNX graphs give the eager model's outputs, at lengths unseen in tracing."""

import json

import pytest
import torch

from asr.cli import main
from asr.config import FeatureConfig
from asr.model.features import LogMel
from asr.inference.recognizer import load_model

from conftest import tiny_config  # noqa: F401


def eager(checkpoint, waveforms, lengths):
    recognizer = load_model(checkpoint)
    return recognizer.emissions(list(w[:n] for w, n in zip(waveforms, lengths)))


def inputs():
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([41_000, 23_456, 16_001])
    waveforms = torch.randn(3, 41_000, generator=generator) * 0.1
    waveforms *= torch.arange(41_000)[None, :] < lengths[:, None]  # a padded batch: zeros past each length
    return waveforms, lengths


def test_convolutional_stft_equals_torch_stft():
    log_mel = LogMel(FeatureConfig())
    waveforms, _ = inputs()
    assert torch.allclose(log_mel._mel_power_real(waveforms), log_mel.mel_power(waveforms), rtol=1e-3, atol=1e-4)


def test_torchscript_export_matches_eager(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.ts"
    assert main(["export", str(trained_checkpoint), str(out)]) == 0
    extra = {"vocabulary.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["vocabulary.json"])[0] == "<blank>"
    waveforms, lengths = inputs()
    expected, expected_lengths = eager(trained_checkpoint, waveforms, lengths)
    log_probs, out_lengths = module(waveforms, lengths)
    assert torch.equal(out_lengths, expected_lengths)
    assert torch.allclose(log_probs, expected, atol=1e-4)  # padding steps included: same as eager


def test_onnx_export_matches_eager(trained_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_checkpoint), str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "vocabulary" in session.get_modelmeta().custom_metadata_map
    waveforms, lengths = inputs()
    expected, expected_lengths = eager(trained_checkpoint, waveforms, lengths)
    log_probs, out_lengths = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})
    assert (out_lengths == expected_lengths.numpy()).all()
    valid = torch.arange(log_probs.shape[1])[None, :] < expected_lengths[:, None]  # padding steps are unused
    assert torch.allclose(torch.from_numpy(log_probs)[valid], expected[valid], atol=1e-3)
