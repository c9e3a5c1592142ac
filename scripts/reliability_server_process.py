"""`asr serve` as a subprocess for the server section (scripts/reliability_server.py), and the
processes below it: the server on a free loopback port with its own spool folder (TMPDIR),
the API key from ASR_API_KEY, and what a case of reliability_server_cases.py is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from reliability_common import ASR, ROOT, clean_env

API_KEY = "reliability-key"
SETTLE_S = 15.0  # after a case, how long the server may take to free its slots and spool
# The server's options: beam search in 2 decoding processes (the old hang needed them), and
# limits small enough that every case ends within seconds (the upload-rate limit keeps its default).
SERVE_OPTIONS = ("--beam", "8", "--workers", "2", "--request-timeout", "60", "--max-queue", "2", "--max-live", "1",
                 "--max-upload-mb", "1", "--max-audio-seconds", "1500")
CAPACITY = 1 + 2  # one recognition at a time + --max-queue


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_parents() -> dict[int, int]:
    """Each running process's parent, from /proc (a zombie has ended: left out)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rpartition(")")[2].split()[:2]
        except OSError:  # it ended while we looked
            continue
        if state != "Z":
            parents[int(stat.parent.name)] = int(parent)
    return parents


def process_tree(pid: int) -> set[int]:
    """The running processes below ``pid``."""
    parents, found, frontier = live_parents(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (VmRSS; 0 once it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0) / 1024


class Server:
    """``asr serve CHECKPOINT`` in a subprocess on a free loopback port; its uploads spool in ``spool``."""

    def __init__(self, checkpoint: Path, folder: Path, options: tuple[str, ...] = SERVE_OPTIONS) -> None:
        self.spool = folder / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "serve.log"
        env = clean_env(TMPDIR=str(self.spool), ASR_API_KEY=API_KEY, ASR_THREADS="1")  # a shared CPU: one thread
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*ASR, "serve", str(checkpoint), "--host", "127.0.0.1", "--port",
                                             str(self.port), *options], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=ROOT)
        self.seen: set[int] = set()  # every process seen below the server, ended at the end
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=90)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"asr serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"asr serve did not answer /healthz within {timeout:g} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def auth(self, key: str | None = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def post(self, audio: Path | bytes, name: str = "a.wav", field_name: str = "file", headers: dict | None = None,
             timeout: float = 90) -> httpx.Response:
        """An upload to /v1/audio/transcriptions, with the key unless ``headers`` say otherwise."""
        data = audio.read_bytes() if isinstance(audio, Path) else audio
        return self.http.post("/v1/audio/transcriptions", files={field_name: (name, data)},
                              headers=self.auth() if headers is None else headers, timeout=timeout)

    def busy(self) -> int:
        return int(self.http.get("/healthz", timeout=10).json()["busy"])

    def spooled(self) -> list[str]:
        """Names in the spool folder (uploads, or anything else the server left there)."""
        return sorted(path.name for path in self.spool.iterdir())

    def settled(self, timeout: float = SETTLE_S) -> bool:
        """Whether every slot is free and nothing is spooled within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is None and self.busy() == 0 and not self.spooled():
                return True
            time.sleep(0.2)
        return False

    def memory(self) -> tuple[float, list[float]]:
        """RSS of the server process and of each process below it (recognition, decoding), in MB."""
        tree = process_tree(self.process.pid)
        self.seen |= tree
        return rss_mb(self.process.pid), sorted((rss_mb(pid) for pid in tree), reverse=True)

    def tracebacks(self) -> int:
        """Tracebacks in the server's log so far."""
        return self.log().count("Traceback (most recent call last)")

    def stop(self) -> None:
        """End the server and everything below it, whatever state it is in."""
        self.http.close()
        if self.process.poll() is None:
            self.seen |= process_tree(self.process.pid)
            self.process.kill()
            self.process.wait(30)
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@dataclass
class ServerCase:
    """One kind of hostile-but-fair client."""

    name: str  # what the client does
    group: str  # long audio, slow clients, access, uploads, shutdown
    expected: str  # what holding means, for the table
    run: Callable[[Server], tuple[str, list[str]]]  # plays the client: what it got, and the problems (none: held)
    ends_server: bool = False  # SIGTERM: no settling check after it
