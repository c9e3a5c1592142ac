"""Property tests: whatever bytes or text users hand us, the result is a value or our own error.

The manifest parser, the text normaliser, the config loader and the audio loader either
return a result or raise an :class:`asr.errors.AsrError` subclass (which the CLI turns into
one ``error: ...`` line), never any other exception. CI runs the ``ci`` profile (a few dozen
examples each); ``ASR_FUZZ_PROFILE=long`` (scripts/reliability.py --only fuzz) runs thousands.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asr.data.audio import load_audio
from asr.config import ExperimentConfig, load_config
from asr.data.manifest import write_manifest
from asr.errors import AsrError
from asr.data.manifest import Utterance, read_manifest, read_manifest_lines
from asr.data.text import CharVocabulary, normalize_text

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(settings.get_profile(os.environ.get("ASR_FUZZ_PROFILE", "ci")))


def scratch_file(content: bytes, suffix: str) -> Path:
    """A fresh file holding ``content`` (hypothesis runs each example many times: no fixtures)."""
    handle, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        out.write(content)
    return Path(name)


# --------------------------------------------------------------------------- manifests

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
manifest_keys = st.sampled_from(["id", "audio", "text", "duration", "speaker", "speed"])
# Lines that are nearly right: the real keys with values of any JSON type (a missing "duration"
# reads the audio header, so "audio" points nowhere real), or any JSON at all, or any bytes.
near_lines = st.dictionaries(manifest_keys, json_values, max_size=6).map(lambda d: json.dumps(d).encode())
manifest_lines = near_lines | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=60)


@FUZZ
@given(st.lists(manifest_lines, max_size=6), st.sampled_from([b"\n", b"\r\n", b"\r"]))
@example([b'{"audio": "a.flac", "text": "hi", "duration": NaN}', b"\xff\xfe", b"[]"], b"\n")
def test_manifest_reader_returns_utterances_or_our_error(lines, newline):
    path = scratch_file(newline.join(lines), ".jsonl")
    try:
        reading = read_manifest_lines(path)
        assert all(isinstance(u, Utterance) for u in reading.utterances)
        assert len(reading.utterances) == len(reading.line_numbers)
        for problem in reading.problems:
            assert str(path) in str(problem) and problem.reason
        try:
            assert read_manifest(path) == reading.utterances and not reading.problems
        except AsrError as err:
            assert reading.problems and str(path) in str(err)
    finally:
        path.unlink()


utterances = st.builds(
    Utterance,
    id=st.text(min_size=1, max_size=10),
    audio=st.text(min_size=1, max_size=20),
    text=st.text(max_size=30),
    duration=st.floats(min_value=0, max_value=1e5),
    speaker=st.text(max_size=5),
    speed=st.floats(min_value=0.5, max_value=2.0),
)


@FUZZ
@given(st.lists(utterances, max_size=5))
def test_a_written_manifest_reads_back_the_same(items):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        write_manifest(path, items)
        assert read_manifest(path) == items


# --------------------------------------------------------------------------- text


@FUZZ
@given(st.text())
@example("İSTANBUL ǅ ﬁ Ⅻ don’t 'quoted' ß")
def test_normalised_text_is_stable_and_spelled_or_refused(text):
    normal = normalize_text(text)
    assert normalize_text(normal) == normal  # idempotent: references and hypotheses meet in one form
    assert normal == normal.strip() and "  " not in normal
    try:
        ids = CharVocabulary.english().encode(normal)
    except AsrError as err:
        assert "outside the vocabulary" in str(err)
    else:
        assert CharVocabulary.english().decode(ids) == normal


# --------------------------------------------------------------------------- config

config_keys = st.sampled_from(["features", "model", "optim", "train", "data", "specaugment", "colour", "",
                               "model.hidden_size", "hidden_size", "num_layers", "dropout", "lr", "epochs",
                               "sample_rate", "normalization", "betas", "out_dir", "max_frames_per_batch"])
yaml_documents = st.recursive(json_scalars | config_keys, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(config_keys, inner, max_size=4), max_leaves=10)
overrides = st.builds(lambda key, value: f"{key}={value}", st.sampled_from([
    "model.hidden_size", "model.num_layers", "model.dropout", "optim.lr", "optim.betas", "train.epochs",
    "features.sample_rate", "data.max_frames_per_batch", "specaugment.warp_factor", "model.cell", "nope.key",
    "model", "train.out_dir.x"]), st.text(max_size=12)) | st.text(max_size=15)


@FUZZ
@given(yaml_documents | st.text(max_size=80), st.lists(overrides, max_size=3))
@example({"model": {"hidden_size": -1}}, ["model.num_layers=0"])
@example("model: {hidden_size: [1, 2", [])
@example({"optim": {"betas": [0.9]}}, ["optim.lr=.nan"])
@example("", ['model.hidden_size="'])  # an override value that is not YAML
def test_config_loader_returns_a_config_or_our_error(document, extra):
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    path = scratch_file(text.encode(), ".yaml")
    try:
        config = load_config(path, extra)
        assert isinstance(config, ExperimentConfig)
    except AsrError:
        pass
    finally:
        path.unlink()


# --------------------------------------------------------------------------- audio


def small_audio(fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.linspace(0, 200, 1600)).astype(np.float32)
    soundfile.write(buffer, np.stack([tone, -tone], axis=1), 16_000, format=fmt, subtype=subtype)
    return buffer.getvalue()


VALID_AUDIO = [small_audio("WAV", "PCM_16"), small_audio("WAV", "FLOAT"), small_audio("FLAC", "PCM_16")]


@st.composite
def damaged_audio(draw) -> bytes:
    """A valid WAV/FLAC with some bytes overwritten, cut short or appended to."""
    data = bytearray(draw(st.sampled_from(VALID_AUDIO)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@FUZZ
@given(st.binary(max_size=400) | damaged_audio(), st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ""]))
@example(b"RIFF\x24\x00\x00\x00WAVEfmt ", ".wav")
# One sample at 16.7 MHz (a damaged header) resamples to no samples at all.
@example(b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00"
         b"\x00\x00\x01\x00data\x00\x00\x00\x01\x00", ".wav")
def test_audio_loader_returns_finite_mono_or_our_error(content, suffix):
    path = scratch_file(content, suffix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation and downmix notes are warnings, not failures
            samples = load_audio(path)
        assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
        assert np.isfinite(samples).all()
    except AsrError as err:
        assert str(path) in str(err)
    finally:
        path.unlink()
