"""Streaming recognition (asr/inference/streaming.py): incremental features equal the whole file's, and
a stream fed in pieces of any size gives the model's own whole-utterance emissions and result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.config import ExperimentConfig, FeatureConfig, ModelConfig
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.inference.streaming import StreamingError, StreamingFeatures
from asr.data.text import CharVocabulary
from asr.inference.recognizer import SpeechRecognizer
from tests.conftest import tone_audio

RATE = 16_000


def random_pieces(samples: np.ndarray, seed: int) -> list[np.ndarray]:
    """Cut samples at random places, with empty and one-sample pieces among them."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(samples), size=12))
    cuts = np.concatenate([cuts, cuts[:2], cuts[:2] + 1])  # repeated cuts give empty pieces, +1 one-sample ones
    return np.split(samples, np.sort(np.clip(cuts, 0, len(samples))))


def frontend_for(normalization: str, n_mels: int = 20) -> FeatureFrontend:
    frontend = FeatureFrontend(FeatureConfig(n_mels=n_mels, normalization=normalization)).eval()
    generator = torch.Generator().manual_seed(1)
    frontend.normalizer.mean.copy_(torch.randn(n_mels, generator=generator))
    frontend.normalizer.std.copy_(torch.rand(n_mels, generator=generator) + 0.5)
    return frontend


@pytest.mark.parametrize("normalization", ["global", "causal"])
@pytest.mark.parametrize("seed", [0, 1])
def test_features_in_pieces_equal_the_whole_file(normalization: str, seed: int) -> None:
    frontend = frontend_for(normalization)
    audio = tone_audio("bad cab", seed=seed)[: 12345 + seed * 77]
    whole, lengths = frontend(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    stream = StreamingFeatures(frontend)
    frames = [stream.accept(torch.from_numpy(piece)) for piece in random_pieces(audio, seed)] + [stream.finish()]
    streamed = torch.cat(frames)
    assert len(streamed) == int(lengths[0]) == whole.shape[1]
    torch.testing.assert_close(streamed, whole[0], rtol=0, atol=2e-5)


def test_causal_mean_is_the_mean_so_far() -> None:
    from asr.model.features import subtract_running_mean

    features = torch.tensor([[[1.0], [3.0], [5.0], [100.0]]])  # (1, 4, 1), the last frame is padding
    result = subtract_running_mean(features, torch.tensor([3]))
    assert result[0, :, 0].tolist() == [0.0, 1.0, 2.0, 0.0]  # 1-1, 3-2, 5-3; padding stays zero


def test_utterance_normalisation_cannot_stream() -> None:
    with pytest.raises(StreamingError, match="normalization=utterance"):
        StreamingFeatures(frontend_for("utterance"))


def recognizer_for(direction: str, subsampling: str = "stack", cell: str = "lstm", factor: int = 3,
                   chunk: int = 4, right: int = 2) -> SpeechRecognizer:
    torch.manual_seed(0)
    vocabulary = CharVocabulary.english()
    model_config = ModelConfig(num_layers=2, hidden_size=16, direction=direction, chunk_steps=chunk,
                               right_steps=right, dropout=0.0, cell=cell, subsampling=subsampling,
                               subsampling_factor=factor, layer_norm=True, conv_channels=4)
    config = ExperimentConfig(features=FeatureConfig(n_mels=20, normalization="causal"), model=model_config)
    model = AcousticModel(model_config, 20, len(vocabulary)).eval()
    with torch.no_grad():  # a random model mostly says blank; push the letters up so that there are words
        model.output.bias[vocabulary.blank_id] -= 3.0
        if subsampling == "conv":
            for block in model.subsampler.blocks:  # non-trivial BatchNorm statistics
                block[1].running_mean.uniform_(-0.5, 0.5)
                block[1].running_var.uniform_(0.5, 2.0)
    return SpeechRecognizer(config, vocabulary, frontend_for("causal"), model, torch.device("cpu"))


CASES = [("latency_controlled", "stack", "lstm", 3), ("latency_controlled", "conv", "lstm", 4),
         ("latency_controlled", "stack", "gru", 2), ("unidirectional", "stack", "lstm", 3),
         ("unidirectional", "conv", "lstm", 6)]


@pytest.mark.parametrize("direction, subsampling, cell, factor", CASES)
@pytest.mark.parametrize("seed", [0, 3])
def test_stream_equals_the_whole_utterance_pass(direction: str, subsampling: str, cell: str, factor: int,
                                                seed: int) -> None:
    recognizer = recognizer_for(direction, subsampling, cell, factor)
    audio = tone_audio("bed deed ace", seed=seed)[: 30000 + 1111 * seed]
    expected = recognizer.emissions([torch.from_numpy(audio)])[0][0].numpy()  # (T', V): the whole pass
    whole = recognizer.transcribe_samples(audio)
    stream = recognizer.stream()
    partials = [stream.accept(piece) for piece in random_pieces(audio, seed)]
    result = stream.finish()
    assert result.log_probs.shape == expected.shape
    np.testing.assert_allclose(result.log_probs, expected, rtol=0, atol=2e-4)
    assert result.transcription.text == whole.text and result.transcription.text
    assert result.transcription.words == whole.words
    # Each partial extends the one before, and the final greedy text extends the last partial.
    texts = [p.text for p in partials] + [result.transcription.text]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert len(set(texts)) >= 3  # the text grows while the audio arrives, not only at the end


def test_words_are_emitted_after_their_audio_and_within_the_lookahead() -> None:
    recognizer = recognizer_for("latency_controlled", chunk=5, right=3)
    audio = tone_audio("bad cab ace bed", seed=2)
    piece_seconds = 0.1
    stream = recognizer.stream()
    for start in range(0, len(audio), int(piece_seconds * RATE)):
        stream.accept(audio[start: start + int(piece_seconds * RATE)])
    result = stream.finish()
    words = result.transcription.words
    assert len(words) >= 3 and len(result.emitted_at) == len(words)
    config = recognizer.config
    lookahead = config.model.lookahead_frames() * config.features.hop_length / RATE
    half_window = config.features.n_fft / 2 / RATE
    for word, emitted in zip(words, result.emitted_at):
        last_step_start = word.end - recognizer.seconds_per_step
        assert emitted >= last_step_start  # never before its audio
        assert emitted <= min(word.end + lookahead + half_window + piece_seconds, len(audio) / RATE) + 1e-3


def test_bidirectional_models_cannot_stream() -> None:
    recognizer = recognizer_for("bidirectional")
    assert not recognizer.streams
    with pytest.raises(StreamingError, match="bidirectional"):
        recognizer.stream()


def test_bad_samples_and_a_finished_stream_are_refused() -> None:
    stream = recognizer_for("unidirectional").stream("mic")
    with pytest.raises(ValueError, match="finite"):
        stream.accept(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="1-D float array"):
        stream.accept(np.zeros(100, dtype=np.int16))  # PCM must be scaled, not read as huge floats
    with pytest.raises(ValueError, match="1-D float array"):
        stream.accept(np.zeros((100, 2), dtype=np.float32))
    stream.accept(np.zeros(100, dtype=np.float64))
    stream.finish()
    for again in (lambda: stream.accept(np.zeros(10, dtype=np.float32)), stream.finish):
        with pytest.raises(StreamingError, match="mic: the stream has finished"):
            again()


def test_a_bf16_stream_equals_the_bf16_whole_pass() -> None:
    from asr.utils.precision import usable_precision

    if usable_precision("bf16", torch.device("cpu"))[1]:
        pytest.skip("this CPU cannot run a bf16 LSTM")
    recognizer = recognizer_for("latency_controlled")
    recognizer.precision = "bf16"
    audio = tone_audio("bad cab", seed=1)
    expected = recognizer.emissions([torch.from_numpy(audio)])[0][0].numpy()
    stream = recognizer.stream()
    for piece in random_pieces(audio, 2):
        stream.accept(piece)
    np.testing.assert_allclose(stream.finish().log_probs, expected, rtol=0, atol=0.1)  # bf16 rounding


def test_an_empty_stream_is_decoded_as_empty_audio_is() -> None:
    recognizer = recognizer_for("latency_controlled")
    result = recognizer.stream().finish()
    expected = recognizer.transcribe_samples(np.zeros(0, dtype=np.float32))
    assert result.transcription.ok and result.log_probs.shape[0] == 1  # one frame of centring zeros: one step
    assert (result.transcription.text, result.transcription.duration) == (expected.text, expected.duration)


@pytest.fixture(scope="module")
def streaming_checkpoint(tone_corpus, tmp_path_factory):
    """A latency-controlled model with causal normalisation, trained a few steps (accuracy irrelevant)."""
    from asr.training.loop import train
    from tests.conftest import tiny_config

    out = tmp_path_factory.mktemp("stream_model")
    train(tiny_config(out, tone_corpus, train={"epochs": 1, "max_steps": 3},
                      model={"direction": "latency_controlled", "chunk_steps": 4, "right_steps": 2},
                      features={"normalization": "causal"}))
    return out / "last.pt"


def test_cli_stream_gives_the_files_results_with_emission_delays(streaming_checkpoint, tone_corpus, capsys) -> None:
    import json

    from asr.cli import main
    from asr.inference.recognizer import load_model

    files = sorted((tone_corpus["root"] / "valid").glob("*.flac"))[:2]
    assert main(["transcribe", str(streaming_checkpoint), *map(str, files), "--stream", "--no-pace",
                 "--format", "json", "--greedy", "--piece-ms", "50"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    recognizer = load_model(streaming_checkpoint)
    expected = recognizer.transcribe(files)
    assert [r["text"] for r in records] == [e.text for e in expected]
    config = recognizer.config
    lookahead = (config.model.lookahead_frames() * config.features.hop_length + config.features.n_fft / 2) / RATE
    for record in records:
        for word in record["words"]:
            assert -recognizer.seconds_per_step <= word["emitted_after"] <= lookahead + 0.05 + 1e-3
    assert "word emission delay (audio time)" in captured.err


def test_cli_stream_paces_in_real_time_and_reports_bad_files(streaming_checkpoint, tone_corpus, tmp_path,
                                                             capsys) -> None:
    import time

    import soundfile

    from asr.cli import main

    audio = tone_audio("bad", seed=0)[: RATE // 2]  # 0.5 s
    soundfile.write(tmp_path / "short.wav", audio, RATE)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    began = time.perf_counter()
    code = main(["transcribe", str(streaming_checkpoint), str(tmp_path / "bad.wav"), str(tmp_path / "short.wav"),
                 "--stream", "--greedy"])
    assert time.perf_counter() - began >= 0.45  # fed no faster than it plays
    captured = capsys.readouterr()
    assert code == 1 and "bad.wav" in captured.err and "short.wav\t" in captured.out


def test_cli_stream_keeps_going_after_a_recognition_failure(streaming_checkpoint, tone_corpus, capsys,
                                                            monkeypatch) -> None:
    """A model error on one file (say, out of memory) fails that file; the next is streamed, and
    each file's output comes as soon as it is done."""
    import asr.inference.streaming
    from asr.cli import main

    files = [str(f) for f in sorted((tone_corpus["root"] / "valid").glob("*.flac"))[:2]]
    real = asr.inference.streaming.stream_file

    def failing_first(recognizer, path, *args, **kwargs):
        if path == files[0]:
            raise RuntimeError("out of memory")
        return real(recognizer, path, *args, **kwargs)

    monkeypatch.setattr(asr.inference.streaming, "stream_file", failing_first)
    assert main(["transcribe", str(streaming_checkpoint), *files, "--stream", "--no-pace", "--greedy"]) == 1
    captured = capsys.readouterr()
    assert f"{files[0]}: recognition failed: out of memory" in captured.err
    assert captured.out.startswith(f"{files[1]}\t")


def test_cli_stream_refuses_a_bidirectional_model(trained_checkpoint, tone_corpus, capsys) -> None:
    from asr.cli import main

    file = sorted((tone_corpus["root"] / "valid").glob("*.flac"))[0]
    assert main(["transcribe", str(trained_checkpoint), str(file), "--stream"]) == 2
    error = capsys.readouterr().err
    assert "best.pt" in error and "bidirectional" in error and "cannot stream" in error


@pytest.fixture(scope="module")
def unidirectional_checkpoint(tone_corpus, tmp_path_factory):
    from asr.training.loop import train
    from tests.conftest import tiny_config

    out = tmp_path_factory.mktemp("uni_model")
    train(tiny_config(out, tone_corpus, train={"epochs": 1, "max_steps": 2},
                      model={"direction": "unidirectional", "cell": "gru", "chunk_steps": 5},
                      features={"normalization": "global"}))
    return out / "last.pt"


@pytest.mark.parametrize("which", ["streaming_checkpoint", "unidirectional_checkpoint"])
def test_onnx_streaming_step_window_by_window_equals_the_whole_pass(which: str, request, tmp_path) -> None:
    """The exported step, run window by window by onnxruntime with its state carried, gives
    the eager model's whole-utterance emissions."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from asr.cli import main
    from asr.inference.recognizer import load_model

    checkpoint = request.getfixturevalue(which)
    out = tmp_path / "step.onnx"
    flags = ["--streaming"] if which == "unidirectional_checkpoint" else []
    assert main(["export", str(checkpoint), str(out), *flags]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    chunk_frames, window_frames = int(metadata["streaming_chunk_frames"]), int(metadata["streaming_window_frames"])
    recognizer = load_model(checkpoint)
    factor = int(metadata["subsampling_factor"])
    assert factor == recognizer.config.model.subsampling_factor
    audio = torch.from_numpy(tone_audio("bad cab dace", seed=5))
    expected = recognizer.emissions([audio])[0][0].numpy()  # (T', V)
    log_mel = recognizer.frontend.log_mel(audio[None], torch.tensor([len(audio)]))[0][0].numpy()  # (T, n_mels)
    names = [i.name for i in session.get_inputs()]
    lstm = "c" in names
    layers, hidden = recognizer.config.model.num_layers, recognizer.config.model.hidden_size
    state = [np.zeros((1, log_mel.shape[1])), np.zeros(1, dtype=np.int64), np.zeros((layers, 1, hidden), np.float32)]
    state += [np.zeros((layers, 1, hidden), np.float32)] if lstm else []
    pieces = []
    for start in range(0, len(log_mel), chunk_frames):
        window = log_mel[start: start + window_frames]
        frames = np.zeros((1, window_frames, log_mel.shape[1]), np.float32)
        frames[0, : len(window)] = window
        outputs = session.run(None, dict(zip(names, [frames, np.array([len(window)]), *state])))
        own = min(chunk_frames, len(log_mel) - start)
        pieces.append(outputs[0][0, : -(-own // factor)])
        state = outputs[1:]
    streamed = np.concatenate(pieces)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-4)
