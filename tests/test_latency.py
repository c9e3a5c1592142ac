"""Latency-controlled and unidirectional models (asr/model/network.py): what each output step may
depend on, chunk-by-chunk streaming equal to the whole pass, and training through them."""

from __future__ import annotations

import pytest
import torch

from asr.config import ConfigError, ModelConfig
from asr.inspect.gates import GatesUnavailableError, check_lstm_model
from asr.model.network import AcousticModel, chunk_windows

N_MELS = 10


def model_for(direction: str, cell: str = "lstm", subsampling: str = "stack", **extra) -> AcousticModel:
    torch.manual_seed(0)
    config = ModelConfig(num_layers=3, hidden_size=16, direction=direction, chunk_steps=4, right_steps=2,
                         dropout=0.0, cell=cell, subsampling=subsampling, layer_norm=True, **extra)
    return AcousticModel(config, N_MELS, 29).eval()


def step_outputs(model: AcousticModel, features: torch.Tensor) -> torch.Tensor:
    log_probs, _ = model(features[None], torch.tensor([len(features)]))
    return log_probs[0]  # (T', V)


@pytest.mark.parametrize("direction, subsampling", [("latency_controlled", "stack"), ("unidirectional", "stack"),
                                                     ("latency_controlled", "conv"), ("unidirectional", "conv")])
def test_no_step_depends_on_frames_past_its_lookahead(direction: str, subsampling: str) -> None:
    """Change the features from frame f on: every step whose look-ahead ends before f keeps its
    output exactly, and the step whose look-ahead just reaches f changes (the look-ahead is used)."""
    model = model_for(direction, subsampling=subsampling)
    config = model.config
    factor, lookahead = config.subsampling_factor, config.lookahead_frames()
    features = torch.randn(60, N_MELS)
    reference = step_outputs(model, features)

    def last_frame_read(step: int) -> int:  # counted from the first frame of the step's chunk (or its own)
        first = (step // config.chunk_steps * config.chunk_steps if direction == "latency_controlled" else step) * factor
        return first + lookahead

    reads = [last_frame_read(j) for j in range(len(reference))]
    cuts = sorted({frame for frame in reads if frame < len(features)} | {7, 20})
    assert len(cuts) >= 4
    for cut in cuts:
        changed = features.clone()
        changed[cut:] += torch.randn_like(changed[cut:])
        outputs = step_outputs(model, changed)
        difference = (outputs - reference).abs().amax(dim=1)  # (T',)
        steps = torch.arange(len(reference))
        unaffected = torch.tensor([last_frame_read(int(j)) < cut for j in steps])
        assert (difference[unaffected] == 0).all(), (cut, difference)
        reaching = [int(j) for j in steps if last_frame_read(int(j)) == cut]
        assert all(difference[j] > 0 for j in reaching), (cut, reaching, difference)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunk_by_chunk_equals_the_whole_pass(cell: str) -> None:
    model = model_for("latency_controlled", cell=cell)
    features = torch.randn(2, 71, N_MELS)
    lengths = torch.tensor([71, 50])
    whole, output_lengths = model(features, lengths)
    steps, step_lengths = model.subsampler(features, lengths)  # (B, T', D)
    windows, window_lengths = chunk_windows(steps, step_lengths, 4, 2)  # (B, K, 6, D)
    states, pieces = None, []
    for k in range(windows.shape[1]):  # a stream: one window at a time, states carried
        log_probs, states = model.forward_window(windows[:, k], window_lengths[:, k], states)
        pieces.append(log_probs)
    streamed = torch.cat(pieces, dim=1)[:, : whole.shape[1]]  # (B, T', V)
    for b, length in enumerate(output_lengths.tolist()):
        torch.testing.assert_close(streamed[b, :length], whole[b, :length], rtol=0, atol=1e-6)


def test_batches_equal_single_utterances() -> None:
    for direction in ("latency_controlled", "unidirectional"):
        model = model_for(direction, phone_ctc_weight=0.3)
        features, lengths = torch.randn(3, 50, N_MELS), torch.tensor([50, 37, 11])
        batch, output_lengths, phones = model(features, lengths, with_phones=True)
        assert phones.shape[:2] == batch.shape[:2]
        for b in range(3):
            alone, _ = model(features[b:b + 1, : lengths[b]], lengths[b:b + 1])
            length = int(output_lengths[b])
            torch.testing.assert_close(alone[0, :length], batch[b, :length], rtol=0, atol=1e-5)


def test_lookahead_in_frames() -> None:
    assert ModelConfig(direction="unidirectional", subsampling_factor=3).lookahead_frames() == 2
    assert ModelConfig(direction="latency_controlled", subsampling_factor=3, chunk_steps=20,
                       right_steps=10).lookahead_frames() == 2 + 29 * 3  # 0.89 s for the chunk's first frame
    assert ModelConfig(direction="unidirectional", subsampling="conv", subsampling_factor=4,
                       conv_layers=2).lookahead_frames() == 1 + 2
    with pytest.raises(ValueError, match="whole utterance"):
        ModelConfig().lookahead_frames()
    with pytest.raises(ConfigError, match="packed"):
        ModelConfig(direction="latency_controlled", rnn_input="packed")
    with pytest.raises(ConfigError, match="chunk_steps"):
        ModelConfig(direction="latency_controlled", chunk_steps=0)


def test_gates_are_refused_for_chunked_models() -> None:
    with pytest.raises(GatesUnavailableError, match="latency-controlled"):
        check_lstm_model(model_for("latency_controlled"))


@pytest.mark.parametrize("direction", ["latency_controlled", "unidirectional"])
def test_training_and_transcription_work(direction: str, tone_corpus, tmp_path) -> None:
    from asr.training.loop import train
    from asr.inference.recognizer import load_model
    from tests.conftest import tiny_config

    config = tiny_config(tmp_path / "run", tone_corpus, train={"epochs": 2},
                         model={"direction": direction, "chunk_steps": 8, "right_steps": 4, "weight_dropout": 0.2})
    train(config)
    recognizer = load_model(tmp_path / "run" / "best.pt")
    assert recognizer.config.model.direction == direction
    audio = sorted((tone_corpus["root"] / "valid").glob("*.flac"))
    assert all(result.ok for result in recognizer.transcribe(audio))


def test_export_refuses_chunked_models_and_traces_unidirectional(tone_corpus, tmp_path) -> None:
    from asr.deploy.export import ExportError, export_torchscript
    from asr.training.loop import train
    from asr.inference.recognizer import load_model
    from tests.conftest import tiny_config

    for direction in ("latency_controlled", "unidirectional"):
        train(tiny_config(tmp_path / direction, tone_corpus, train={"epochs": 1, "max_steps": 1},
                          model={"direction": direction}))
    with pytest.raises(ExportError, match="streaming step"):
        export_torchscript(tmp_path / "latency_controlled" / "last.pt", tmp_path / "lc.ts")
    checkpoint = tmp_path / "unidirectional" / "last.pt"
    traced = torch.jit.load(str(export_torchscript(checkpoint, tmp_path / "uni.ts")))
    recognizer = load_model(checkpoint)
    waveforms, lengths = torch.randn(2, 24000) * 0.1, torch.tensor([24000, 17000])
    waveforms[1, 17000:] = 0  # padding, as a batch of two files has
    expected, expected_lengths = recognizer.emissions([waveforms[0], waveforms[1, :17000]])
    log_probs, output_lengths = traced(waveforms, lengths)
    assert output_lengths.tolist() == expected_lengths.tolist()
    for b, length in enumerate(output_lengths.tolist()):
        torch.testing.assert_close(log_probs[b, :length], expected[b, :length], rtol=0, atol=1e-4)
