"""Live mode: segmentation at pauses, interim and final text (asr/inference/live.py), and its WebSocket."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soxr
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from asr.inference.live import LiveOptions, LiveTranscriber
from asr.serving.app import create_app
from asr.serving.context import ServerOptions
from tests.conftest import SAMPLE_RATE, tone_audio

PHRASES = ["bad cab", "a dab", "cede a bee"]
PAUSE = 1.2  # seconds of silence between phrases: longer than LiveOptions.pause_seconds


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three phrases with pauses between them, and where each phrase's audio lies."""
    rng = np.random.default_rng(7)
    pieces, spans, position = [], [], 0
    for number, phrase in enumerate(PHRASES):
        audio = tone_audio(phrase, seed=number)
        spans.append((position / SAMPLE_RATE, (position + len(audio)) / SAMPLE_RATE))
        silence = rng.normal(0, 0.003, int(PAUSE * SAMPLE_RATE)).astype(np.float32)
        pieces += [audio, silence]
        position += len(audio) + len(silence)
    return np.concatenate(pieces), spans


def feed_only(transcriber: LiveTranscriber, samples: np.ndarray, seed: int, largest: int = 6000) -> list:
    """``samples`` in pieces of random sizes; the updates, the stream left open."""
    rng = np.random.default_rng(seed)
    updates, position = [], 0
    while position < len(samples):
        size = int(rng.integers(1, largest))
        updates += transcriber.accept(samples[position:position + size])
        position += size
    return updates


def feed(transcriber: LiveTranscriber, samples: np.ndarray, seed: int, largest: int = 6000) -> list:
    return feed_only(transcriber, samples, seed, largest) + transcriber.finish()


def finals(updates: list) -> list:
    return [u for u in updates if u.kind == "final"]


def test_a_final_segment_per_phrase_ending_at_its_pause(recognizer, stream) -> None:
    samples, spans = stream
    updates = feed(LiveTranscriber(recognizer), samples, seed=0)
    closed = finals(updates)
    assert len(closed) == len(PHRASES), [u.record() for u in updates]
    for number, (final, (start, end)) in enumerate(zip(closed, spans)):
        assert final.segment == number
        assert final.start <= start + 0.1 and final.end >= end  # the segment holds the phrase ...
        assert abs(final.speech_end - end) < 0.15  # ... and found where its sound stops
        # what the segment says is what the recognizer says of that stretch of audio
        piece = samples[round(final.start * SAMPLE_RATE):round(final.end * SAMPLE_RATE)]
        assert final.text == recognizer.transcribe_samples(piece).text
        assert all(final.start - 1e-3 <= w.start <= w.end <= final.end + 1e-3 for w in final.words)  # ms rounding
    # segments follow each other without overlapping
    assert all(a.end <= b.start + 1e-9 for a, b in zip(closed, closed[1:]))


def test_interims_come_at_most_every_interval_of_audio(recognizer, stream) -> None:
    samples, _ = stream
    options = LiveOptions(interim_interval_s=0.5)
    updates = feed(LiveTranscriber(recognizer, options=options), samples, seed=1, largest=800)
    interims = [u for u in updates if u.kind == "interim"]
    assert interims, "no interim text at all"
    for segment in {u.segment for u in interims}:
        ends = [u.end for u in interims if u.segment == segment]
        assert all(b - a >= 0.5 - 1e-6 for a, b in zip(ends, ends[1:]))
    # an interim of a segment always comes before its final
    final_index = {u.segment: i for i, u in enumerate(updates) if u.kind == "final"}
    assert all(i < final_index[u.segment] for i, u in enumerate(updates) if u.kind == "interim")


def test_the_pieces_do_not_change_the_finals(recognizer, stream) -> None:
    samples, _ = stream

    def outcome(seed: int, largest: int) -> list:
        return [(u.text, u.start, u.end, u.speech_end) for u in finals(feed(LiveTranscriber(recognizer), samples,
                                                                            seed, largest))]

    assert outcome(2, 400) == outcome(3, 20000) == outcome(4, len(samples) + 1)


def test_another_input_rate_is_resampled(recognizer, stream) -> None:
    samples, spans = stream
    at_48k = soxr.resample(samples, SAMPLE_RATE, 48000).astype(np.float32)
    closed = finals(feed(LiveTranscriber(recognizer, input_rate=48000), at_48k, seed=5, largest=18000))
    assert len(closed) == len(PHRASES)
    assert all(abs(f.speech_end - end) < 0.15 for f, (_, end) in zip(closed, spans))


def test_silence_gives_nothing(recognizer) -> None:
    transcriber = LiveTranscriber(recognizer)
    quiet = np.random.default_rng(0).normal(0, 0.002, 5 * SAMPLE_RATE).astype(np.float32)
    assert transcriber.accept(quiet) == []
    assert transcriber.buffered_seconds <= LiveOptions().lead_in_seconds + 0.06  # the buffer does not grow
    assert transcriber.finish() == [] and transcriber.seconds == 5.0


def test_speech_without_pauses_is_cut_at_the_window(recognizer) -> None:
    phrase = tone_audio("abba cede dace bed deed")  # gaps inside are shorter than the pause
    samples = np.concatenate([phrase] * 4)
    transcriber = LiveTranscriber(recognizer, options=LiveOptions(max_segment_seconds=4.0))
    closed = finals(feed(transcriber, samples, seed=6))
    assert len(closed) >= len(samples) / SAMPLE_RATE / 4.0
    assert all(f.end - f.start <= 4.0 + 1e-6 for f in closed)


def room(seconds: float, seed: int, level: float = 0.003) -> np.ndarray:
    """A microphone's own noise, its level slowly swaying (about +-3 dB), as a room's does."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    return (rng.normal(0, level, n) * (1 + 0.3 * np.sin(np.linspace(0, 12, n)))).astype(np.float32)


def test_room_noise_after_a_microphones_first_zeros_gives_no_final(recognizer) -> None:
    """Browsers' first microphone buffers are often digital zeros: they are not the room's noise
    floor, so the room's noise after them is not speech (it gave finals of noise before)."""
    samples = np.concatenate([np.zeros(SAMPLE_RATE // 2, dtype=np.float32), room(12.0, seed=1)])
    updates = feed(LiveTranscriber(recognizer), samples, seed=9)
    assert updates == [], [u.record() for u in updates]


def test_a_click_in_the_quiet_gives_no_final(recognizer) -> None:
    quiet = room(3.0, seed=2)
    click = np.random.default_rng(3).normal(0, 0.3, SAMPLE_RATE // 50).astype(np.float32)  # 20 ms, loud
    samples = np.concatenate([quiet, quiet[: len(click)] + click, quiet])
    assert finals(feed(LiveTranscriber(recognizer), samples, seed=10)) == []


class FallsSilent:
    """The recognizer, but once ``silent`` is set every decode says nothing: a segment that
    decodes to no words (a cough the model reads as nothing)."""

    def __init__(self, inner) -> None:
        self.inner, self.silent = inner, False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def transcribe_samples(self, samples: np.ndarray, name: str = "<samples>"):
        result = self.inner.transcribe_samples(samples, name)
        return dataclasses.replace(result, text="", words=()) if self.silent else result


def test_a_segment_without_words_gives_no_final_and_its_interim_is_cleared(recognizer) -> None:
    phrase = np.concatenate([tone_audio("cede a bee", seed=1), room(0.3, seed=4)])
    quiet = room(PAUSE, seed=5)
    speaking = FallsSilent(recognizer)
    transcriber = LiveTranscriber(speaking, options=LiveOptions(interim_interval_s=0.5))
    shown = feed_only(transcriber, phrase, seed=11)
    assert [u for u in shown if u.kind == "interim" and u.text], "the page should have been shown interim text"
    speaking.silent = True
    closing = feed_only(transcriber, quiet, seed=12) + transcriber.finish()
    assert finals(closing) == []
    assert closing[-1].kind == "interim" and closing[-1].text == "" and closing[-1].segment == shown[-1].segment
    # The next segment that says something takes the number that was not used.
    speaking.silent = False
    again = feed(transcriber, np.concatenate([tone_audio("bad cab"), quiet]), seed=13)
    assert [f.segment for f in finals(again)] == [shown[-1].segment]


def test_a_soft_stretch_inside_speech_is_not_a_pause(recognizer) -> None:
    """Read speech spans 40 dB: a stretch 20 dB softer than the loudest is still speech (it was
    cut as a pause at -15 dB, splitting sentences), only the quiet of the room is a pause."""
    loud, soft = tone_audio("bad cab", seed=1), 0.1 * tone_audio("cede a bee deed", seed=2)  # -20 dB ...
    soft += room(len(soft) / SAMPLE_RATE, seed=7)  # ... in the same room
    phrase = np.concatenate([loud, soft, loud])
    samples = np.concatenate([phrase, room(PAUSE, seed=6)])
    transcriber = LiveTranscriber(recognizer, options=LiveOptions(max_segment_seconds=10.0))  # no cap in reach
    closed = finals(feed(transcriber, samples, seed=14))
    assert len(closed) == 1, [u.record() for u in closed]
    assert abs(closed[0].speech_end - len(phrase) / SAMPLE_RATE) < 0.15


def test_at_the_length_cap_a_segment_is_cut_in_its_longest_pause(recognizer) -> None:
    """Phrases with pauses too short to end a segment: at the cap the cut goes into a pause
    between phrases, not between two words of one (where the quietest 100 ms may lie)."""
    short_pause = 0.3  # under LiveOptions.pause_seconds
    pieces, gaps, position = [], [], 0
    for number, text in enumerate(["abba cede dace", "bed deed bad", "cab dab ace", "bee cede dab", "dace abba bed"]):
        audio = tone_audio(text, seed=number)
        pause = room(short_pause, seed=20 + number, level=0.0045)  # a breath: no quieter than a gap between words
        position += len(audio)
        gaps.append((position / SAMPLE_RATE - 0.1, (position + len(pause)) / SAMPLE_RATE + 0.1))  # tone_audio's own 0.1 s edges
        pieces += [audio, pause]
        position += len(pause)
    samples = np.concatenate(pieces)
    transcriber = LiveTranscriber(recognizer, options=LiveOptions(max_segment_seconds=4.0))
    closed = finals(feed(transcriber, samples, seed=15))
    capped = closed[:-1]  # the last one ends with the stream
    assert len(capped) >= 2
    assert all(any(a <= f.end <= b for a, b in gaps) for f in capped), ([f.end for f in capped], gaps)
    assert all(f.end - f.start <= 4.0 + 1e-6 for f in closed)


def test_non_finite_samples_are_refused(recognizer) -> None:
    with pytest.raises(ValueError, match="finite"):
        LiveTranscriber(recognizer).accept(np.array([0.0, np.nan], dtype=np.float32))


# --------------------------------------------------------------------------- the WebSocket


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture()
def client(recognizer, tmp_path: Path) -> TestClient:
    return TestClient(create_app(recognizer, ServerOptions(temp_dir=str(tmp_path), max_live=2,
                                                           allowed_hosts=("testserver",))))  # TestClient's Host


def run_stream(client: TestClient, samples: np.ndarray, rate: int = SAMPLE_RATE, piece: int = 1600) -> list[dict]:
    with client.websocket_connect("/api/live") as socket:
        socket.send_text(json.dumps({"type": "start", "sample_rate": rate}))
        messages = [socket.receive_json()]
        for position in range(0, len(samples), piece):
            socket.send_bytes(pcm(samples[position:position + piece]))
        socket.send_text(json.dumps({"type": "stop"}))
        while messages[-1]["type"] not in ("done", "error"):
            messages.append(socket.receive_json())
    return messages


def test_websocket_stream_gives_the_library_finals(client: TestClient, recognizer, stream) -> None:
    samples, _ = stream
    messages = run_stream(client, samples)
    assert messages[0]["type"] == "ready" and messages[0]["sample_rate"] == SAMPLE_RATE
    assert messages[-1] == {"type": "done"}
    received = [m for m in messages if m["type"] == "final"]
    quantised = np.clip(samples, -1, 1) * 32767
    expected = finals(feed(LiveTranscriber(recognizer), quantised.astype("<i2").astype(np.float32) / 32768, 0))
    assert [m["text"] for m in received] == [u.text for u in expected]
    assert all(set(m) >= {"words", "speech_end", "decode_seconds", "start", "end"} for m in received)
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("first, reason", [
    (b"\x00\x01", "first message"),
    ("not json", "not JSON"),
    (json.dumps({"type": "start", "sample_rate": 10}), "sample_rate"),
    (json.dumps({"type": "start", "sample_rate": "16000"}), "sample_rate"),
    (json.dumps({"type": "hello"}), "first message"),
])
def test_a_bad_start_is_an_error_message(client: TestClient, first, reason: str) -> None:
    with client.websocket_connect("/api/live") as socket:
        socket.send_bytes(first) if isinstance(first, bytes) else socket.send_text(first)
        message = socket.receive_json()
        assert message["type"] == "error" and reason in message["message"]
        with pytest.raises(WebSocketDisconnect):
            socket.receive_json()
    assert client.get("/healthz").status_code == 200


def test_odd_frames_and_unknown_messages_are_errors(client: TestClient) -> None:
    for bad in (b"\x00\x01\x02", "{\"type\": \"pause\"}"):
        with client.websocket_connect("/api/live") as socket:
            socket.send_text(json.dumps({"type": "start", "sample_rate": 16000}))
            assert socket.receive_json()["type"] == "ready"
            socket.send_bytes(bad) if isinstance(bad, bytes) else socket.send_text(bad)
            message = socket.receive_json()
            while message["type"] not in ("error", "done"):
                message = socket.receive_json()
            assert message["type"] == "error", message
    with client.websocket_connect("/api/live") as socket:  # and the next stream still works
        socket.send_text(json.dumps({"type": "start", "sample_rate": 16000}))
        assert socket.receive_json()["type"] == "ready"


def test_streams_beyond_the_limit_are_told_to_come_back(client: TestClient) -> None:
    with client.websocket_connect("/api/live") as first, client.websocket_connect("/api/live") as second:
        for socket in (first, second):
            socket.send_text(json.dumps({"type": "start", "sample_rate": 16000}))
            assert socket.receive_json()["type"] == "ready"
        with client.websocket_connect("/api/live") as third:
            message = third.receive_json()
            assert message["type"] == "error" and "live streams" in message["message"]
    with client.websocket_connect("/api/live") as again:  # the slots are free again
        again.send_text(json.dumps({"type": "start", "sample_rate": 16000}))
        assert again.receive_json()["type"] == "ready"


def test_a_streaming_model_streams_each_segment(stream) -> None:
    """With a model that streams, each segment runs through one stream as its audio arrives:
    interims whenever the text changes (not every 0.5 s), and each final equals the model's
    whole-segment result; the segmentation is the bidirectional one's."""
    from tests.test_streaming import recognizer_for

    samples, spans = stream
    streaming = recognizer_for("latency_controlled")
    transcriber = LiveTranscriber(streaming)
    assert transcriber.streaming
    updates = feed(transcriber, samples, seed=4, largest=1600)
    closed = finals(updates)
    assert len(closed) == len(PHRASES)
    for final in closed:
        segment = samples[round(final.start * SAMPLE_RATE): round(final.end * SAMPLE_RATE)]
        expected = streaming.transcribe_samples(segment)
        assert final.text == expected.text and final.text
        assert [w.word for w in final.words] == [w.word for w in expected.words]
    interims = [u for u in updates if u.kind == "interim"]
    assert len(interims) > 2 * len(PHRASES)  # far more often than every 0.5 s of audio
    assert all(a.text != b.text for a, b in zip(interims, interims[1:]) if a.segment == b.segment)


def test_a_streaming_model_streams_over_the_websocket_too(stream, tmp_path: Path) -> None:
    """/api/info and the ready message say whether live mode streams; the WebSocket's finals
    are the library's."""
    from tests.test_streaming import recognizer_for

    samples, _ = stream
    streaming = recognizer_for("latency_controlled")
    with TestClient(create_app(streaming, ServerOptions(temp_dir=str(tmp_path), max_live=1,
                                                        allowed_hosts=("testserver",)))) as client:
        assert client.get("/api/info").json()["live"]["streaming"] is True
        messages = run_stream(client, samples)
    assert messages[0]["type"] == "ready" and messages[0]["streaming"] is True
    quantised = (np.clip(samples, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768
    # Where a segment ends depends on how the socket grouped the audio (a stream may have read
    # past a pause before it is cut there), so check each final against its own audio.
    received = [m for m in messages if m["type"] == "final"]
    assert len(received) == len(PHRASES)
    for final in received:
        segment = quantised[round(final["start"] * SAMPLE_RATE): round(final["end"] * SAMPLE_RATE)]
        assert final["text"] == streaming.transcribe_samples(segment).text and final["text"]


def test_a_streaming_segment_is_cut_at_the_length_cap() -> None:
    """A stream has no window, but a segment that never pauses must not grow without bound."""
    from tests.test_streaming import recognizer_for

    phrase = tone_audio("abba cede dace bed deed")  # gaps inside are shorter than the pause
    samples = np.concatenate([phrase] * 4)
    closed = finals(feed(LiveTranscriber(recognizer_for("latency_controlled"), options=LiveOptions(
        max_segment_seconds=2.0)), samples, seed=6, largest=1600))
    assert len(closed) >= len(samples) / SAMPLE_RATE / 2.0
    assert all(f.end - f.start <= 2.0 + 1e-6 for f in closed)


def test_a_bidirectional_model_says_it_does_not_stream(client: TestClient) -> None:
    assert client.get("/api/info").json()["live"]["streaming"] is False
    assert run_stream(client, np.zeros(1600, dtype=np.float32))[0]["streaming"] is False


def test_a_streamed_segment_after_a_short_pause_keeps_its_lead_in() -> None:
    """A stream reads past a pause before the pause is long enough to judge; the next segment
    must still start mid-pause, with its lead-in, not where the stream stopped reading."""
    from tests.test_streaming import recognizer_for

    options = LiveOptions()
    pause = options.pause_seconds + 0.05  # just long enough to end a segment
    rng = np.random.default_rng(3)
    pieces, starts, position = [], [], 0
    for number, phrase in enumerate(PHRASES):
        audio = tone_audio(phrase, seed=number)
        starts.append(position / SAMPLE_RATE)
        pieces += [audio, rng.normal(0, 0.003, int(pause * SAMPLE_RATE)).astype(np.float32)]
        position += len(audio) + int(pause * SAMPLE_RATE)
    closed = finals(feed(LiveTranscriber(recognizer_for("latency_controlled"), options=options),
                         np.concatenate(pieces), seed=8, largest=1600))
    assert len(closed) == len(PHRASES)
    for final, start in zip(closed[1:], starts[1:]):  # the tones' soft onsets: detected up to 0.1 s late
        assert final.start <= start - options.lead_in_seconds + 0.1, (final.start, start)
