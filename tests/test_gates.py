"""asr inspect: the step-by-step LSTM reproduces the model; JSON, figures, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from asr.data.audio import load_audio
from asr.cli import main
from asr.config import ExperimentConfig
from asr.model.features import FeatureFrontend
from asr.inspect.gates import (
    GatesUnavailableError,
    TooLongToInspectError,
    lstm_steps,
    trace_file,
    trace_record,
    trace_waveform,
    write_json,
)
from asr.model.network import AcousticModel
from asr.data.text import CharVocabulary
from asr.inference.recognizer import SpeechRecognizer, load_model


def first_wav(tone_corpus: dict[str, Path]) -> Path:
    return sorted((tone_corpus["root"] / "train").glob("*.flac"))[4]  # "cede a bee": three words


def test_equations_reproduce_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True)
    with torch.no_grad():  # biases big enough that a wrong gate order or a missing bias would show
        lstm.bias_ih_l0.uniform_(-1, 1)
        lstm.bias_hh_l0.uniform_(-1, 1)
    x = torch.randn(23, 5)
    expected, (h_n, c_n) = lstm(x[None])
    steps = lstm_steps(lstm, x)
    np.testing.assert_allclose(steps.hidden, expected[0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(steps.hidden[-1], h_n[0, 0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(steps.cell_state[-1], c_n[0, 0].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(steps.hidden, steps.output_gate * np.tanh(steps.cell_state), atol=1e-6)
    for gate in (steps.input_gate, steps.forget_gate, steps.output_gate):
        assert gate.shape == (23, 7) and gate.min() > 0 and gate.max() < 1
    assert np.abs(steps.cell_candidate).max() < 1


def test_trace_reproduces_the_trained_model(trained_checkpoint: Path, tone_corpus: dict[str, Path]) -> None:
    recognizer = load_model(trained_checkpoint)
    model = recognizer.model
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per direction: input, output
    hooks = [rnn.register_forward_hook(lambda module, inputs, output: captured.append((inputs[0], output[0])))
             for layer in model.layers for rnn in (layer.forward_rnn, layer.backward_rnn)]
    waveform = torch.from_numpy(load_audio(first_wav(tone_corpus)))
    try:
        trace = trace_waveform(recognizer, waveform)
    finally:
        for hook in hooks:
            hook.remove()
    layers = recognizer.config.model.num_layers
    assert len(trace.layers) == 2 * layers
    assert [(e.layer, e.direction) for e in trace.layers] == [
        (n, d) for n in range(1, layers + 1) for d in ("forward", "backward")]
    # The model's own pass inside trace_waveform ran each direction's nn.LSTM once, in layer order.
    assert len(captured) == 2 * layers
    steps_count = trace.log_probs.shape[0]
    for entry, (_, output) in zip(trace.layers, captured):
        real = output[0, :steps_count].numpy()  # (T', H), in the order the cell read
        mine = entry.steps.hidden if entry.direction == "forward" else entry.steps.hidden[::-1]
        np.testing.assert_allclose(mine, real, atol=1e-5)
        assert real.std() > 1e-3  # a trained layer that says something
    emissions, lengths = recognizer.emissions([waveform])
    np.testing.assert_allclose(trace.log_probs, emissions[0, : int(lengths[0])].numpy(), atol=1e-4)
    assert trace.max_difference < 1e-4
    assert trace.log_mel.shape[1] == recognizer.config.features.n_mels
    np.testing.assert_array_equal(trace.greedy_path, trace.log_probs.argmax(axis=1))
    assert trace.transcript == recognizer.decoder.decode_matrix(emissions[0, : int(lengths[0])].numpy())[0].text
    assert trace.step_seconds == pytest.approx(recognizer.seconds_per_step)


def test_json_record(trained_checkpoint: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    recognizer = load_model(trained_checkpoint)
    trace = trace_file(recognizer, first_wav(tone_corpus))
    path = write_json(trace, tmp_path / "out" / "inspect.json")
    record = json.loads(path.read_text())
    assert record == json.loads(json.dumps(trace_record(trace)))
    steps, vocab = record["shapes"]["log_probs"]
    assert vocab == len(record["vocabulary"]) == len(recognizer.vocabulary)
    assert np.array(record["log_probs"]).shape == (steps, vocab)
    assert np.array(record["log_mel"]).shape == tuple(record["shapes"]["log_mel"])
    assert len(record["greedy_path"]) == steps
    assert record["step_seconds"] == pytest.approx(recognizer.seconds_per_step)
    assert record["transcript"] == " ".join(w["word"] for w in record["words"])
    for word in record["words"]:
        assert 0 <= word["start_step"] < word["end_step"] <= steps
        assert word["start"] == pytest.approx(word["start_step"] * record["step_seconds"])
    hidden = recognizer.config.model.hidden_size
    for layer in record["layers"]:
        for name in ("input_gate", "forget_gate", "cell_candidate", "output_gate", "cell_state", "hidden"):
            assert layer["shapes"][name] == [steps, hidden]
            assert np.array(layer[name]).shape == (steps, hidden)


def test_figures(trained_checkpoint: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from asr.inspect.figures import write_figures

    trace = trace_file(load_model(trained_checkpoint), first_wav(tone_corpus))
    written = write_figures(trace, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(["log_mel.png", "posteriorgram.png", "layer1_forward.png", "layer1_backward.png",
                            "layer2_forward.png", "layer2_backward.png"])
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def tiny_recognizer(cell: str) -> SpeechRecognizer:
    config = ExperimentConfig()
    config = replace(config, model=replace(config.model, cell=cell, num_layers=1, hidden_size=8))
    vocabulary = CharVocabulary.english()
    model = AcousticModel(config.model, config.features.n_mels, len(vocabulary))
    return SpeechRecognizer(config, vocabulary, FeatureFrontend(config.features), model, torch.device("cpu"))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_rnn_are_refused(cell: str) -> None:
    with pytest.raises(GatesUnavailableError, match="LSTM layers only.*" + cell.upper()):
        trace_waveform(tiny_recognizer(cell), torch.zeros(16000))


def test_untrained_lstm_recognizer_traces() -> None:
    trace = trace_waveform(tiny_recognizer("lstm"), torch.randn(16000) * 0.1)
    assert trace.max_difference < 1e-4 and len(trace.layers) == 2


def test_int8_is_refused(trained_checkpoint: Path) -> None:
    if "qnnpack" not in torch.backends.quantized.supported_engines and \
            "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("no quantised engine in this torch build")
    recognizer = load_model(trained_checkpoint, precision="int8")
    with pytest.raises(GatesUnavailableError, match="fp32"):
        trace_waveform(recognizer, torch.zeros(16000))


def test_cli_end_to_end(trained_checkpoint: Path, tone_corpus: dict[str, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "inspect"
    assert main(["inspect", str(trained_checkpoint), str(first_wav(tone_corpus)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        ["inspect.json", "log_mel.png", "posteriorgram.png", "layer1_forward.png", "layer1_backward.png",
         "layer2_forward.png", "layer2_backward.png"])
    assert all(Path(p).stat().st_size > 0 for p in printed)
    assert json.loads((out / "inspect.json").read_text())["layers"]


def test_cli_bad_audio(trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    assert main(["inspect", str(trained_checkpoint), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "o" / "inspect.json").exists()


def test_too_long_is_refused(trained_checkpoint: Path, tone_corpus: dict[str, Path]) -> None:
    with pytest.raises(TooLongToInspectError, match="at most 0.5 s"):
        trace_file(load_model(trained_checkpoint), first_wav(tone_corpus), max_seconds=0.5)
