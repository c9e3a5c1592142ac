"""The HTTP API (asr/serving/app.py): OpenAI-compatible transcription, limits, bad input, the CLI."""

from __future__ import annotations

import itertools
import json
import select
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from asr.serving.app import create_app, exposure_warning
from asr.serving.context import ServerOptions
from conftest import SAMPLE_RATE, running_server, tone_audio


TEST_HOSTS = ("testserver",)  # the Host TestClient sends: allowed as --allow-host would


def client_for(recognizer, spool: Path, **options) -> TestClient:
    return TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), model_name="tiny",
                                                           allowed_hosts=TEST_HOSTS, **options)))


def post(client: TestClient, audio: bytes, **form):
    return client.post("/v1/audio/transcriptions", files={"file": ("speech.wav", audio, "audio/wav")},
                       data={"model": "whisper-1", **form})


def assert_good(client: TestClient, audio: bytes) -> None:
    response = post(client, audio)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"text"}


def test_response_formats_match_the_library(recognizer, wav_bytes: bytes, spool: Path, tmp_path: Path) -> None:
    from asr.inference.writers import render

    path = tmp_path / "same.wav"
    path.write_bytes(wav_bytes)
    expected = recognizer.transcribe([path])[0]
    assert expected.ok and expected.words, "the tiny model should emit some words for the test to mean anything"
    with client_for(recognizer, spool) as client:
        assert post(client, wav_bytes).json() == {"text": expected.text}
        text = post(client, wav_bytes, response_format="text")
        assert text.headers["content-type"].startswith("text/plain") and text.text == render(expected, "text")
        srt = post(client, wav_bytes, response_format="srt").text
        assert srt == render(expected, "srt") and "-->" in srt and "," in srt.splitlines()[1]
        vtt = post(client, wav_bytes, response_format="vtt").text
        assert vtt == render(expected, "vtt") and vtt.startswith("WEBVTT")
        verbose = post(client, wav_bytes, response_format="verbose_json").json()
    assert verbose["task"] == "transcribe" and verbose["language"] == "english"
    assert verbose["text"] == expected.text
    assert verbose["duration"] == pytest.approx(len(tone_audio("bad cab")) / SAMPLE_RATE, abs=1e-3)
    assert "words" not in verbose  # only when asked for
    segments = verbose["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert " ".join(s["text"] for s in segments) == expected.text
    assert segments[0]["start"] == expected.words[0].start and segments[-1]["end"] == expected.words[-1].end
    assert all(s["avg_logprob"] <= 0 for s in segments)
    assert not list(spool.iterdir())


def test_word_timestamps(recognizer, wav_bytes: bytes, spool: Path) -> None:
    with client_for(recognizer, spool) as client:
        body = post(client, wav_bytes, response_format="verbose_json", **{"timestamp_granularities[]": "word"}).json()
    words = body["words"]
    assert [w["word"] for w in words] == body["text"].split()
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert all(0 <= w["confidence"] <= 1 for w in words)


def test_models_and_health(recognizer, spool: Path) -> None:
    with client_for(recognizer, spool) as client:
        models = client.get("/v1/models").json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
        assert models["data"][0]["object"] == "model"
        assert client.get("/v1/models/tiny").json()["id"] == "tiny"
        missing = client.get("/v1/models/other")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        health = client.get("/healthz").json()
        assert health == {"status": "ok", "model": "tiny", "busy": 0, "capacity": 1 + 8}
        unknown = client.get("/nowhere")
        assert unknown.status_code == 404 and "message" in unknown.json()["error"]


def test_too_large_is_413_and_the_body_is_cut_off(recognizer, wav_bytes: bytes, spool: Path) -> None:
    limit_mb = 0.01  # 10 KiB; the file is larger
    assert len(wav_bytes) > limit_mb * 1024 * 1024
    with client_for(recognizer, spool, max_upload_mb=limit_mb) as client:
        response = post(client, wav_bytes)
        assert response.status_code == 413
        error = response.json()["error"]
        assert "0.01 MB" in error["message"] and error["code"] == "file_too_large"

        # Without Content-Length (chunked), the server stops reading at the limit.
        consumed = 0
        boundary = "b0undary"

        def body():
            nonlocal consumed
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.wav\"\r\n"
                   "Content-Type: audio/wav\r\n\r\n").encode()
            for _ in range(1000):  # 64 MB offered
                consumed += 1
                yield b"\0" * 65536
            yield f"\r\n--{boundary}--\r\n".encode()

        chunked = client.post("/v1/audio/transcriptions", content=body(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert chunked.status_code == 413  # (TestClient buffers the body: cut-off is tested over a socket below)
        assert not list(spool.iterdir())
    with client_for(recognizer, spool, max_upload_mb=1) as client:
        assert_good(client, wav_bytes)


def test_bad_input_is_400_and_the_server_keeps_serving(recognizer, wav_bytes: bytes, spool: Path) -> None:
    bad_requests = [
        ("text file", lambda c: c.post("/v1/audio/transcriptions", files={"file": ("notes.wav", b"hello, not audio\n" * 50, "audio/wav")})),
        ("empty file", lambda c: c.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"", "audio/wav")})),
        ("no file", lambda c: c.post("/v1/audio/transcriptions", data={"model": "x"})),
        ("json body", lambda c: c.post("/v1/audio/transcriptions", json={"file": "a.wav"})),
        ("broken multipart", lambda c: c.post("/v1/audio/transcriptions", content=b"--x\r\ngarbage",
                                              headers={"content-type": "multipart/form-data; boundary=zz"})),
        ("bad format", lambda c: post(c, wav_bytes, response_format="mp3")),
        ("bad granularity", lambda c: post(c, wav_bytes, **{"timestamp_granularities[]": "char"})),
        ("other language", lambda c: post(c, wav_bytes, language="de")),
        ("path as a name", lambda c: c.post("/v1/audio/transcriptions",
                                            files={"file": ("../../etc/passwd", b"x" * 100, "audio/wav")})),
    ]
    with client_for(recognizer, spool) as client:
        for name, send in bad_requests:
            response = send(client)
            assert response.status_code == 400, (name, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error", name
            assert str(spool) not in error["message"], name  # our temporary names stay ours
            assert not list(spool.iterdir()), name
            assert_good(client, wav_bytes)
        text = bad_requests[0][1](client).json()["error"]
        assert text["code"] == "invalid_audio" and "unreadable audio" in text["message"]
        assert client.get("/healthz").json()["busy"] == 0
    assert not list(spool.iterdir())


class FileEvent:
    """threading.Event's set and wait, across processes (recognition runs in a worker process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self) -> None:
        self.path.touch()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class BlockingRecognizer:
    """Wraps a recognizer; each transcription waits until released, so a test holds the worker."""

    def __init__(self, inner, folder: Path) -> None:
        self.inner = inner
        self.started = FileEvent(folder / "started")
        self.release = FileEvent(folder / "release")

    def transcribe(self, paths):
        self.started.set()
        assert self.release.wait(30), "the test never released the worker"
        return self.inner.transcribe(paths)


@pytest.mark.parametrize("max_queue", [0, 1])
def test_full_queue_is_503_with_retry_after(recognizer, wav_bytes: bytes, spool: Path, max_queue: int) -> None:
    blocking = BlockingRecognizer(recognizer, spool.parent)
    with client_for(blocking, spool, max_queue=max_queue, retry_after_s=7) as client:
        results: list = []
        first = threading.Thread(target=lambda: results.append(post(client, wav_bytes)))
        first.start()
        assert blocking.started.wait(30)
        waiting = []
        for _ in range(max_queue):  # fill the queue: these wait behind the blocked worker
            waiting.append(threading.Thread(target=lambda: results.append(post(client, wav_bytes))))
            waiting[-1].start()
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["busy"] < 1 + max_queue:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        spooled = list(spool.iterdir())  # the held upload, under our own name
        assert len(spooled) == 1 + max_queue and all(p.name.startswith("asr-upload-") for p in spooled)
        busy = post(client, wav_bytes)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
        assert busy.json()["error"]["code"] == "server_busy"
        blocking.release.set()
        for thread in [first, *waiting]:
            thread.join(60)
        assert [r.status_code for r in results] == [200] * (1 + max_queue)
        assert client.get("/healthz").json()["busy"] == 0
        assert_good(client, wav_bytes)
    assert not list(spool.iterdir())


def test_exposure_warning() -> None:
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    assert exposure_warning("localhost") is None and exposure_warning("127.0.0.2") is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert "anyone who can reach" in exposure_warning(host)
        assert exposure_warning(host, has_key=True) is None  # the key guards it


def test_cli_serve_warns_off_loopback(trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import asr.serving.app
    from asr.cli import main

    served: list = []
    monkeypatch.setattr(asr.serving.app, "serve", lambda app, host, port: served.append((app, host, port)))
    assert main(["serve", str(trained_checkpoint), "--host", "0.0.0.0", "--port", "8123", "--greedy"]) == 0
    assert "anyone who can reach this address can use the server" in capsys.readouterr().err
    app, host, port = served[0]
    assert (host, port) == ("0.0.0.0", 8123)
    assert TestClient(app, base_url="http://127.0.0.1").get("/v1/models").json()["data"][0]["id"] == "best.pt"

    assert main(["serve", str(trained_checkpoint), "--max-queue", "2"]) == 0
    assert "anyone" not in capsys.readouterr().err
    assert served[1][1:] == ("127.0.0.1", 8000)
    assert TestClient(served[1][0]).get("/healthz").json()["capacity"] == 1 + 2


def test_upload_over_the_limit_is_cut_off(recognizer, wav_bytes: bytes, spool: Path) -> None:
    """A chunked upload without Content-Length: the server answers 413 and stops reading long
    before the client has sent it all (64 MB offered, 10 KiB allowed)."""
    app = create_app(recognizer, ServerOptions(temp_dir=str(spool), max_upload_mb=0.01))
    with running_server(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n")
            head = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
            sent, reply = 0, b""
            conn.setblocking(False)
            while sent < 1000 and not reply:
                readable, writable, _ = select.select([conn], [conn], [], 10)
                if readable:
                    try:
                        reply = conn.recv(65536) or b"closed"
                    except ConnectionResetError:
                        reply = b"reset"
                elif writable:
                    try:
                        conn.sendall(chunk)
                        sent += 1
                    except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                        continue
                else:
                    pytest.fail("the server neither answered nor read")
            assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
            assert sent < 200, f"sent {sent} chunks of 64 KiB before the 413"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:  # still serving
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    assert not list(spool.iterdir())


def test_openai_client_against_a_real_server(recognizer, wav_bytes: bytes, spool: Path, tmp_path: Path) -> None:
    import openai

    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes)
    expected = recognizer.transcribe([path])[0]
    app = create_app(recognizer, ServerOptions(temp_dir=str(spool), model_name="tiny"))
    with running_server(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        with open(path, "rb") as audio:
            plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
        assert plain.text == expected.text
        with open(path, "rb") as audio:
            verbose = client.audio.transcriptions.create(model="tiny", file=audio, response_format="verbose_json",
                                                         timestamp_granularities=["word"])
        assert verbose.text == expected.text
        assert [w.word for w in verbose.words] == [w.word for w in expected.words]
        assert verbose.words[0].start == expected.words[0].start
        with open(path, "rb") as audio:
            srt = client.audio.transcriptions.create(model="tiny", file=audio, response_format="srt")
        assert "-->" in str(srt)
        with pytest.raises(openai.BadRequestError) as bad:
            client.audio.transcriptions.create(model="tiny", file=("notes.txt", b"not audio at all" * 10))
        assert "not usable audio" in str(bad.value)
    assert not list(spool.iterdir())
    json.dumps(verbose.model_dump())  # the client's object round-trips


class FailingRecognizer:
    """A recognizer with a bug: the first call raises, later ones work."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def transcribe(self, paths):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("boom")
        return self.inner.transcribe(paths)


def test_a_crash_in_recognition_is_500_and_the_server_goes_on(recognizer, wav_bytes: bytes, spool: Path) -> None:
    app = create_app(FailingRecognizer(recognizer), ServerOptions(temp_dir=str(spool), max_queue=0,
                                                                  allowed_hosts=TEST_HOSTS))
    with TestClient(app, raise_server_exceptions=False) as client:
        crashed = post(client, wav_bytes)
        assert crashed.status_code == 500 and "boom" in crashed.json()["error"]["message"]
        assert client.get("/healthz").json()["busy"] == 0  # its slot came back (max_queue=0: else all 503)
        assert_good(client, wav_bytes)
    assert not list(spool.iterdir())


def test_bench_serve_script_runs_bounded_on_loopback(trained_checkpoint, tone_corpus, capsys):
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    audio = sorted(tone_corpus["root"].glob("valid/*.flac"))[0]
    assert bench.main([str(trained_checkpoint), str(audio), "--clients", "1,2", "--requests", "3",
                       "--live", "2", "--live-seconds", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1:3] for row in rows[:2]] == [[" 1 ", " 3 / 0 / 0 "], [" 2 ", " 3 / 0 / 0 "]]
    live = rows[2].split("|")
    assert live[1].strip() == "2" and int(live[2].split("/")[0]) > 0  # two streams got interim text
