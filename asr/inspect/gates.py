"""Look inside the network: the LSTM's gates and cell state over one utterance.

The trained weights are run step by step through the LSTM equations (Hochreiter &
Schmidhuber 1997, with the forget gate of Gers et al.; torch's ``nn.LSTM`` gate order i, f,
g, o), each layer fed exactly what the model feeds it, so that the gates shown are those the
model computes: the step-by-step hidden outputs reproduce ``nn.LSTM``'s to float tolerance
(tests/test_gates.py), and ``NetworkTrace.max_difference`` records the check for every run.

    >>> import asr.inspect.gates, asr.inference.recognizer
    >>> recognizer = asr.inference.recognizer.load_model("exp/run/best.pt")
    >>> trace = asr.inspect.gates.trace_file(recognizer, "a.wav")
    >>> asr.inspect.gates.write_json(trace, "out/inspect.json")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asr.utils.atomic import atomic_write, json_safe
from asr.data.audio import read_audio
from asr.decoding.greedy import GreedyDecoder
from asr.decoding.hypothesis import WordSpan
from asr.errors import AsrError
from asr.model.network import AcousticModel, BidirectionalRNN
from asr.inference.recognizer import SpeechRecognizer

# Longer files make arrays (and figures) too large to read; the BiLSTM sees a window of this
# order anyway (asr.inference.windows.LONG_AUDIO_SECONDS).
MAX_INSPECT_SECONDS = 30.0
DIRECTIONS = ("forward", "backward")


class GatesUnavailableError(AsrError):
    """The model has no LSTM gates to show (GRU/RNN cells, or quantised weights)."""


class TooLongToInspectError(AsrError):
    """The audio is longer than inspect shows."""


@dataclass(frozen=True)
class LstmSteps:
    """One unidirectional LSTM run step by step; every array is (T, H), in the order the
    cell read its input."""

    input_gate: np.ndarray  # i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi): how much of g_t enters the cell
    forget_gate: np.ndarray  # f_t = sigmoid(...): how much of c_{t-1} is kept
    cell_candidate: np.ndarray  # g_t = tanh(...): the new content offered to the cell
    output_gate: np.ndarray  # o_t = sigmoid(...): how much of tanh(c_t) is shown as h_t
    cell_state: np.ndarray  # c_t = f_t * c_{t-1} + i_t * g_t
    hidden: np.ndarray  # h_t = o_t * tanh(c_t): the layer's output for this direction


@dataclass(frozen=True)
class DirectionTrace:
    """One direction of one layer, every array (T', H) in the utterance's time order (the
    backward direction is flipped back, so that row t is output step t for both)."""

    layer: int  # 1 for the layer above the subsampler
    direction: str  # "forward" or "backward"
    steps: LstmSteps  # gates, cell state and hidden output


@dataclass(frozen=True)
class NetworkTrace:
    """What the network computed for one utterance."""

    path: str  # the audio file ("" for a waveform given directly)
    duration: float  # seconds of audio
    frame_seconds: float  # hop of the log-mel frames
    step_seconds: float  # one output step: hop times the subsampling factor
    log_mel: np.ndarray  # (T, n_mels) normalised log-mel features: the network's input
    layers: tuple[DirectionTrace, ...]  # layer 1 forward, layer 1 backward, layer 2 forward, ...
    log_probs: np.ndarray  # (T', V) CTC log-posteriors from the step-by-step pass
    vocabulary: tuple[str, ...]  # label of each of the V columns (0: the CTC blank)
    greedy_path: np.ndarray  # (T',) argmax label per output step
    transcript: str  # the greedy decoder's text
    words: tuple[WordSpan, ...]  # the greedy hypothesis's words, in output steps [start, end)
    max_difference: float  # max |log_probs - the model's own emissions|: float rounding only


def lstm_steps(lstm: nn.LSTM, x: torch.Tensor) -> LstmSteps:
    """Run a single-layer unidirectional batch-first ``nn.LSTM``'s weights step by step over
    one sequence ``x`` (T, input_size), from zero initial states."""
    if not isinstance(lstm, nn.LSTM) or lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise GatesUnavailableError("step-by-step gates need a one-layer unidirectional nn.LSTM without projection")
    weight_ih = getattr(lstm, "weight_ih_l0", None)
    if not isinstance(weight_ih, torch.Tensor):  # dynamically quantised: packed weights only
        raise GatesUnavailableError("the LSTM's weights are quantised (int8); load the model in fp32 to see its gates")
    hidden_size = lstm.hidden_size
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0) if lstm.bias else 0.0
    with torch.no_grad():
        projected = x.float() @ weight_ih.float().T + bias  # (T, 4H): the input's part of all gates at once
        weight_hh = lstm.weight_hh_l0.float()
        h = x.new_zeros(hidden_size, dtype=torch.float32)
        c = x.new_zeros(hidden_size, dtype=torch.float32)
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in ("i", "f", "g", "o", "c", "h")}
        for t in range(x.shape[0]):
            pre = projected[t] + weight_hh @ h  # (4H,), in torch's gate order i, f, g, o
            i, f, g, o = pre.split(hidden_size)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            for name, value in zip("ifgoch", (i, f, g, o, c, h)):
                rows[name].append(value)

    def stacked(name: str) -> np.ndarray:
        if not rows[name]:
            return np.zeros((0, hidden_size), dtype=np.float32)
        return torch.stack(rows[name]).cpu().numpy()  # (T, H)

    return LstmSteps(stacked("i"), stacked("f"), stacked("g"), stacked("o"), stacked("c"), stacked("h"))


def _flipped(steps: LstmSteps) -> LstmSteps:
    return LstmSteps(*(np.ascontiguousarray(a[::-1]) for a in (
        steps.input_gate, steps.forget_gate, steps.cell_candidate, steps.output_gate, steps.cell_state, steps.hidden)))


def check_lstm_model(model: AcousticModel) -> None:
    """Raise :class:`GatesUnavailableError` unless every layer is a float LSTM."""
    cell = model.config.cell
    if cell != "lstm":
        raise GatesUnavailableError(
            f"input, forget and output gates exist in LSTM layers only; this model's layers are {cell.upper()} cells")
    if model.config.direction != "bidirectional":  # the trace runs each layer over the whole utterance
        raise GatesUnavailableError(
            f"gates are traced for bidirectional models; this one is {model.config.direction.replace('_', '-')}")
    for layer in model.layers:
        for rnn in (layer.forward_rnn, layer.backward_rnn):
            if not isinstance(getattr(rnn, "weight_ih_l0", None), torch.Tensor):
                raise GatesUnavailableError(
                    "the LSTM's weights are quantised (int8); load the model with precision fp32 to see its gates")


def layer_steps(layer: BidirectionalRNN, x: torch.Tensor) -> tuple[LstmSteps, LstmSteps, torch.Tensor]:
    """Both directions of one layer over one sequence x (T, D): (forward, backward, output
    (T, 2H)). The backward cell reads the sequence reversed, as BidirectionalRNN feeds it."""
    forward = lstm_steps(layer.forward_rnn, x)
    backward = _flipped(lstm_steps(layer.backward_rnn, x.flip(0)))  # back in time order
    output = torch.from_numpy(np.concatenate([forward.hidden, backward.hidden], axis=1)).to(x.device)  # (T, 2H)
    return forward, backward, output


@torch.no_grad()
def trace_waveform(recognizer: SpeechRecognizer, waveform: torch.Tensor, path: str = "") -> NetworkTrace:
    """The network's inside for one mono waveform at the recognizer's sample rate."""
    model = recognizer.model
    check_lstm_model(model)
    device = recognizer.device
    lengths = torch.tensor([len(waveform)], device=device)
    features, frame_lengths = recognizer.frontend(waveform[None].to(device), lengths)  # (1, T, n_mels)
    x, step_lengths = model.subsampler(features, frame_lengths)  # (1, T', D)
    x = x[0, : int(step_lengths[0])].float()  # (T', D): one utterance, no padding
    layers: list[DirectionTrace] = []
    for number, (layer, norm) in enumerate(zip(model.layers, model.norms), start=1):
        forward, backward, output = layer_steps(layer, x)
        layers += [DirectionTrace(number, "forward", forward), DirectionTrace(number, "backward", backward)]
        x = norm(output)  # (T', 2H); dropout is the identity at inference
    log_probs = model.output(x).float().log_softmax(dim=-1).cpu().numpy()  # (T', V)
    # The model's own pass (fp32, as the trace): the difference is float rounding only.
    reference, _ = model(features, frame_lengths)
    max_difference = float((reference[0, : len(log_probs)].float().cpu() - torch.from_numpy(log_probs)).abs().max()) \
        if len(log_probs) else 0.0
    hypothesis = GreedyDecoder(recognizer.vocabulary).decode_matrix(log_probs)[0]
    features_config = recognizer.config.features
    return NetworkTrace(
        path=path,
        duration=len(waveform) / recognizer.sample_rate,
        frame_seconds=features_config.hop_length / features_config.sample_rate,
        step_seconds=recognizer.seconds_per_step,
        log_mel=features[0, : int(frame_lengths[0])].float().cpu().numpy(),
        layers=tuple(layers),
        log_probs=log_probs,
        vocabulary=tuple(recognizer.vocabulary.tokens),
        greedy_path=log_probs.argmax(axis=1),
        transcript=hypothesis.text,
        words=hypothesis.words,
        max_difference=max_difference,
    )


def trace_file(recognizer: SpeechRecognizer, path: str | Path,
               max_seconds: float = MAX_INSPECT_SECONDS) -> NetworkTrace:
    """:func:`trace_waveform` of an audio file; raises AudioError (naming the file) for
    unreadable audio and TooLongToInspectError for files longer than ``max_seconds``."""
    check_lstm_model(recognizer.model)  # before reading the audio: the cheaper refusal first
    audio = read_audio(path, recognizer.sample_rate)
    duration = len(audio.samples) / recognizer.sample_rate
    if duration > max_seconds:
        raise TooLongToInspectError(f"{path}: {duration:.1f} s of audio; inspect shows at most {max_seconds:g} s "
                       "(cut out the part to look at)")
    return trace_waveform(recognizer, torch.from_numpy(audio.samples), str(path))


def _array(values: np.ndarray) -> list:
    return np.round(values.astype(np.float64), 5).tolist()  # 5 decimals: plenty for a picture, 3x smaller


def trace_record(trace: NetworkTrace) -> dict:
    """The trace as JSON-ready data: arrays as nested lists, with their shapes."""
    layers = []
    for entry in trace.layers:
        arrays = {name: getattr(entry.steps, name) for name in (
            "input_gate", "forget_gate", "cell_candidate", "output_gate", "cell_state", "hidden")}
        layers.append({
            "layer": entry.layer,
            "direction": entry.direction,
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
            **{name: _array(a) for name, a in arrays.items()},
        })
    return json_safe({
        "path": trace.path,
        "duration_seconds": trace.duration,
        "frame_seconds": trace.frame_seconds,
        "step_seconds": trace.step_seconds,
        "vocabulary": list(trace.vocabulary),
        "transcript": trace.transcript,
        "words": [{"word": w.word, "start_step": w.start, "end_step": w.end,
                   "start": w.start * trace.step_seconds, "end": w.end * trace.step_seconds,
                   "confidence": w.confidence} for w in trace.words],
        "max_difference_from_model": trace.max_difference,
        "shapes": {"log_mel": list(trace.log_mel.shape), "log_probs": list(trace.log_probs.shape),
                   "greedy_path": list(trace.greedy_path.shape)},
        "log_mel": _array(trace.log_mel),
        "log_probs": _array(trace.log_probs),
        "greedy_path": trace.greedy_path.tolist(),
        "layers": layers,
    })


def write_json(trace: NetworkTrace, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path) as out:
        json.dump(trace_record(trace), out, ensure_ascii=False)
    return path
