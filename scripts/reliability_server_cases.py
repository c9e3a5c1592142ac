"""The server section's clients: each plays one hostile-but-fair client against a running `asr serve`.

Each returns what it got, in words, and the problems (none: the server held). The audio is
made here, in the tone language's folder: issue 33's probe files (250 s of digital silence as
FLAC, 250 s of noise whose WAV header says 100 Hz, 30 min of silence) and a good utterance.
"""

from __future__ import annotations

import itertools
import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import numpy as np
import soundfile
from reliability_server_process import API_KEY, CAPACITY, Server, ServerCase, live_parents, process_tree

from asr.data.synthetic import SAMPLE_RATE, tone_audio

FOREIGN = "http://evil.example"
REQUEST_TIMEOUT_S = 60  # the server's --request-timeout (SERVE_OPTIONS)
MAX_AUDIO_SECONDS = 1500  # the server's --max-audio-seconds
PART_HEAD = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
TRICKLERS = 3  # as many as the server has slots (CAPACITY)
UPLOAD_GRACE_S = 10.0  # the server's first seconds of an upload, in which any rate is fine
LIVE_IDLE_S = 30.0  # the server's live idle limit


def wait_for(condition: Callable[[], object], seconds: float, step: float = 0.1) -> bool:
    """Whether ``condition()`` comes true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(step)
    return bool(condition())


def head(server: Server, length: int | None) -> bytes:
    """A POST's headers for a multipart upload with the key; ``length`` None: chunked."""
    size = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\n%s\r\n\r\n" % (server.port, API_KEY.encode(), size))


def read_reply(conn: socket.socket, deadline: float) -> bytes:
    """One HTTP answer (its head and Content-Length body), or what came before EOF or the deadline."""
    data = b""
    while time.monotonic() < deadline:
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            piece = conn.recv(65536)
        except (TimeoutError, OSError):
            break
        if not piece:
            break
        data += piece
        header, found, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in header.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        if found and len(body) >= length:
            break
    return data


def raw_upload(server: Server, start: bytes, chunks: Iterable[bytes], pause: float = 0.0,
               timeout: float = 40.0) -> tuple[bytes, int, float]:
    """Send ``start``, then ``chunks`` ``pause`` s apart on one connection, until the server
    answers; its answer, the body bytes sent by then, and the seconds it took."""
    began, sent = time.monotonic(), 0
    deadline = began + timeout
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as conn:
        conn.sendall(start)
        for chunk in chunks:
            if select.select([conn], [], [], pause)[0] or time.monotonic() > deadline:  # it answered
                break
            try:
                conn.sendall(chunk)
            except OSError:  # it answered and closed: read the answer
                break
            sent += len(chunk)
        reply = read_reply(conn, deadline)
    return reply, sent, time.monotonic() - began


def status(reply: bytes) -> int | None:
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def error_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def shortened(message: str, limit: int = 60) -> str:
    """``message`` cut at a word, for the table."""
    return message if len(message) <= limit else message[:limit].rsplit(" ", 1)[0] + " ..."


# ---------------------------------------------------------------- long audio


def silence_twice_then_speech(audio: dict[str, Path]) -> Callable[[Server], tuple[str, list[str]]]:
    def run(server: Server) -> tuple[str, list[str]]:
        codes, problems = [], []
        for _ in range(2):  # the old server answered the first and never the second
            response = server.post(audio["silence"], "silence.flac", timeout=REQUEST_TIMEOUT_S + 30)
            codes.append(response.status_code)
            if response.status_code not in (200, 504):
                problems.append(f"silence got {response.status_code}: {error_of(response)}")
        good = server.post(audio["speech"])
        if good.status_code != 200:
            problems.append(f"the good file then got {good.status_code}")
        return f"{' and '.join(map(str, codes))}, then the good file {good.status_code}", problems
    return run


def lying_header(audio: dict[str, Path]) -> Callable[[Server], tuple[str, list[str]]]:
    def run(server: Server) -> tuple[str, list[str]]:
        response = server.post(audio["noise_100hz"], "noise.wav", timeout=REQUEST_TIMEOUT_S + 30)
        good = server.post(audio["speech"])
        problems = [] if response.status_code in (200, 400, 413, 504) else [f"got {response.status_code}"]
        problems += [] if good.status_code == 200 else [f"the good file then got {good.status_code}"]
        return f"{response.status_code}, then the good file {good.status_code}", problems
    return run


def thirty_minutes(audio: dict[str, Path]) -> Callable[[Server], tuple[str, list[str]]]:
    def run(server: Server) -> tuple[str, list[str]]:
        began = time.monotonic()
        response = server.post(audio["half_hour"], "half-hour.flac")
        took = time.monotonic() - began
        named = f"{MAX_AUDIO_SECONDS:g} s" in error_of(response)
        problems = [] if response.status_code == 413 and named else [f"got {response.status_code}: {error_of(response)}"]
        problems += [] if took < 10 else [f"took {took:.1f} s: decoded?"]
        return f"{response.status_code}{', the limit named' if named else ''}", problems
    return run


# ---------------------------------------------------------------- slow and vanishing clients


def trickling_clients(audio: dict[str, Path]) -> Callable[[Server], tuple[str, list[str]]]:
    """As many clients as slots sending their upload at 1 byte/s: meanwhile others get 503; the
    upload-rate limit must then free the slots, and a normal client be served."""
    def run(server: Server) -> tuple[str, list[str]]:
        replies: list[bytes] = [b""] * TRICKLERS

        def trickle(number: int) -> None:
            chunks = itertools.chain([PART_HEAD], itertools.repeat(b"\0", 60))
            replies[number] = raw_upload(server, head(server, 100_000), chunks, pause=1.0, timeout=45)[0]

        threads = [threading.Thread(target=trickle, args=(n,)) for n in range(TRICKLERS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        full = wait_for(lambda: server.busy() >= CAPACITY, 10)
        meanwhile = server.post(audio["speech"]) if full else None
        served = None
        while served is None and time.monotonic() - began < 40:
            if server.busy() < CAPACITY and server.post(audio["speech"], timeout=30).status_code == 200:
                served = time.monotonic() - began
            else:
                time.sleep(0.5)
        for thread in threads:
            thread.join(50)
        codes = [status(reply) for reply in replies]
        problems = [] if full else ["the trickles never held every slot"]
        if meanwhile is not None and (meanwhile.status_code != 503 or "retry-after" not in meanwhile.headers):
            problems.append(f"a normal client meanwhile got {meanwhile.status_code}")
        problems += [] if codes == [408] * TRICKLERS else [f"the trickles got {codes}, not 408"]
        limit = UPLOAD_GRACE_S + 15
        problems += [] if served is not None and served < limit else [f"no normal client served within {limit:g} s"]
        return (f"503 meanwhile, trickles {'/'.join(map(str, codes))}, a normal client served "
                f"{served or float('nan'):.1f} s after they began"), problems
    return run


def vanishing_upload(server: Server) -> tuple[str, list[str]]:
    """A client that sends half its upload and closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(head(server, 500_000) + PART_HEAD + b"\0" * 200_000)
        arrived = wait_for(server.spooled, 10)
    gone = wait_for(lambda: not server.spooled() and server.busy() == 0, 10)
    return (f"spooled: {arrived}, slot and file freed: {gone}",
            [] if arrived and gone else ["the half upload was not freed within 10 s"])


def idle_live_session(server: Server) -> tuple[str, list[str]]:
    """A live session that sends its start message and then nothing, then another one
    (--max-live 1: it gets the slot only if the first was closed)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{server.port}/api/live"
    start = json.dumps({"type": "start", "sample_rate": SAMPLE_RATE})
    began = time.monotonic()
    with connect(url, additional_headers=server.auth(), proxy=None, open_timeout=10) as live:
        live.send(start)
        ready = json.loads(live.recv(timeout=10))["type"]
        try:
            last = json.loads(live.recv(timeout=LIVE_IDLE_S + 15))
        except (TimeoutError, ConnectionClosed):
            last = {}
    closed_after = time.monotonic() - began
    with connect(url, additional_headers=server.auth(), proxy=None, open_timeout=10) as again:
        again.send(start)
        next_session = json.loads(again.recv(timeout=10))["type"]
    problems = [] if ready == "ready" and last.get("code") == "timeout" else [f"got {ready}, then {last}"]
    problems += [] if next_session == "ready" else [f"the next session got {next_session}"]
    return (f"{ready}, closed with '{last.get('code')}' after {closed_after:.0f} s; the next session {next_session}",
            problems)


# ---------------------------------------------------------------- who may use it


def refused(expected: int, send: Callable[[Server], httpx.Response], says: str = "") -> Callable[[Server], tuple[str, list[str]]]:
    """A request that must get ``expected`` (its message holding ``says``), nothing spooled."""
    def run(server: Server) -> tuple[str, list[str]]:
        response = send(server)
        message = error_of(response)
        ok = response.status_code == expected and says in message
        return f"{response.status_code} {shortened(message)!r}", [] if ok else [f"expected {expected} naming {says!r}"]
    return run


def foreign_origin_socket(server: Server) -> tuple[str, list[str]]:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(f"ws://127.0.0.1:{server.port}/api/live", origin=FOREIGN, additional_headers=server.auth(),
                     proxy=None, open_timeout=10):
            return "opened", ["a page of another origin opened a live session"]
    except InvalidStatus as err:
        code = err.response.status_code
        return f"handshake refused: {code}", [] if code == 403 else [f"expected 403, got {code}"]


def keyless_socket(server: Server) -> tuple[str, list[str]]:
    """A browser-style live session (no header) whose start message lacks the key."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/api/live", proxy=None, open_timeout=10) as live:
        live.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE}))
        message = json.loads(live.recv(timeout=10))
    ok = message.get("type") == "error" and message.get("code") == "invalid_api_key"
    return f"{message.get('type')} '{message.get('code')}'", [] if ok else ["a session without the key was served"]


# ---------------------------------------------------------------- uploads


def oversized(chunked: bool) -> Callable[[Server], tuple[str, list[str]]]:
    """2 MB against --max-upload-mb 1, declared or chunked: 413 before the body is read (declared)
    or once the limit is passed (chunked). Chunks go 20 ms apart, so that an early answer shows."""
    def run(server: Server) -> tuple[str, list[str]]:
        body = itertools.repeat(b"\0" * 65536, 32)
        if chunked:
            chunks = (b"%x\r\n%s\r\n" % (len(c), c) for c in itertools.chain([PART_HEAD], body))
            reply, sent, took = raw_upload(server, head(server, None), chunks, pause=0.02)
        else:
            reply, sent, took = raw_upload(server, head(server, len(PART_HEAD) + 32 * 65536), body, pause=0.02)
        code = status(reply)
        ok = code == 413 and took < 10
        return f"{code} after {sent / 1e6:.2f} MB sent", [] if ok else [f"expected 413 at once, got {code}"]
    return run


# ---------------------------------------------------------------- shutdown


def sigterm_while_busy(audio: dict[str, Path]) -> Callable[[Server], tuple[str, list[str]]]:
    """SIGTERM while a recognition runs and an upload has stalled half-way."""
    def run(server: Server) -> tuple[str, list[str]]:
        answers: list = []

        def client() -> None:
            try:
                answers.append(server.post(audio["long_silence"], "long.flac", timeout=60).status_code)
            except httpx.HTTPError as err:  # the server may close the connection instead of answering
                answers.append(type(err).__name__)

        request = threading.Thread(target=client)
        request.start()
        arrived = wait_for(lambda: server.spooled() and server.busy() > 0, 30)
        time.sleep(1.0)
        running = arrived and not answers
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
            stalled.sendall(head(server, 1_000_000) + PART_HEAD + b"\0" * 4096)
            wait_for(lambda: len(server.spooled()) >= 2, 10)
            tree = process_tree(server.process.pid)
            server.seen |= tree
            began = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(30)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - began
        request.join(60)
        wait_for(lambda: not tree & set(live_parents()), 10)
        left, survivors = server.spooled(), tree & set(live_parents())
        problems = [] if running else ["the recognition was not running at SIGTERM (harness: longer audio)"]
        problems += [] if code is not None and took < 10 else [f"still running {took:.0f} s after SIGTERM"]
        problems += [f"left in the spool: {left}"] if left else []
        problems += [f"{len(survivors)} of its processes still running"] if survivors else []
        problems += [] if answers and answers[0] in (503, "RemoteProtocolError", "ReadError") else [f"the client got {answers}"]
        # uvicorn re-raises the signal once it has shut down: -15 is its normal end after SIGTERM.
        return (f"exit {code} {took:.1f} s after SIGTERM ({len(tree)} processes below it, a recognition running, "
                f"an upload stalled); the client got {answers[0] if answers else None}; {len(left)} files left, "
                f"{len(survivors)} processes left"), problems
    return run


# ---------------------------------------------------------------- the list


def make_audio(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"speech": folder / "speech.wav", "silence": folder / "silence.flac", "noise_100hz": folder / "noise.wav",
             "half_hour": folder / "half-hour.flac", "long_silence": folder / "long.flac"}
    soundfile.write(files["speech"], tone_audio("bad cab"), SAMPLE_RATE)
    soundfile.write(files["silence"], np.zeros(250 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE)
    soundfile.write(files["noise_100hz"], rng.integers(-8000, 8000, 250 * 100, dtype=np.int16), 100)  # 250 s at 100 Hz
    soundfile.write(files["half_hour"], np.zeros(1800 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE)
    soundfile.write(files["long_silence"], np.zeros((MAX_AUDIO_SECONDS - 50) * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE)
    return files


def server_cases(folder: Path) -> list[ServerCase]:
    audio = make_audio(folder)
    good = audio["speech"]
    return [
        ServerCase("250 s of digital silence (FLAC) twice, then a good file", "long audio",
                   "each answered (200, or 504 past --request-timeout), then 200", silence_twice_then_speech(audio)),
        ServerCase("250 s of noise, WAV header says 100 Hz, then a good file", "long audio",
                   "answered (200/400/413/504), then 200", lying_header(audio)),
        ServerCase(f"30 min of digital silence ({audio['half_hour'].stat().st_size // 1000} KB FLAC)", "long audio",
                   f"413 naming --max-audio-seconds {MAX_AUDIO_SECONDS}, nothing decoded", thirty_minutes(audio)),
        ServerCase(f"{TRICKLERS} clients trickling 1 byte/s (--max-queue 2: every slot)", "slow clients",
                   "503 for others meanwhile; 408 for each trickle; a normal client served", trickling_clients(audio)),
        ServerCase("a client that disconnects mid-upload", "slow clients", "slot and spooled file freed",
                   vanishing_upload),
        ServerCase("a live session that sends its start message, then nothing", "slow clients",
                   f"closed after {LIVE_IDLE_S:g} s ('timeout'); the next session gets the slot", idle_live_session),
        ServerCase("Host: evil.example (DNS rebinding)", "access", "400",
                   refused(400, lambda s: s.post(good, headers={**s.auth(), "Host": "evil.example"}))),
        ServerCase("POST from a page of another origin", "access", "403",
                   refused(403, lambda s: s.post(good, headers={**s.auth(), "Origin": FOREIGN}), "origin")),
        ServerCase("WebSocket from a page of another origin", "access", "handshake 403", foreign_origin_socket),
        ServerCase("no API key", "access", "401", refused(401, lambda s: s.post(good, headers={}), "API key")),
        ServerCase("a wrong API key", "access", "401",
                   refused(401, lambda s: s.post(good, headers=s.auth("wrong")), "not this server's key")),
        ServerCase("live session without the key", "access", "error 'invalid_api_key'", keyless_socket),
        ServerCase("the file under another field name (audio=)", "uploads", "400 naming the field",
                   refused(400, lambda s: s.post(good, field_name="audio"), "'audio'")),
        ServerCase("2 MB upload, Content-Length (--max-upload-mb 1)", "uploads", "413 at once", oversized(False)),
        ServerCase("2 MB upload, chunked (no Content-Length)", "uploads", "413 at once", oversized(True)),
        ServerCase("SIGTERM while a recognition runs and an upload is stalled", "shutdown",
                   "exit within 10 s, no spooled file, no process left", sigterm_while_busy(audio), ends_server=True),
    ]
