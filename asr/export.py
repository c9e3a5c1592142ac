"""Export the front end + acoustic model as TorchScript or ONNX: waveforms in, CTC log-probs out.

The exported graph takes ``waveforms`` (B, S) float32 at the model's sample rate and
``lengths`` (B,) int64 and returns ``log_probs`` (B, T', V) and ``output_lengths`` (B,). The
vocabulary and feature settings travel with it (TorchScript: extra files; ONNX: metadata), so
a runtime needs nothing else; decoding (greedy or beam) stays outside the graph.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from asr.atomic import atomic_path
from asr.config import to_dict
from asr.decoding import DecodingSettings
from asr.errors import AsrError
from asr.transcribe import SpeechRecognizer, load_model


class WaveformToLogProbs(nn.Module):
    def __init__(self, recognizer: SpeechRecognizer) -> None:
        super().__init__()
        self.frontend = recognizer.frontend
        self.model = recognizer.model

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, frame_lengths = self.frontend(waveforms, lengths)
        return self.model(features, frame_lengths)


class ExportError(AsrError):
    """A model this exporter cannot write as one graph."""


def _exportable(checkpoint: str | Path) -> SpeechRecognizer:
    recognizer = load_model(checkpoint, decoding=DecodingSettings())  # the network alone: no LM to load
    if recognizer.config.model.direction == "latency_controlled":
        # Its chunks run in a Python loop whose length tracing would freeze to the example's.
        raise ExportError(f"{checkpoint}: a latency-controlled model is exported as a streaming step with its "
                          "state (not yet written); whole-utterance export covers bidirectional and unidirectional models")
    return recognizer


def _example(recognizer: SpeechRecognizer) -> tuple[torch.Tensor, torch.Tensor]:
    # Two utterances of different lengths, so that nothing is specialised to equal lengths.
    rate = recognizer.sample_rate
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 2 * rate, generator=generator) * 0.1, torch.tensor([2 * rate, rate + 1234])


def _metadata(recognizer: SpeechRecognizer) -> dict[str, str]:
    return {"vocabulary": json.dumps(recognizer.vocabulary.tokens),
            "config": json.dumps(to_dict(recognizer.config)),
            "seconds_per_step": str(recognizer.seconds_per_step)}


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    recognizer = _exportable(checkpoint)
    module = WaveformToLogProbs(recognizer).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes are traced symbolically (tested)
        traced = torch.jit.trace(module, _example(recognizer), check_trace=False)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={f"{k}.json": v for k, v in _metadata(recognizer).items()})
    return out


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    import onnx

    recognizer = _exportable(checkpoint)
    module = WaveformToLogProbs(recognizer).eval()
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, _example(recognizer), str(tmp), opset_version=opset, dynamo=False,
            input_names=["waveforms", "lengths"], output_names=["log_probs", "output_lengths"],
            dynamic_axes={"waveforms": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
                          "log_probs": {0: "batch", 1: "steps"}, "output_lengths": {0: "batch"}},
        )
        model = onnx.load(str(tmp))
        for key, value in _metadata(recognizer).items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
    return out
