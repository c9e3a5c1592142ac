"""Reading audio: any format libsndfile reads, downmixed to mono, resampled to 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from asr.config import SAMPLE_RATE
from asr.errors import AsrError


class AudioError(AsrError):
    """An audio file could not be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return the file's samples as float32 mono at ``sample_rate``, shape (num_samples,).

    Raises :class:`AudioError` for missing, unreadable, empty or non-finite audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from err
    if samples.shape[0] == 0:
        raise AudioError(path, "contains no samples (zero length)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]  # (frames, channels) -> (frames,)
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")
    if file_rate != sample_rate:
        # soxr is librosa's default high-quality resampler.
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header (no decoding); raises :class:`AudioError`."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        if not Path(path).exists():
            raise AudioError(path, "file not found") from err
        raise AudioError(path, f"unreadable audio ({err})") from err
    if info.frames <= 0:
        raise AudioError(path, "contains no samples (zero length)")
    return info.frames / info.samplerate
