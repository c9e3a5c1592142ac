import numpy as np
import pytest
import soundfile

from asr.data.audio import AudioError, audio_duration, load_audio


def test_stereo_is_downmixed_and_resampled(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate  # 1 s
    left = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left * 0.5], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "s.wav", stereo, rate)
    audio = load_audio(tmp_path / "s.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 16000
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2  # pitch preserved
    assert np.max(np.abs(audio[1000:-1000])) == pytest.approx(0.75, abs=0.02)  # mean of both channels


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "WAV"])
def test_formats(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    soundfile.write(path, np.zeros(4000, dtype=np.float32), 16000, format=fmt)
    assert len(load_audio(path)) == 4000
    assert audio_duration(path) == pytest.approx(0.25)


def test_bad_files_raise_audio_error_naming_file(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    cases = {"missing.wav": "not found", "text.wav": "unreadable", "empty.wav": "unreadable", "zero.wav": "zero length"}
    for name, reason in cases.items():
        with pytest.raises(AudioError) as err:
            load_audio(tmp_path / name)
        assert name in str(err.value) and reason in str(err.value)
    with pytest.raises(AudioError, match="zero length"):
        audio_duration(tmp_path / "zero.wav")


def test_anti_phase_stereo_uses_one_channel_with_a_warning(tmp_path):
    from asr.data.audio import read_audio

    t = np.arange(16000) / 16000
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    soundfile.write(tmp_path / "anti.wav", np.stack([left, -left], axis=1).astype(np.float32), 16000)
    loaded = read_audio(tmp_path / "anti.wav")
    assert np.max(np.abs(loaded.samples)) == pytest.approx(0.5, abs=0.01)  # not the silent mean
    assert len(loaded.warnings) == 1 and "cancel" in loaded.warnings[0]
    with pytest.warns(UserWarning, match="anti.wav: the channels cancel"):
        load_audio(tmp_path / "anti.wav")  # training's loader says so too
    # Ordinary stereo and silent stereo: the mean, no warning.
    soundfile.write(tmp_path / "quiet.wav", np.zeros((16000, 2), dtype=np.float32), 16000)
    soundfile.write(tmp_path / "same.wav", np.stack([left, left], axis=1).astype(np.float32), 16000)
    assert read_audio(tmp_path / "quiet.wav").warnings == () and read_audio(tmp_path / "same.wav").warnings == ()


def test_truncated_wav_is_read_as_far_as_it_goes_with_a_warning(tmp_path):
    from asr.data.audio import read_audio

    soundfile.write(tmp_path / "whole.wav", np.full(32000, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "half.wav").write_bytes(data[: len(data) // 2])
    loaded = read_audio(tmp_path / "half.wav")
    assert abs(len(loaded.samples) - 16000) < 50
    assert loaded.warnings == ("file is truncated: its header promises 2.00 s of audio, it holds 1.00 s; "
                               "transcribing what is there",)
    assert read_audio(tmp_path / "whole.wav").warnings == ()
