"""Export the front end + acoustic model as TorchScript or ONNX: waveforms in, CTC log-probs out.

The exported graph takes ``waveforms`` (B, S) float32 at the model's sample rate and
``lengths`` (B,) int64 and returns ``log_probs`` (B, T', V) and ``output_lengths`` (B,). The
vocabulary and feature settings travel with it (TorchScript: extra files; ONNX: metadata), so
a runtime needs nothing else; decoding (greedy or beam) stays outside the graph.

A streaming model (latency-controlled, or unidirectional with ``asr export --streaming``; stacked
subsampling) is exported to ONNX as one streaming step with its state, as sherpa-onnx's streaming models are: log-mel
frames of one window and the state after the previous window in, the window's log-probs and
the next state out (:class:`StreamingStep`, metadata ``streaming_*``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asr.config import to_dict
from asr.decoding.settings import DecodingSettings
from asr.errors import AsrError
from asr.inference.recognizer import SpeechRecognizer, load_model
from asr.model.features import remove_running_mean
from asr.utils.atomic import atomic_path


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


class StreamingStep(nn.Module):
    """One window of a stream: log-mel frames (B, N, n_mels), N = ``window_frames``: the
    ``chunk_frames`` the window advances plus the look-ahead (zeros past ``num_frames`` at the end),
    and the state after the previous window -> the chunk's log-probs (B, chunk_steps, V) and the
    next state. State: ``h`` (and ``c`` for LSTMs) (num_layers, B, H), the forward direction's;
    ``mean_sum`` (B, n_mels) float64 and ``frame_count`` (B,) for causal normalisation; all zeros
    at the start. The window's frames are the whole-file log-mel (``LogMel``: Slaney mel filters
    of a centred, Hann-windowed STFT; the ``features`` metadata), before any normalisation:
    the step normalises them. Window after window it computes what the model computes over the
    whole utterance (tests/test_streaming.py). In the last window only the first
    ceil(min(num_frames, chunk_frames) / subsampling_factor) output steps are the utterance's."""

    def __init__(self, recognizer: SpeechRecognizer) -> None:
        super().__init__()
        config = recognizer.config.model
        if config.subsampling != "stack":
            raise ExportError("the streaming step is exported for stacked-frame subsampling (model.subsampling=stack); "
                              "conv blocks need frames of context from the previous window")
        self.frontend = recognizer.frontend
        self.model = recognizer.model
        self.chunked = config.direction == "latency_controlled"
        self.chunk_steps = config.chunk_steps
        self.right_steps = config.right_steps if self.chunked else 0
        self.factor = config.subsampling_factor
        self.lstm = config.cell == "lstm"

    @property
    def chunk_frames(self) -> int:
        return self.chunk_steps * self.factor

    @property
    def window_frames(self) -> int:
        return (self.chunk_steps + self.right_steps) * self.factor

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor, mean_sum: torch.Tensor,
                frame_count: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.frontend.mean_removal == "causal":  # the mean of the stream's frames up to each one
            frames, sums = remove_running_mean(frames, mean_sum, frame_count)  # (B, N, n_mels) each
            mean_sum = sums[:, self.chunk_frames - 1]  # (B, n_mels): through the chunk, not the look-ahead
        frame_count = frame_count + self.chunk_frames
        features = self.frontend.normalizer(frames)
        steps, step_lengths = self.model.subsampler(features, num_frames)  # (B, N / factor, D); zeros past the end
        states = [(h[i:i + 1], c[i:i + 1]) if self.lstm else h[i:i + 1] for i in range(len(self.model.layers))]
        log_probs, next_states = self.model.forward_window(steps, step_lengths, states)  # (B, chunk, V)
        if self.lstm:
            next_h = torch.cat([s[0] for s in next_states])  # (num_layers, B, H): the layers' (1, B, H) stacked
            next_c = torch.cat([s[1] for s in next_states])  # (num_layers, B, H)
            return log_probs, mean_sum, frame_count, next_h, next_c
        return log_probs, mean_sum, frame_count, torch.cat(next_states)  # next h: (num_layers, B, H)

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        """The inputs after ``frames`` and ``num_frames`` at the start of a stream."""
        config = self.model.config
        n_mels = self.frontend.normalizer.mean.shape[0]
        zeros = torch.zeros(config.num_layers, batch, config.hidden_size)
        return [torch.zeros(batch, n_mels, dtype=torch.float64), torch.zeros(batch, dtype=torch.int64), zeros] + \
            ([zeros.clone()] if self.lstm else [])


def _whole_utterance(recognizer: SpeechRecognizer, checkpoint: str | Path) -> SpeechRecognizer:
    if recognizer.config.model.direction == "latency_controlled":
        # Its chunk count is Python arithmetic on the length, which tracing would freeze to the example's.
        raise ExportError(f"{checkpoint}: a latency-controlled model is exported as its ONNX streaming step "
                          "(asr export MODEL step.onnx); whole-utterance export covers bidirectional and "
                          "unidirectional models")
    return recognizer


def _network(checkpoint: str | Path) -> SpeechRecognizer:
    return load_model(checkpoint, decoding=DecodingSettings())  # the network alone: no LM to load


@dataclass(frozen=True)
class ExportedModel:
    path: Path  # the file written
    format: str  # onnx or torchscript
    streaming: bool  # the streaming step (StreamingStep), else the whole-utterance graph (WaveformToLogProbs)


def export_model(checkpoint: str | Path, out: str | Path, format: str | None = None,
                 streaming: bool = False) -> ExportedModel:
    """Export ``checkpoint`` the way its kind allows (``asr export``): the ONNX streaming step when
    ``streaming`` is asked for or the model is latency-controlled and ONNX is wanted, else the
    whole-utterance graph; ``format`` None: ONNX for a ``.onnx`` file, else TorchScript."""
    fmt = format or ("onnx" if str(out).endswith(".onnx") else "torchscript")
    recognizer = _network(checkpoint)
    if streaming or (fmt == "onnx" and recognizer.config.model.direction == "latency_controlled"):
        if fmt != "onnx":
            raise ExportError("the streaming step is exported as ONNX (an .onnx file or --format onnx)")
        return ExportedModel(_write_streaming_onnx(recognizer, checkpoint, out), fmt, True)
    _whole_utterance(recognizer, checkpoint)
    path = _write_onnx(recognizer, out) if fmt == "onnx" else _write_torchscript(recognizer, out)
    return ExportedModel(path, fmt, False)


def export_streaming_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write a streaming model's :class:`StreamingStep` as ONNX, with what a runtime needs in
    its metadata: vocabulary, config, ``streaming_chunk_frames`` (frames a window advances),
    ``streaming_window_frames`` (frames it reads), ``subsampling_factor`` and ``seconds_per_step``."""
    return _write_streaming_onnx(_network(checkpoint), checkpoint, out, opset)


def _write_streaming_onnx(recognizer: SpeechRecognizer, checkpoint: str | Path, out: str | Path,
                          opset: int = 17) -> Path:
    import onnx

    if recognizer.streaming_problem:
        raise ExportError(f"{checkpoint}: {recognizer.streaming_problem}")
    step = StreamingStep(recognizer).eval()
    n_mels = recognizer.config.features.n_mels
    example = (torch.randn(1, step.window_frames, n_mels) - 5.0, torch.tensor([step.window_frames]),
               *step.initial_state())
    names = ["frames", "num_frames", "mean_sum", "frame_count", "h"] + (["c"] if step.lstm else [])
    outputs = ["log_probs", "next_mean_sum", "next_frame_count", "next_h"] + (["next_c"] if step.lstm else [])
    batch_axes = {"frames": {0: "batch"}, "num_frames": {0: "batch"}, "mean_sum": {0: "batch"},
                  "frame_count": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}, "log_probs": {0: "batch"},
                  "next_mean_sum": {0: "batch"}, "next_frame_count": {0: "batch"}, "next_h": {1: "batch"},
                  "next_c": {1: "batch"}}
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, example, str(tmp), opset_version=opset, dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes={k: v for k, v in batch_axes.items() if k in names + outputs})
        model = onnx.load(str(tmp))
        metadata = _metadata(recognizer) | {"streaming_chunk_frames": str(step.chunk_frames),
                                            "streaming_window_frames": str(step.window_frames),
                                            "subsampling_factor": str(step.factor)}
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
    return out


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
    return _write_torchscript(_whole_utterance(_network(checkpoint), checkpoint), out)


def _write_torchscript(recognizer: SpeechRecognizer, out: str | Path) -> Path:
    module = WaveformToLogProbs(recognizer).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes are traced symbolically (tested)
        traced = torch.jit.trace(module, _example(recognizer), check_trace=False)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={f"{k}.json": v for k, v in _metadata(recognizer).items()})
    return out


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    return _write_onnx(_whole_utterance(_network(checkpoint), checkpoint), out, opset)


def _write_onnx(recognizer: SpeechRecognizer, out: str | Path, opset: int = 17) -> Path:
    import onnx

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
