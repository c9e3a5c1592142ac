import librosa
import numpy as np
import torch

from asr.config import FeatureConfig, SpecAugmentConfig
import pytest

from asr.config import ConfigError
from asr.model.features import (
    FeatureFrontend,
    LogMel,
    StatsAccumulator,
    spec_augment,
    vtlp_filter_banks,
    warp_frequencies,
)


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    signal = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 4000, 5))
    return (0.1 * signal + 0.01 * rng.normal(size=len(t))).astype(np.float32)


def test_log_mel_matches_librosa():
    config = FeatureConfig()
    audio = speechlike(1.3, seed=0)
    reference = librosa.feature.melspectrogram(
        y=audio, sr=16000, n_fft=400, hop_length=160, win_length=400, n_mels=80,
        center=True, pad_mode="constant", power=2.0,
    )  # (n_mels, T)
    ours = LogMel(config).mel_power(torch.from_numpy(audio)[None])[0].T.numpy()  # (n_mels, T)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-6 * reference.max())
    features, lengths = LogMel(config)(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    assert features.shape == (1, reference.shape[1], 80) and lengths.item() == reference.shape[1]
    np.testing.assert_allclose(features[0].T.numpy(), np.log(np.maximum(reference, 1e-10)), atol=2e-3)


def test_batched_features_equal_single_utterances():
    log_mel = LogMel(FeatureConfig())
    short, long = speechlike(0.7, 1), speechlike(1.6, 2)
    batch = torch.zeros(2, len(long))
    batch[0, : len(short)] = torch.from_numpy(short)
    batch[1] = torch.from_numpy(long)
    features, lengths = log_mel(batch, torch.tensor([len(short), len(long)]))
    alone, alone_len = log_mel(torch.from_numpy(short)[None], torch.tensor([len(short)]))
    assert lengths[0] == alone_len[0]
    torch.testing.assert_close(features[0, : lengths[0]], alone[0], atol=1e-4, rtol=1e-4)


def test_normalizer_statistics_from_valid_frames_only():
    stats = StatsAccumulator(2)
    features = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [999.0, 999.0]]])  # last frame is padding
    stats.add(features, torch.tensor([2]))
    mean, std = stats.result()
    torch.testing.assert_close(mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 10.0]))
    frontend = FeatureFrontend(FeatureConfig(n_mels=2))
    frontend.normalizer.mean.copy_(mean)
    frontend.normalizer.std.copy_(std)
    torch.testing.assert_close(frontend.normalizer(features[:, :2]), torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]]))


def test_spec_augment_masks_inside_lengths_and_can_be_disabled():
    features = torch.ones(3, 200, 80)
    lengths = torch.tensor([200, 120, 50])
    config = SpecAugmentConfig(freq_masks=2, freq_width=20, time_masks=2, time_width=40, time_width_ratio=0.2)
    masked = spec_augment(features, lengths, config, generator=torch.Generator().manual_seed(0))
    assert masked.shape == features.shape
    assert (masked == 0).any() and (masked == 1).any()
    # Time masks never start in padding: frames past each length keep their values unless a
    # frequency mask covers them.
    for b, length in enumerate(lengths.tolist()):
        band_kept = masked[b, :, :].amax(dim=0) > 0  # bands without a frequency mask
        assert (masked[b, length:, band_kept] == 1).all()
        time_masked = (masked[b, :length, band_kept] == 0).all(dim=1).sum().item()
        assert time_masked <= 2 * min(40, 0.2 * length)
    assert spec_augment(features, lengths, SpecAugmentConfig(enabled=False)) is features


def test_utterance_mean_normalisation_removes_gain_and_ignores_padding():
    frontend = FeatureFrontend(FeatureConfig(normalization="utterance"))
    short, long = torch.from_numpy(speechlike(0.7, 1)), torch.from_numpy(speechlike(1.6, 2))
    batch = torch.zeros(2, len(long))
    batch[0, : len(short)] = short
    batch[1] = long
    features, lengths = frontend(batch, torch.tensor([len(short), len(long)]))
    alone, _ = frontend(short[None], torch.tensor([len(short)]))
    torch.testing.assert_close(features[0, : lengths[0]], alone[0], atol=1e-4, rtol=1e-4)
    assert features[0, lengths[0] :].abs().max() == 0  # padding stays zero
    torch.testing.assert_close(features[0, : lengths[0]].mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    # A recording level (a constant gain, a constant offset in log-mel) no longer matters.
    louder, _ = frontend(4.0 * short[None], torch.tensor([len(short)]))
    torch.testing.assert_close(louder, alone, atol=1e-3, rtol=1e-3)


def test_unwarped_vtlp_filter_bank_is_librosas():
    log_mel = LogMel(FeatureConfig())
    banks = log_mel.warped_basis(torch.tensor([1.0, 1.0]), boundary=0.6)  # (2, n_mels, F)
    assert banks.shape == (2, *log_mel.mel_basis.shape)
    torch.testing.assert_close(banks[1], log_mel.mel_basis, atol=1e-6 * log_mel.mel_basis.max().item(), rtol=1e-4)


def test_vtlp_warp_is_piecewise_linear_and_keeps_the_band():
    freqs = torch.linspace(0, 8000, 201)
    warped = warp_frequencies(freqs, torch.tensor([0.9, 1.0, 1.1]), nyquist=8000.0, boundary=0.6)  # (3, F)
    torch.testing.assert_close(warped[1], freqs)
    assert torch.all(warped[:, 0] == 0) and torch.allclose(warped[:, -1], torch.tensor(8000.0))
    assert torch.all(warped.diff(dim=1) > 0)  # monotonic: no two bins swap places
    low = freqs <= 4000
    torch.testing.assert_close(warped[0, low], 0.9 * freqs[low])
    torch.testing.assert_close(warped[2, low], 1.1 * freqs[low])


def test_vtlp_moves_a_tone_like_a_longer_or_shorter_vocal_tract():
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 1000.0 * t)[None]  # (1, S)
    log_mel = LogMel(FeatureConfig())
    centres = torch.from_numpy(librosa.mel_frequencies(n_mels=82, fmax=8000.0)[1:-1])

    def peak_hz(factor: float) -> float:
        bank = log_mel.warped_basis(torch.tensor([factor]), boundary=0.6)
        band = log_mel.mel_power(tone, bank)[0].mean(0).argmax()  # strongest mel band
        return centres[band].item()

    # A bin at f Hz feeds the filter at factor * f Hz: the tone lands ~10 % higher or lower.
    assert peak_hz(1.0) == pytest.approx(1000, rel=0.04)
    assert peak_hz(1.1) == pytest.approx(1100, rel=0.04)
    assert peak_hz(0.9) == pytest.approx(900, rel=0.04)


def test_vtlp_draws_one_warp_per_utterance_only_when_enabled():
    log_mel = LogMel(FeatureConfig())
    assert vtlp_filter_banks(log_mel, 3, SpecAugmentConfig()) is None  # off by default
    assert vtlp_filter_banks(log_mel, 3, SpecAugmentConfig(enabled=False, warp_factor=0.1)) is None
    banks = vtlp_filter_banks(log_mel, 3, SpecAugmentConfig(warp_factor=0.1), torch.Generator().manual_seed(0))
    assert banks.shape == (3, *log_mel.mel_basis.shape)
    assert not torch.allclose(banks[0], banks[1])
    with pytest.raises(ConfigError, match="warp_factor"):
        SpecAugmentConfig(warp_factor=1.5)


@pytest.mark.parametrize("rate, hop, window", [(16000, 160, 400), (8000, 80, 200), (22050, 256, 1024)])
def test_one_frame_count_formula_for_features_and_manifest_durations(rate, hop, window):
    from asr.data.dataset import frame_counts, output_frames
    from asr.data.manifest import Utterance

    config = FeatureConfig(sample_rate=rate, hop_length=hop, win_length=window, n_fft=window, n_mels=20)
    log_mel = LogMel(config)
    for samples in (hop * 3, hop * 3 + 1, 12345):
        _, lengths = log_mel(torch.zeros(1, samples), torch.tensor([samples]))
        computed = log_mel.mel_power(torch.zeros(1, samples)).shape[1]  # (1, T, n_mels)
        assert lengths.item() == computed == config.num_frames(samples) == config.frames_for_duration(samples / rate)
        assert frame_counts([Utterance("x", "x.flac", "a", samples / rate)], config) == [computed]
        assert output_frames(samples / rate, 3, config) == -(-computed // 3)
