"""The page's endpoints (asr/serving/page_api.py): info, transcription with downloads, inspect."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from asr.inference.writers import render
from asr.serving.app import create_app
from asr.serving.context import ServerOptions
from tests.conftest import SAMPLE_RATE, tone_audio


@pytest.fixture()
def client(recognizer, spool: Path) -> TestClient:
    return TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), model_name="tiny",
                                                           allowed_hosts=("testserver",))))  # TestClient's Host


def wav(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples, SAMPLE_RATE)
    return path


def upload(client: TestClient, endpoint: str, path: Path, name: str | None = None):
    return client.post(endpoint, files={"file": (name or path.name, path.read_bytes(), "audio/wav")})


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: it works offline
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "WebSocket" in script.text
    assert client.get("/static/../server.py").status_code == 404  # nothing outside asr/serving/web/


def test_info_tells_the_page_the_limits(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and info["sample_rate"] == SAMPLE_RATE and info["max_upload_mb"] == 200
    assert info["live"]["available"] and info["live"]["interim_interval_s"] == 0.5
    assert info["inspect"] == {"available": True, "reason": None, "max_seconds": 30.0}
    assert 0 < info["low_confidence"] < 1


def test_transcribe_returns_words_and_the_cli_downloads(client: TestClient, recognizer, tmp_path: Path,
                                                        spool: Path) -> None:
    path = wav(tmp_path / "speech.wav", tone_audio("bad cab"))
    response = upload(client, "/api/transcribe", path, name="../../etc/My Talk.wav")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = dataclasses.replace(recognizer.transcribe([path])[0], path="My Talk.wav")  # a label, never a path
    assert body["text"] == expected.text and body["path"] == "My Talk.wav"
    assert [w["word"] for w in body["words"]] == [w.word for w in expected.words]
    assert body["downloads"] == {"txt": render(expected, "text"), "json": render(expected, "json"),
                                 "srt": render(expected, "srt"), "vtt": render(expected, "vtt")}
    assert json.loads(body["downloads"]["json"])["path"] == "My Talk.wav"
    assert not list(spool.iterdir())


def test_transcribe_refuses_what_is_not_audio(client: TestClient, tmp_path: Path, spool: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    response = upload(client, "/api/transcribe", text)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "not usable audio" in message and str(spool) not in message
    assert client.get("/healthz").status_code == 200 and not list(spool.iterdir())


def test_transcribe_over_the_limit_is_413(recognizer, spool: Path, tmp_path: Path) -> None:
    client = TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), max_upload_mb=0.01,
                                                             allowed_hosts=("testserver",))))
    path = wav(tmp_path / "long.wav", np.zeros(SAMPLE_RATE, dtype=np.float32))
    response = upload(client, "/api/transcribe", path)
    assert response.status_code == 413 and "0.01 MB" in response.json()["error"]["message"]


def test_inspect_returns_the_figures_of_asr_inspect(client: TestClient, recognizer, tmp_path: Path) -> None:
    path = wav(tmp_path / "speech.wav", tone_audio("a dab"))
    response = upload(client, "/api/inspect", path)
    assert response.status_code == 200, response.text
    body = response.json()
    layers = recognizer.config.model.num_layers
    assert len(body["figures"]) == 2 + 2 * layers  # log-mel, posteriors, each layer's two directions
    for figure in body["figures"]:
        assert figure["title"] and figure["png"].startswith("data:image/png;base64,")
        assert base64.b64decode(figure["png"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert body["max_difference_from_model"] < 1e-4


def test_inspect_refuses_long_or_broken_audio(client: TestClient, tmp_path: Path, spool: Path) -> None:
    long = wav(tmp_path / "long.wav", np.zeros(31 * SAMPLE_RATE, dtype=np.float32))
    response = upload(client, "/api/inspect", long)
    assert response.status_code == 400 and "at most 30 s" in response.json()["error"]["message"]
    assert "long.wav" in response.json()["error"]["message"]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\0" * 50)
    response = upload(client, "/api/inspect", broken)
    assert response.status_code == 400 and "broken.flac" in response.json()["error"]["message"]
    assert not list(spool.iterdir())
