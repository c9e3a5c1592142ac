"""Shared fixtures: a tiny self-made "tone language" corpus and tiny configs.

The tone language itself (each letter a tone of its own pitch) lives in asr.data.synthetic, so
that scripts/reliability*.py use it too; its names stay importable from here for the tests.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from asr.data.synthetic import (  # noqa: F401  (re-exported: tests do `from conftest import ...`)
    OVERFIT_TEXTS,
    SAMPLE_RATE,
    tiny_config,
    tone_audio,
    write_tone_corpus,
    write_tone_manifests,
)


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and valid manifests of the tone language (8 + 4 utterances)."""
    return write_tone_manifests(tmp_path_factory.mktemp("tones"), OVERFIT_TEXTS)


@pytest.fixture(scope="session")
def trained_checkpoint(tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained checkpoint (accuracy irrelevant) for CLI and round-trip tests."""
    from asr.training.loop import train

    out_dir = tmp_path_factory.mktemp("tiny_model")
    train(tiny_config(out_dir, tone_corpus, train={"epochs": 2}))
    return out_dir / "best.pt"


# The server and live tests' fixtures: module-scoped as each module had them, so that one
# module's changes to its recognizer never reach another's.
@pytest.fixture(scope="module")
def recognizer(trained_checkpoint: Path):
    """The trained checkpoint, loaded once per test module."""
    from asr.inference.recognizer import load_model

    return load_model(trained_checkpoint)


@pytest.fixture(scope="module")
def wav_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A WAV file of the phrase "bad cab" in the tone language, as uploaded."""
    import soundfile

    path = tmp_path_factory.mktemp("server_audio") / "speech.wav"
    soundfile.write(path, tone_audio("bad cab"), SAMPLE_RATE)
    return path.read_bytes()


@pytest.fixture()
def spool(tmp_path: Path) -> Path:
    """An empty folder for a server's spooled uploads (ServerOptions.temp_dir)."""
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def write_arpa(path: Path, unigrams: dict[str, float], bigrams: dict[str, float]) -> str:
    """A tiny ARPA bigram model (KenLM needs order >= 2). Values are log10 probabilities."""
    lines = ["\\data\\", f"ngram 1={len(unigrams) + 3}", f"ngram 2={len(bigrams)}", "", "\\1-grams:",
             "-2.0\t<unk>\t0", "-99\t<s>\t-0.3", "-1.0\t</s>\t0"]
    lines += [f"{p}\t{w}\t-0.2" for w, p in unigrams.items()]
    lines += ["", "\\2-grams:"] + [f"{p}\t{pair}" for pair, p in bigrams.items()] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (servers in tests bind loopback only)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(process: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    """Until ``url``/healthz answers 200; fails with the server's log if it exits or takes longer."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"asr serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"asr serve did not answer /healthz within {timeout:g} s:\n{log_path.read_text()}")
        time.sleep(0.25)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def running_server(app, **config):
    """uvicorn on 127.0.0.1 and a free port, in a thread, stopped on exit; yields the port.
    ``config``: more uvicorn.Config settings (log_level warning unless given)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()
