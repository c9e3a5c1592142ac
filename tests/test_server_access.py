"""Who may use ``asr serve`` (asr/serving/access.py): the Host check, the API key, Origin checks
and CORS; and what the server shows of itself (/api/info's files, no /docs from a CDN)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from asr.decoding.settings import DecodingSettings
from asr.inference.recognizer import load_model
from asr.serving.access import bound_host_names, normalise_origin, same_origin
from asr.serving.app import create_app
from asr.serving.context import ServerOptions
from tests.conftest import SAMPLE_RATE, write_arpa

KEY = "s3cret-key"
START = {"type": "start", "sample_rate": SAMPLE_RATE}


def client_for(recognizer, spool: Path, base_url: str = "http://testserver", **options) -> TestClient:
    options.setdefault("allowed_hosts", ("testserver",))  # TestClient's Host, allowed as --allow-host would
    return TestClient(create_app(recognizer, ServerOptions(temp_dir=str(spool), model_name="tiny", **options)),
                      base_url=base_url)


def post(client: TestClient, audio: bytes, headers: dict | None = None, **form):
    return client.post("/v1/audio/transcriptions", files={"file": ("speech.wav", audio, "audio/wav")},
                       data={"model": "whisper-1", **form}, headers=headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def denial(client: TestClient, headers: dict | None = None) -> int:
    """The HTTP status with which the server refuses to open /api/live."""
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/api/live", headers=headers or {}):
        pass
    return denied.value.status_code


# ---------------------------------------------------------------- allowed hosts


def test_only_loopback_names_and_allowed_hosts_are_served(recognizer, spool: Path) -> None:
    app = create_app(recognizer, ServerOptions(temp_dir=str(spool), allowed_hosts=("asr.example.org",)))
    for url in ("http://127.0.0.1:8000", "http://localhost:1234", "http://[::1]:8000", "http://127.0.0.1",
                "http://asr.example.org", "http://ASR.example.org:8443"):
        assert TestClient(app, base_url=url).get("/v1/models").status_code == 200, url
    for url in ("http://evil.example", "http://evil.example:8000", "http://127.0.0.1.evil.example",
                "http://testserver"):
        client = TestClient(app, base_url=url)
        for response in (client.get("/v1/models"), client.get("/"), client.get("/api/info"),
                         client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x", "audio/wav")})):
            assert response.status_code == 400, (url, response.request.url)
        assert denial(client) == 400
        # Probes of load balancers and container runtimes ask by address: /healthz answers any Host.
        assert client.get("/healthz").json()["status"] == "ok"
    assert not list(spool.iterdir())


def test_any_host_when_asked_and_the_bound_address() -> None:
    assert bound_host_names("0.0.0.0") == () and bound_host_names("::") == ()  # no one name to allow
    assert bound_host_names("192.168.1.5") == ("192.168.1.5",)
    assert bound_host_names("fe80::1") == ("[fe80::1]",)  # as a Host header writes it
    assert bound_host_names("Box.Local") == ("box.local",)


def test_allow_host_star_turns_the_check_off(recognizer, spool: Path) -> None:
    client = client_for(recognizer, spool, base_url="http://anything.example", allowed_hosts=("*",))
    assert client.get("/v1/models").status_code == 200


# ---------------------------------------------------------------- the API key


def test_the_api_key_guards_every_api_route(recognizer, wav_bytes: bytes, spool: Path) -> None:
    client = client_for(recognizer, spool, api_key=KEY)
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("GET", "/api/info"),
                         ("GET", "/openapi.json"), ("POST", "/v1/audio/transcriptions"),
                         ("POST", "/api/transcribe"), ("POST", "/api/inspect"), ("GET", "/nowhere")):
        for headers in ({}, bearer("wrong"), {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            response = client.request(method, path, headers=headers,
                                      files={"file": ("a.wav", wav_bytes, "audio/wav")} if method == "POST" else None)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]  # OpenAI's shape: its clients raise AuthenticationError
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error", path
            assert KEY not in response.text and "wrong" not in response.text
    assert not list(spool.iterdir())  # a refused upload is not even spooled
    # The page loads (it asks for the key), and health checks need none.
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    assert client.get("/healthz").status_code == 200
    # With the key: everything works.
    assert client.get("/v1/models", headers=bearer(KEY)).json()["data"][0]["id"] == "tiny"
    assert client.get("/api/info", headers=bearer(KEY)).json()["model"] == "tiny"
    assert post(client, wav_bytes, headers=bearer(KEY)).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"bearer  {KEY} "}).status_code == 200
    assert not list(spool.iterdir())


def test_the_openai_client_sends_the_key(recognizer, wav_bytes: bytes, spool: Path, tmp_path: Path) -> None:
    import openai

    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes)
    client = client_for(recognizer, spool, api_key=KEY)
    good = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client, max_retries=0)
    with open(path, "rb") as audio:
        assert isinstance(good.audio.transcriptions.create(model="tiny", file=audio).text, str)
    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-other", http_client=client, max_retries=0)
    with open(path, "rb") as audio, pytest.raises(openai.AuthenticationError):
        bad.audio.transcriptions.create(model="tiny", file=audio)


def test_live_takes_the_key_in_its_start_message_or_header(recognizer, spool: Path) -> None:
    client = client_for(recognizer, spool, api_key=KEY, max_live=1)
    for start in (START, {**START, "api_key": "wrong"}, {**START, "api_key": 123}):
        with client.websocket_connect("/api/live") as socket:
            socket.send_text(json.dumps(start))
            message = socket.receive_json()
            assert message["type"] == "error" and message["code"] == "invalid_api_key", message
            assert KEY not in message["message"]
    with client.websocket_connect("/api/live") as socket:  # the page's way
        socket.send_text(json.dumps({**START, "api_key": KEY}))
        assert socket.receive_json()["type"] == "ready"
    with client.websocket_connect("/api/live", headers=bearer(KEY)) as socket:  # other clients' way
        socket.send_text(json.dumps(START))
        assert socket.receive_json()["type"] == "ready"
    assert denial(client, headers=bearer("wrong")) == 401
    assert denial(client, headers={"Authorization": f"Basic {KEY}"}) == 401  # a header, but no bearer key


def test_a_socket_without_its_key_holds_no_live_slot(recognizer, spool: Path) -> None:
    client = client_for(recognizer, spool, api_key=KEY, max_live=1)
    with client.websocket_connect("/api/live") as stranger:  # says nothing: would hold the only slot
        with client.websocket_connect("/api/live") as user:
            user.send_text(json.dumps({**START, "api_key": KEY}))
            assert user.receive_json()["type"] == "ready"
        stranger.send_text(json.dumps({**START, "api_key": KEY}))  # now the slot is free again
        assert stranger.receive_json()["type"] == "ready"


# ---------------------------------------------------------------- origins and CORS


def test_origin_rules() -> None:
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://asr.example.com", "asr.example.com")  # TLS at a proxy: the server sees http
    assert same_origin("https://asr.example.com", "asr.example.com:443")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("http://evil.example", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000") and not same_origin("http://x", None)
    assert normalise_origin("https://App.Example.com/") == "https://app.example.com"
    assert normalise_origin("https://app.example.com:443") == "https://app.example.com"
    assert normalise_origin("http://localhost:3000") == "http://localhost:3000"
    for bad in ("app.example.com", "https://app.example.com/page", "ftp://x", ""):
        with pytest.raises(ValueError, match="not an origin"):
            normalise_origin(bad)


def test_posts_and_sockets_from_other_origins_are_refused(recognizer, wav_bytes: bytes, spool: Path) -> None:
    client = client_for(recognizer, spool)
    for origin in ("http://evil.example", "null", "http://testserver:8001", "https://testserver.evil.example"):
        refused = post(client, wav_bytes, headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert refused.json()["error"]["code"] == "origin_not_allowed"
        assert client.post("/api/transcribe", files={"file": ("a.wav", wav_bytes, "audio/wav")},
                           headers={"Origin": origin}).status_code == 403
        assert denial(client, headers={"Origin": origin}) == 403
        assert client.get("/v1/models", headers={"Origin": origin}).status_code == 200  # reading changes nothing
    assert not list(spool.iterdir())
    # The server's own page, and clients that send no Origin (curl, openai), are served.
    assert post(client, wav_bytes, headers={"Origin": "http://testserver"}).status_code == 200
    assert post(client, wav_bytes).status_code == 200
    with client.websocket_connect("/api/live", headers={"Origin": "http://testserver"}) as socket:
        socket.send_text(json.dumps(START))
        assert socket.receive_json()["type"] == "ready"


def test_cors_origins_may_use_the_api_from_the_browser(recognizer, wav_bytes: bytes, spool: Path) -> None:
    app_origin = "https://app.example.com"
    preflight = {"Origin": app_origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    client = client_for(recognizer, spool, api_key=KEY, cors_origins=(app_origin,))
    answer = client.options("/v1/audio/transcriptions", headers=preflight)  # browsers send no key in it
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == app_origin
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    served = post(client, wav_bytes, headers={"Origin": app_origin, **bearer(KEY)})
    assert served.status_code == 200 and served.headers["access-control-allow-origin"] == app_origin
    refused = post(client, wav_bytes, headers={"Origin": app_origin})  # CORS is no way around the key
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == app_origin
    with client.websocket_connect("/api/live", headers={"Origin": app_origin}) as socket:
        socket.send_text(json.dumps({**START, "api_key": KEY}))
        assert socket.receive_json()["type"] == "ready"
    other = post(client, wav_bytes, headers={"Origin": "https://other.example.com", **bearer(KEY)})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    # Without --cors-origin, no CORS headers at all.
    plain = client_for(recognizer, spool)
    assert "access-control-allow-origin" not in plain.options("/v1/audio/transcriptions", headers=preflight).headers
    assert "access-control-allow-origin" not in plain.get("/v1/models", headers={"Origin": app_origin}).headers


# ---------------------------------------------------------------- the command line


def test_cli_key_hosts_and_origins(trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import asr.serving.app
    from asr.cli import main

    served: list = []
    monkeypatch.setattr(asr.serving.app, "serve", lambda app, host, port: served.append(app))
    monkeypatch.setenv("ASR_API_KEY", KEY)
    assert main(["serve", str(trained_checkpoint), "--host", "192.168.1.5", "--allow-host", "asr.lan",
                 "--cors-origin", "https://app.example.com", "--greedy"]) == 0
    assert "anyone" not in capsys.readouterr().err  # the key guards it
    for url in ("http://192.168.1.5:8000", "http://asr.lan", "http://localhost:8000"):
        client = TestClient(served[0], base_url=url)
        assert client.get("/v1/models").status_code == 401, url
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200, url
    assert TestClient(served[0], base_url="http://192.168.1.6").get("/v1/models").status_code == 400
    cors = TestClient(served[0], base_url="http://asr.lan").get("/healthz", headers={"Origin": "https://app.example.com"})
    assert cors.headers["access-control-allow-origin"] == "https://app.example.com"

    monkeypatch.delenv("ASR_API_KEY")
    assert main(["serve", str(trained_checkpoint), "--host", "0.0.0.0", "--api-key", "flag-key", "--greedy"]) == 0
    err = capsys.readouterr().err
    assert "anyone" not in err and "--allow-host" in err  # a wildcard bind: say how to name the server
    assert TestClient(served[1], base_url="http://127.0.0.1").get("/v1/models", headers=bearer("flag-key")).status_code == 200
    assert main(["serve", str(trained_checkpoint), "--host", "0.0.0.0", "--greedy"]) == 0
    assert "anyone who can reach this address can use the server" in capsys.readouterr().err
    assert main(["serve", str(trained_checkpoint), "--cors-origin", "app.example.com"]) == 2
    assert "not an origin" in capsys.readouterr().err


# ---------------------------------------------------------------- what the server shows of itself


def test_info_names_the_lm_and_lexicon_without_their_folders(trained_checkpoint: Path, spool: Path,
                                                             tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    lm = write_arpa(tmp_path / "models" / "words.arpa", {"bad": -1.0, "cab": -1.0}, {"bad cab": -0.5})
    lexicon = tmp_path / "models" / "lexicon.txt"
    lexicon.write_text("bad b a d |\ncab c a b |\n")
    recognizer = load_model(trained_checkpoint)
    recognizer.decoding = DecodingSettings("beam", lm, lexicon=str(lexicon))  # what /api/info describes
    info = client_for(recognizer, spool).get("/api/info").json()
    assert "words.arpa" in info["decoding"] and "lexicon.txt" in info["decoding"], info["decoding"]
    assert str(tmp_path) not in json.dumps(info) and "/" not in info["decoding"]


def test_no_docs_pages_from_a_cdn(recognizer, spool: Path) -> None:
    client = client_for(recognizer, spool)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/audio/transcriptions" in schema.json()["paths"]
