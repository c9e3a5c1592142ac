"""Log-mel features in torch, mean/variance normalisation, SpecAugment and VTLP.

Everything here works on padded batches ``(B, num_samples)`` / ``(B, T, n_mels)`` with the
lengths passed beside them, on CPU or GPU.
"""

from __future__ import annotations

import math

import librosa
import torch
from torch import nn

from asr.config import FeatureConfig, SpecAugmentConfig


def mel_edges(config: FeatureConfig) -> torch.Tensor:
    """The n_mels + 2 filter edge frequencies (Hz) of librosa's Slaney mel filter bank."""
    f_max = config.f_max if config.f_max is not None else config.sample_rate / 2
    edges = librosa.mel_frequencies(n_mels=config.n_mels + 2, fmin=config.f_min, fmax=f_max)
    return torch.from_numpy(edges).float()


def mel_filters_at(frequencies: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Slaney mel filter weights evaluated at arbitrary frequencies: (B, F) Hz -> (B, n_mels, F).

    At the FFT bin frequencies this is ``librosa.filters.mel`` (tested); at warped frequencies
    it is the filter bank a different vocal-tract length would see.
    """
    widths = edges.diff()  # (n_mels + 1,)
    ramps = edges[None, :, None] - frequencies[:, None, :]  # (B, n_mels + 2, F)
    rising = -ramps[:, :-2] / widths[:-1, None]  # (B, n_mels, F)
    falling = ramps[:, 2:] / widths[1:, None]  # (B, n_mels, F)
    area_norm = 2.0 / (edges[2:] - edges[:-2])  # Slaney: constant energy per filter
    return torch.minimum(rising, falling).clamp_min(0) * area_norm[:, None]


def warp_frequencies(
    frequencies: torch.Tensor, factors: torch.Tensor, nyquist: float, boundary: float
) -> torch.Tensor:
    """VTLP's piecewise-linear warp (Jaitly & Hinton, 2013): (F,) Hz, (B,) factors -> (B, F) Hz.

    Frequencies scale by the factor up to a knee, then a second line maps the rest onto
    [knee * factor, nyquist], so the band edge stays put and nothing is pushed out of range.
    """
    alpha = factors[:, None].float()  # (B, 1)
    knee_out = boundary * nyquist * alpha.clamp(max=1.0)  # (B, 1): the knee's warped frequency ...
    knee = knee_out / alpha  # ... and where it comes from
    below = frequencies[None, :] * alpha
    above = nyquist - (nyquist - knee_out) / (nyquist - knee) * (nyquist - frequencies[None, :])
    return torch.where(frequencies[None, :] <= knee, below, above)


class LogMel(nn.Module):
    """Batched 80-bin log-mel spectrogram: ``torch.stft`` + librosa's (Slaney) mel filter bank.

    Matches ``librosa.feature.melspectrogram(..., center=True, pad_mode="constant")`` followed
    by ``log``. Zero padding after a short utterance in a batch equals librosa's constant
    padding, so every valid frame is identical to computing the utterance on its own.
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        mel_basis = librosa.filters.mel(
            sr=config.sample_rate,
            n_fft=config.n_fft,
            n_mels=config.n_mels,
            fmin=config.f_min,
            fmax=config.f_max,
        )  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("mel_basis", torch.from_numpy(mel_basis), persistent=False)
        self.register_buffer("mel_edges", mel_edges(config), persistent=False)
        fft_freqs = torch.from_numpy(librosa.fft_frequencies(sr=config.sample_rate, n_fft=config.n_fft))
        self.register_buffer("fft_freqs", fft_freqs.float(), persistent=False)
        # librosa's "hann" is the periodic (FFT) Hann window, as is torch's default.
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def warped_basis(self, factors: torch.Tensor, boundary: float) -> torch.Tensor:
        """(B,) VTLP factors -> (B, n_mels, n_fft // 2 + 1): one warped mel filter bank each."""
        nyquist = self.config.sample_rate / 2
        warped = warp_frequencies(self.fft_freqs, factors.to(self.fft_freqs.device), nyquist, boundary)  # (B, F)
        return mel_filters_at(warped, self.mel_edges)

    @torch.no_grad()
    def mel_power(self, waveforms: torch.Tensor, mel_basis: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_samples) float waveforms -> (B, T, n_mels) mel power spectrogram.

        ``mel_basis`` replaces the filter bank, e.g. with per-utterance (B, n_mels, F) warped ones.
        """
        if torch.onnx.is_in_onnx_export():
            return self._mel_power_real(waveforms)
        half = self.config.n_fft // 2  # centred frames: zeros before the first sample and after the last
        return self.padded_mel_power(nn.functional.pad(waveforms.float(), (half, half)), mel_basis)

    def padded_mel_power(self, padded: torch.Tensor, mel_basis: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_samples) samples that already carry the centring zeros -> (B, T, n_mels), frame t
        over samples [t * hop, t * hop + n_fft). The streaming front end (asr/inference/streaming.py) calls
        this on each new stretch of a stream, so its frames are the whole file's."""
        spec = torch.stft(
            padded,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            win_length=self.config.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, T)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis if mel_basis is None else mel_basis, power)  # (B, n_mels, T)
        return mel.transpose(1, 2)  # (B, T, n_mels)

    def _mel_power_real(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The same STFT as a strided convolution with windowed cosine/sine kernels.

        ONNX has no complex tensors, so the exported graph uses this; it equals the
        ``torch.stft`` path up to float rounding (tested).
        """
        n_fft, win = self.config.n_fft, self.config.win_length
        window = nn.functional.pad(self.window, ((n_fft - win) // 2, (n_fft - win + 1) // 2))  # centred in n_fft
        time = torch.arange(n_fft, dtype=torch.float64)
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * freqs[:, None] * time[None, :] / n_fft  # (F, n_fft)
        kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]).float() * window[None, :]  # (2F, n_fft)
        padded = nn.functional.pad(waveforms.float()[:, None, :], (n_fft // 2, n_fft // 2))  # (B, 1, S + n_fft)
        spec = nn.functional.conv1d(padded, kernels[:, None, :], stride=self.config.hop_length)  # (B, 2F, T)
        real, imag = spec.chunk(2, dim=1)  # (B, F, T) each
        mel = torch.matmul(self.mel_basis, real.square() + imag.square())  # (B, n_mels, T)
        return mel.transpose(1, 2)  # (B, T, n_mels)

    @torch.no_grad()
    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, mel_basis: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, num_samples), (B,) -> log-mel (B, T, n_mels), frame lengths (B,)."""
        return self.log(self.mel_power(waveforms, mel_basis)), self.config.num_frames(lengths)

    def log(self, mel_power: torch.Tensor) -> torch.Tensor:
        """Mel power -> log-mel, floored so that silence stays finite."""
        return mel_power.clamp_min(self.config.log_floor).log()


class GlobalNormalizer(nn.Module):
    """Per-band mean/variance normalisation with statistics estimated on the training data.

    The statistics are buffers, so they travel inside every checkpoint.
    """

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) -> (B, T, n_mels)."""
        return (features - self.mean) / self.std


def valid_frames(lengths: torch.Tensor, max_length: int, device: torch.device) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool mask, True on each sequence's frames, False on padding."""
    return torch.arange(max_length, device=device)[None, :] < lengths.to(device)[:, None]


def subtract_utterance_mean(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Subtract each utterance's per-band mean over its valid frames; padding stays zero."""
    valid = valid_frames(lengths, features.shape[1], features.device)[:, :, None]  # (B, T, 1)
    total = (features * valid).sum(dim=1, keepdim=True)  # (B, 1, F)
    mean = total / lengths.clamp_min(1)[:, None, None].to(features.dtype)  # (B, 1, F)
    return (features - mean) * valid


def remove_running_mean(features: torch.Tensor, prior_sum: torch.Tensor | None = None,
                        prior_count: torch.Tensor | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract from each frame the per-band mean of the frames up to and including it, after
    ``prior_count`` earlier frames summing to ``prior_sum`` (B, F): the causal normalisation a
    stream can compute, continued from where the previous piece left it. (B, T, F) ->
    normalised (B, T, F) and the running sums (B, T, F) in float64 (the last is the next prior)."""
    batch, time, bands = features.shape
    sums = features.double().cumsum(dim=1)  # (B, T, F)
    if prior_sum is not None:
        sums = sums + prior_sum[:, None, :]
    counts = torch.arange(1, time + 1, device=features.device, dtype=torch.float64)[None, :]  # (1, T)
    counts = counts + torch.as_tensor(prior_count, device=features.device).double().reshape(-1, 1)  # (B or 1, T)
    return features - (sums / counts[:, :, None]).to(features.dtype), sums


def subtract_running_mean(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """:func:`remove_running_mean` over padded utterances; padding stays zero."""
    valid = valid_frames(lengths, features.shape[1], features.device)[:, :, None]  # (B, T, 1)
    return remove_running_mean(features)[0] * valid


class StatsAccumulator:
    """Running per-band sums over the valid frames of padded batches (float64, no overflow)."""

    def __init__(self, n_mels: int) -> None:
        self.count = 0
        self.total = torch.zeros(n_mels, dtype=torch.float64)
        self.total_sq = torch.zeros(n_mels, dtype=torch.float64)

    def add(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        mask = valid_frames(lengths, features.shape[1], features.device)  # (B, T)
        valid = features[mask].double().cpu()  # (num_valid_frames, n_mels)
        self.count += valid.shape[0]
        self.total += valid.sum(0)
        self.total_sq += valid.square().sum(0)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no frames to estimate normalisation statistics from")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(1e-8)
        return mean.float(), var.sqrt().float()


def spec_augment(
    features: torch.Tensor,
    lengths: torch.Tensor,
    config: SpecAugmentConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frequency and time masking (Park et al., 2019) on normalised (B, T, F) features.

    Masked cells are set to 0, the normalised mean. Time masks stay inside each utterance's
    valid length and are at most ``time_width_ratio`` of it. Returns a new tensor.
    """
    if not config.enabled:
        return features
    batch, max_frames, n_bands = features.shape
    device = features.device
    keep = torch.ones(batch, max_frames, n_bands, dtype=torch.bool, device=device)
    bands = torch.arange(n_bands, device=device)[None, :]  # (1, F)
    frames = torch.arange(max_frames, device=device)[None, :]  # (1, T)

    def rand(size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, device="cpu").to(device)

    for _ in range(config.freq_masks):
        width = (rand(batch) * (config.freq_width + 1)).floor()  # (B,)
        start = (rand(batch) * (n_bands - width + 1)).floor()
        masked = (bands >= start[:, None]) & (bands < (start + width)[:, None])  # (B, F)
        keep &= ~masked[:, None, :]
    lengths_f = lengths.to(device).float()
    max_width = torch.minimum(torch.full_like(lengths_f, config.time_width), lengths_f * config.time_width_ratio)
    for _ in range(config.time_masks):
        width = (rand(batch) * (max_width + 1)).floor()  # (B,)
        start = (rand(batch) * (lengths_f - width + 1).clamp_min(1)).floor()
        masked = (frames >= start[:, None]) & (frames < (start + width)[:, None])  # (B, T)
        keep &= ~masked[:, :, None]
    return features * keep


def vtlp_filter_banks(
    log_mel: LogMel, batch_size: int, config: SpecAugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """One randomly warped mel filter bank per utterance (B, n_mels, F), or None when VTLP is off."""
    if not config.enabled or config.warp_factor == 0:
        return None
    factors = 1.0 + config.warp_factor * (2.0 * torch.rand(batch_size, generator=generator) - 1.0)  # U[1-w, 1+w]
    return log_mel.warped_basis(factors, config.warp_boundary)


class FeatureFrontend(nn.Module):
    """Waveforms -> normalised log-mel features: the part of the model that is not learned."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.mean_removal = config.normalization  # "global": none before the global statistics
        self.log_mel = LogMel(config)
        self.normalizer = GlobalNormalizer(config.n_mels)

    def unnormalized(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, mel_basis: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features before the global statistics: what those statistics are estimated on."""
        features, frame_lengths = self.log_mel(waveforms, lengths, mel_basis)
        if self.mean_removal == "utterance":
            features = subtract_utterance_mean(features, frame_lengths)
        elif self.mean_removal == "causal":
            features = subtract_running_mean(features, frame_lengths)
        return features, frame_lengths

    @torch.no_grad()
    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, mel_basis: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, num_samples), (B,) -> (B, T, n_mels) normalised features, (B,) frame lengths.

        ``mel_basis`` (training only) replaces the filter bank, e.g. with :func:`vtlp_filter_banks`.
        """
        features, frame_lengths = self.unnormalized(waveforms, lengths, mel_basis)
        return self.normalizer(features), frame_lengths
