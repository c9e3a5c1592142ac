"""``asr serve`` always ends what it starts (issue 33): long silence, a time limit per
recognition, SIGTERM while busy, no worker process or spooled upload left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from conftest import SAMPLE_RATE, free_port, tone_audio, wait_for_server
from fastapi.testclient import TestClient

from asr.decoding.hypothesis import Hypothesis
from asr.decoding.parallel import ParallelDecoder, start_method
from asr.decoding.settings import DecodingSettings
from asr.inference.recognizer import load_model
from asr.serving.app import create_app
from asr.serving.context import ServerOptions

SILENCE_SECONDS = 250  # issue 33's upload: 250 s of digital silence as FLAC
# Posted this often: the probe's server hung on the first or second; the race behind it is
# random (seen here: at the 2nd, the 3rd, or not in 12), so a few more make it show.
SILENCE_POSTS = 6


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("robust_audio")
    soundfile.write(folder / "silence.flac", np.zeros(SILENCE_SECONDS * SAMPLE_RATE, dtype="int16"), SAMPLE_RATE)
    soundfile.write(folder / "speech.wav", tone_audio("bad cab"), SAMPLE_RATE)
    return {"silence": folder / "silence.flac", "speech": folder / "speech.wav"}


def post(url: str, path: Path, timeout: float) -> httpx.Response:
    with open(path, "rb") as file:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, file)}, timeout=timeout)


def descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # ended meanwhile
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


@contextmanager
def served(checkpoint: Path, tmp_path: Path, *options: str):
    """``asr serve`` in a subprocess, uploads spooled in its own folder (TMPDIR); yields
    (process, url, spool). Whatever happens, it and every process below it end."""
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "TMPDIR": str(spool), "ASR_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "asr", "serve", str(checkpoint), "--host", "127.0.0.1",
                                    "--port", str(port), *options], stdout=log, stderr=subprocess.STDOUT, env=env)
    seen: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(process, url, log_path, 90)
        yield process, url, spool, seen
    finally:
        seen |= descendants(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for pid in alive(seen):  # a failed test leaves nothing running either
            os.kill(pid, signal.SIGKILL)


def test_long_silence_again_and_again_then_speech_over_a_real_server(trained_checkpoint: Path, tmp_path: Path,
                                                           audio: dict[str, Path]) -> None:
    """Issue 33: with beam search in worker processes, 250 s of silence hung the server for good
    (the decoding pool's forked children kept uvicorn's SIGTERM handler, so the pool's
    terminate() could wait for them for ever: test_decoding_workers_take_default_signal_handlers
    shows that cause without the race). Each answer must now come in bounded time."""
    beam = DecodingSettings(method="beam")
    beam = replace(beam, beam=replace(beam.beam, beam_size=8))
    expected = load_model(trained_checkpoint, decoding=beam).transcribe([audio["speech"]])[0].text
    with served(trained_checkpoint, tmp_path, "--beam", "8", "--workers", "2", "--request-timeout", "60") as (
            process, url, spool, seen):
        for attempt in range(SILENCE_POSTS):
            response = post(url, audio["silence"], timeout=60)  # the old server never answered
            assert response.status_code in (200, 504), (attempt, response.text)
            if response.status_code == 504:  # slower than the limit: stopped, named, and the next one works
                assert "--request-timeout" in response.json()["error"]["message"]
        speech = post(url, audio["speech"], timeout=60)
        assert speech.status_code == 200, speech.text
        assert speech.json()["text"] == expected  # the worker process decodes as the library does
        assert httpx.get(f"{url}/healthz", timeout=10).json()["busy"] == 0
        assert not list(spool.glob("asr-upload-*"))

        # A server killed outright takes its worker processes with it (the kernel's parent-death signal).
        seen |= descendants(process.pid)
        assert seen, "the server should run its recognition in a worker process"
        process.kill()
        process.wait(30)
        assert wait_until(lambda: not alive(seen), 15), f"left running: {alive(seen)}"


STALLED_UPLOAD = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                  b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n"
                  b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\0" * 4096)


def test_sigterm_stops_a_busy_server_within_seconds(trained_checkpoint: Path, tmp_path: Path,
                                                    audio: dict[str, Path]) -> None:
    long_silence = tmp_path / "long.flac"
    soundfile.write(long_silence, np.zeros(3600 * SAMPLE_RATE, dtype="int16"), SAMPLE_RATE)  # ~8 s of recognition here
    with served(trained_checkpoint, tmp_path, "--beam", "8", "--workers", "2") as (process, url, spool, seen):
        answers: list = []

        def client() -> None:
            try:
                answers.append(post(url, long_silence, timeout=60))
            except httpx.HTTPError as err:  # the server may close the connection instead of answering
                answers.append(err)

        request = threading.Thread(target=client)
        request.start()
        # In flight: admitted, spooled, and a worker busy with it.
        assert wait_until(lambda: list(spool.glob("asr-upload-*")), 30), "the upload never arrived"
        time.sleep(1.0)
        assert not answers, f"the recognition should still run: {answers}"
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as stalled:
            stalled.sendall(STALLED_UPLOAD)  # and an upload that stops half-way: spooled, never finished
            assert wait_until(lambda: len(list(spool.glob("asr-upload-*"))) == 2, 30), "no second upload"
            seen |= descendants(process.pid)
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            took = time.monotonic() - began
            stalled.settimeout(5)
            stalled_answer = stalled.recv(4096)  # ended by the server with an answer, not a cancelled task
        request.join(60)
        assert stalled_answer.startswith(b"HTTP/1.1 503"), stalled_answer[:200]
        assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")
        assert took < 10, f"SIGTERM took {took:.1f} s"  # 3 s of it for the stalled upload
        assert not list(spool.iterdir()), list(spool.iterdir())  # every spooled upload removed
        assert wait_until(lambda: not alive(seen), 10), f"left running: {alive(seen)}"
        assert answers and (isinstance(answers[0], httpx.HTTPError) or answers[0].status_code == 503), answers


class HangsOnLongAudio:
    """A recognizer whose recognition of audio longer than a minute never ends (a stand-in for
    any hang); it is pickled into the server's worker process, so it lives at module level."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def transcribe(self, paths):
        if soundfile.info(str(paths[0])).duration > 60:
            time.sleep(3600)
        return self.inner.transcribe(paths)


def test_a_recognition_past_the_limit_is_504_and_its_worker_is_replaced(trained_checkpoint: Path, tmp_path: Path,
                                                                        audio: dict[str, Path]) -> None:
    recognizer = load_model(trained_checkpoint)
    expected = recognizer.transcribe([audio["speech"]])[0].text
    app = create_app(HangsOnLongAudio(recognizer), ServerOptions(temp_dir=str(tmp_path), request_timeout_s=3))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server allows
        def send(path: Path):
            return client.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())})

        assert send(audio["speech"]).json()["text"] == expected
        workers = app.state.context.recognition
        (hung,) = {w.process.pid for w in workers._workers}
        began = time.monotonic()
        timed_out = send(audio["silence"])
        assert 3 <= time.monotonic() - began < 30
        assert timed_out.status_code == 504, timed_out.text
        error = timed_out.json()["error"]
        assert error["code"] == "request_timeout" and "3 s" in error["message"]
        assert "--request-timeout" in error["message"]
        assert not alive({hung}), "the hung worker should be killed"
        assert send(audio["speech"]).json()["text"] == expected  # a fresh worker took its place
        assert client.get("/healthz").json()["busy"] == 0
    assert not list(tmp_path.glob("asr-upload-*"))
    assert not alive({w.process.pid for w in workers._workers}), "closing the app ends its workers"


class ReportsItsSignals:
    """A decoder whose "transcript" says how the worker process it runs in handles SIGTERM and
    SIGINT (pickled by reference when workers are spawned, so it lives at module level)."""

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]:
        handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        return [Hypothesis(f"{handlers[0] is signal.SIG_DFL} {handlers[1] is signal.SIG_IGN}", [], [], 0.0)]


def test_decoding_workers_take_default_signal_handlers() -> None:
    """The root cause of issue 33's hang: the forked decoding workers kept the server's SIGTERM
    handler (uvicorn's, which only asks the server to stop), so Pool.terminate() left a worker
    waiting for the queue lock that the terminating parent held, and joining it took for ever."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as uvicorn's handler: SIGTERM alone ends nothing
    try:
        with ParallelDecoder(ReportsItsSignals(), 2) as parallel:
            results = parallel.decode([np.zeros((5, 4), dtype=np.float32)] * 4)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [nbest[0].text for nbest in results] == ["True True"] * 4  # SIGTERM ends it; Ctrl-C is the parent's


def test_a_threaded_process_spawns_its_decoding_workers() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(30,))
    other.start()
    try:
        assert start_method() == "spawn"  # forking beside another thread can copy a lock it holds
    finally:
        stop.set()
        other.join()


def test_cli_request_timeout_reaches_the_server(trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.serving.app
    from asr.cli import main

    served: list = []
    monkeypatch.setattr(asr.serving.app, "serve", lambda app, host, port: served.append(app))
    assert main(["serve", str(trained_checkpoint), "--greedy", "--request-timeout", "7.5"]) == 0
    assert main(["serve", str(trained_checkpoint), "--greedy"]) == 0
    limits = [app.state.context.recognition.timeout_s for app in served]
    assert limits == [7.5, ServerOptions().request_timeout_s] and limits[1] == 300
