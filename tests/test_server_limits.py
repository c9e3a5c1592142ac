"""Limits that keep ``asr serve`` answering (issue 33): slow uploads lose their slot (408), audio
longer than --max-audio-seconds is refused from its header (413), idle or endless live sessions
are closed, WebSockets are pinged; and the smaller defects: a client that goes away costs one
log line, a file in another field is named as such, ``stream=true`` is refused."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from asr.serving.app import WS_PING_INTERVAL_S, WS_PING_TIMEOUT_S, create_app, serve
from asr.serving.context import ServerOptions
from tests.conftest import SAMPLE_RATE, free_port, tone_audio
from tests.conftest import running_server as conftest_running_server

TEST_HOSTS = ("testserver",)  # TestClient's Host, allowed as --allow-host would


def running_server(app):
    """The shared server, logging through the root logger (the tests read its records)."""
    return conftest_running_server(app, log_config=None, log_level="info")


def upload_head(content_length: int) -> bytes:
    """A request's headers and the multipart head of its `file` part: the audio would follow."""
    part = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    return (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: %d\r\n\r\n%s"
            % (content_length, part))


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---------------------------------------------------------------- slow uploads


@pytest.mark.parametrize("pace", ["trickle", "stall"])
def test_a_slow_upload_gets_408_and_frees_its_slot(recognizer, wav_bytes: bytes, spool: Path, pace: str) -> None:
    options = ServerOptions(temp_dir=str(spool), max_queue=0, min_upload_rate=1000, upload_grace_s=0.5)
    with running_server(create_app(recognizer, options)) as port:
        url = f"http://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(upload_head(100_000))
            began, reply, others = time.monotonic(), b"", None
            conn.settimeout(0.1)
            while not reply and time.monotonic() - began < 10:
                if pace == "trickle":
                    try:
                        conn.sendall(b"\0")  # 10 bytes/s: before the fix, a slot held for as long as it trickles
                    except OSError:  # the server answered and closed: read its answer
                        pass
                if others is None:  # meanwhile the only slot is taken
                    others = httpx.post(f"{url}/v1/audio/transcriptions",
                                        files={"file": ("a.wav", wav_bytes, "audio/wav")}, timeout=10).status_code
                try:
                    reply = conn.recv(65536)
                except TimeoutError:
                    continue
            waited = time.monotonic() - began
            conn.settimeout(5)
            while chunk := conn.recv(65536):  # the rest of the answer (the server closes the connection)
                reply += chunk
        assert others == 503
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"upload_too_slow" in reply and b"1000 bytes/s" in reply
        assert waited < 5, waited
        assert httpx.get(f"{url}/healthz", timeout=10).json()["busy"] == 0
        good = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes, "audio/wav")},
                          timeout=30)
        assert good.status_code == 200, good.text  # a normal upload is far above the floor
    assert not list(spool.iterdir())


# ---------------------------------------------------------------- audio duration


def test_audio_longer_than_the_limit_is_413_before_decoding(recognizer, spool: Path, tmp_path: Path) -> None:
    assert ServerOptions().max_audio_seconds == 7200  # 2 h by default
    silence = tmp_path / "silence.flac"  # 12 s of digital silence: a tiny file
    soundfile.write(silence, np.zeros(12 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE)
    slow_header = tmp_path / "slow.wav"  # 2 s of samples whose header says 100 Hz: 320 s
    soundfile.write(slow_header, np.zeros(2 * SAMPLE_RATE, dtype=np.int16), 100)
    unknown = tmp_path / "unknown.flac"  # a FLAC whose header does not give its length
    data = bytearray(silence.read_bytes())
    data[18:26] = (int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")  # total samples: 0
    unknown.write_bytes(bytes(data))
    short = tmp_path / "short.wav"
    soundfile.write(short, tone_audio("bad cab"), SAMPLE_RATE)

    client = TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), max_audio_seconds=10,
                                                             allowed_hosts=TEST_HOSTS)))
    for path in (silence, slow_header, unknown):
        for endpoint in ("/v1/audio/transcriptions", "/api/transcribe", "/api/inspect"):
            response = client.post(endpoint, files={"file": (path.name, path.read_bytes(), "audio/flac")})
            # 413 comes only from the header check: recognition answers 200, 400 or 504
            assert response.status_code == 413, (path.name, endpoint, response.text)
            error = response.json()["error"]
            assert error["code"] == "audio_too_long" and "the limit is 10 s" in error["message"], error
    assert "12 s long" in client.post("/api/transcribe", files={"file": ("s.flac", silence.read_bytes())}).text
    assert not list(spool.iterdir()) and client.get("/healthz").json()["busy"] == 0
    assert client.get("/api/info").json()["max_audio_seconds"] == 10  # the page says the limit
    assert client.post("/v1/audio/transcriptions", files={"file": ("s.wav", short.read_bytes())}).status_code == 200


# ---------------------------------------------------------------- live sessions


def live_messages(port: int, start: dict, audio: bytes = b"", seconds: float = 10.0) -> list[dict]:
    """Open /api/live, send ``start`` and ``audio`` (in 0.1 s pieces), then wait without sending
    until an error or ``seconds``; the messages received."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    messages: list[dict] = []
    with connect(f"ws://127.0.0.1:{port}/api/live", open_timeout=10) as socket_:
        socket_.send(json.dumps(start))
        messages.append(json.loads(socket_.recv(timeout=10)))
        piece = 2 * SAMPLE_RATE // 10
        try:
            for position in range(0, len(audio), piece):
                socket_.send(audio[position:position + piece])
            deadline = time.monotonic() + seconds
            while messages[-1]["type"] != "error" and time.monotonic() < deadline:
                messages.append(json.loads(socket_.recv(timeout=max(deadline - time.monotonic(), 0.01))))
        except (ConnectionClosed, TimeoutError):
            pass
    return messages


def test_an_idle_live_session_is_closed_and_its_slot_freed(recognizer, spool: Path) -> None:
    options = ServerOptions(temp_dir=str(spool), max_live=1, live_idle_s=0.5)
    with running_server(create_app(recognizer, options)) as port:
        began = time.monotonic()
        messages = live_messages(port, {"type": "start", "sample_rate": SAMPLE_RATE})  # then nothing
        assert messages[0]["type"] == "ready"
        assert messages[-1]["type"] == "error" and messages[-1]["code"] == "timeout", messages
        assert "nothing received for 0.5 s" in messages[-1]["message"]
        assert time.monotonic() - began < 5
        again = live_messages(port, {"type": "start", "sample_rate": SAMPLE_RATE}, seconds=0)
        assert again[0]["type"] == "ready"  # the only slot is free again


def test_a_live_session_longer_than_the_limit_is_closed(recognizer, spool: Path) -> None:
    options = ServerOptions(temp_dir=str(spool), max_live=1, max_audio_seconds=1.0)
    audio = np.zeros(int(1.5 * SAMPLE_RATE), dtype="<i2").tobytes()
    with running_server(create_app(recognizer, options)) as port:
        messages = live_messages(port, {"type": "start", "sample_rate": SAMPLE_RATE}, audio)
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "audio_too_long", messages
    assert "limit of 1 s" in messages[-1]["message"]


def test_serve_keeps_websocket_pings_on(recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    configs: list = []

    def run(server, sockets=None) -> None:  # instead of serving: what uvicorn was told
        configs.append(server.config)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve(create_app(recognizer), "127.0.0.1", free_port())
    assert configs[0].ws_ping_interval == WS_PING_INTERVAL_S and configs[0].ws_ping_timeout == WS_PING_TIMEOUT_S
    assert WS_PING_INTERVAL_S > 0 and WS_PING_TIMEOUT_S > 0  # None would turn uvicorn's pings off


# ---------------------------------------------------------------- smaller defects


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_goes_away_costs_one_log_line(recognizer, spool: Path) -> None:
    lines = Lines()
    logger = logging.getLogger("uvicorn.error")  # where uvicorn logs an app's tracebacks
    logger.addHandler(lines)
    try:
        with running_server(create_app(recognizer, ServerOptions(temp_dir=str(spool)))) as port:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(upload_head(100_000) + b"\0" * 1000)  # then gone, mid-body
                wait_until(lambda: list(spool.iterdir()))
            wait_until(lambda: any("went away" in r.getMessage() for r in lines.records))
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["busy"] == 0)
    finally:
        logger.removeHandler(lines)
    assert not [r.getMessage() for r in lines.records if r.exc_info or r.levelno >= logging.ERROR]
    gone = [r.getMessage() for r in lines.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and "\n" not in gone[0] and "/v1/audio/transcriptions" in gone[0], gone
    assert not list(spool.iterdir())


def test_a_file_in_another_field_is_named(recognizer, wav_bytes: bytes, spool: Path) -> None:
    client = TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), allowed_hosts=TEST_HOSTS)))
    for endpoint in ("/v1/audio/transcriptions", "/api/transcribe"):
        response = client.post(endpoint, files={"audio": ("speech.wav", wav_bytes, "audio/wav")})
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert message.startswith("no 'file' field") and "'audio'" in message, message
    assert not list(spool.iterdir())


def test_stream_true_is_refused_and_the_ignored_fields_are_accepted(recognizer, wav_bytes: bytes,
                                                                    spool: Path) -> None:
    client = TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), allowed_hosts=TEST_HOSTS)))
    audio = {"file": ("speech.wav", wav_bytes, "audio/wav")}
    for value in ("true", "True", "1"):
        refused = client.post("/v1/audio/transcriptions", files=audio, data={"stream": value})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream", value
        assert "not supported" in refused.json()["error"]["message"]
    accepted = client.post("/v1/audio/transcriptions", files=audio,
                           data={"stream": "false", "prompt": "bad cab", "temperature": "0.7", "model": "any"})
    assert accepted.status_code == 200 and set(accepted.json()) == {"text"}
    assert not list(spool.iterdir())
