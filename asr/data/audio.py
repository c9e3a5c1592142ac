"""Reading audio: any format libsndfile reads, downmixed to mono, resampled to 16 kHz."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
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


class AudioWarning(UserWarning):
    """A file was usable but not as it should be (truncated, channels that cancel)."""


# Stereo whose channel mean is this much quieter than its loudest channel (power ratio,
# -20 dB) has channels that cancel each other, e.g. one wired in anti-phase.
CANCELLATION_RATIO = 0.01
# The containers libsndfile reads (soundfile.available_formats()), by the extensions such files
# carry, the commonest first (a corpus folder's utterance is the first of these that exists);
# RAW is left out: headerless samples need their format given, which a folder cannot say.
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".oga", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf",
                    ".w64", ".rf64", ".sph")
AUDIBLE_POWER = 1e-6  # mean square of -60 dBFS: below this a file counts as silent anyway
# libsndfile notes a WAV/AIFF chunk that is longer than the file as "data : 64000 (should be 31978)".
_TRUNCATED_CHUNK = re.compile(r"^\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class LoadedAudio:
    samples: np.ndarray  # float32 mono at the requested rate, shape (num_samples,)
    warnings: tuple[str, ...] = ()  # problems that did not stop the file from being used


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> LoadedAudio:
    """The file's samples as float32 mono at ``sample_rate``, with warnings about what was
    repaired on the way (a truncated file read as far as it goes, a cancelling downmix).

    Raises :class:`AudioError` for missing, unreadable, empty or non-finite audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        with soundfile.SoundFile(str(path)) as audio_file:
            samples = audio_file.read(dtype="float32", always_2d=True)  # (frames, channels)
            file_rate, header_notes = audio_file.samplerate, audio_file.extra_info
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from err
    if samples.shape[0] == 0:
        raise AudioError(path, "contains no samples (zero length)")
    notes: list[str] = []
    truncated = _TRUNCATED_CHUNK.search(header_notes or "")
    if truncated:
        promised, present = int(truncated.group(1)), int(truncated.group(2))
        seconds = samples.shape[0] / file_rate
        notes.append(f"file is truncated: its header promises {seconds * promised / max(present, 1):.2f} s "
                     f"of audio, it holds {seconds:.2f} s; transcribing what is there")
    mono = _downmix(samples, notes)
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")
    if file_rate != sample_rate:
        # soxr is librosa's default high-quality resampler.
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ").astype(np.float32)
        if len(mono) == 0:  # a few samples at an absurd header rate resample to nothing
            raise AudioError(path, f"too short: {samples.shape[0]} sample(s) at {file_rate} Hz")
    return LoadedAudio(np.ascontiguousarray(mono, dtype=np.float32), tuple(notes))


def _downmix(samples: np.ndarray, notes: list[str]) -> np.ndarray:
    """(frames, channels) -> (frames,): the channel mean, or the loudest channel when the
    channels cancel in the mean (anti-phase stereo would otherwise become silence)."""
    if samples.shape[1] == 1:
        return samples[:, 0]
    mono = samples.mean(axis=1)
    # Powers by dot products: a squared copy of a 3-hour file would cost as much memory again.
    channel_power = np.einsum("ij,ij->j", samples, samples) / samples.shape[0]  # (channels,)
    loudest = int(np.argmax(channel_power))
    mixed_power = np.dot(mono, mono) / len(mono)
    if channel_power[loudest] > AUDIBLE_POWER and mixed_power < CANCELLATION_RATIO * channel_power[loudest]:
        notes.append(f"the channels cancel each other when mixed (one is in anti-phase?); "
                     f"using channel {loudest + 1} of {samples.shape[1]} alone")
        return samples[:, loudest]
    return mono


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return the file's samples as float32 mono at ``sample_rate``, shape (num_samples,).

    Raises :class:`AudioError` for missing, unreadable, empty or non-finite audio; what
    :func:`read_audio` repairs is reported as an :class:`AudioWarning`.
    """
    loaded = read_audio(path, sample_rate)
    for message in loaded.warnings:
        warnings.warn(AudioWarning(f"{path}: {message}"), stacklevel=2)
    return loaded.samples


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
