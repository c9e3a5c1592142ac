"""The downloader against a loopback HTTP server serving a tiny LibriSpeech-layout tarball."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile

from asr.utils.download import DownloadError, Resource, download, extract


def tiny_librispeech_tarball(subset: str = "dev-tiny") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"LibriSpeech/{subset}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        lines = []
        for utt in range(3):
            audio = io.BytesIO()
            soundfile.write(audio, np.random.default_rng(utt).normal(0, 0.1, 8000).astype(np.float32), 16000, format="FLAC")
            add(f"7/100/7-100-{utt:04d}.flac", audio.getvalue())
            lines.append(f"7-100-{utt:04d} HELLO NUMBER {['ZERO', 'ONE', 'TWO'][utt]}")
        add("7/100/7-100.trans.txt", ("\n".join(lines) + "\n").encode())
    return buffer.getvalue()


class Server:
    """Serves ``files`` with Range support; can cut the first response after N bytes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                server.requests.append((self.path, self.headers.get("Range")))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None  # drop the connection mid-file
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    archive = tiny_librispeech_tarball()
    srv = Server({"dev-tiny.tar.gz": archive, "corrupt.tar.gz": archive[: len(archive) // 2]})
    yield srv
    srv.close()


def resource(server: Server, name: str = "dev-tiny.tar.gz", checksum: str | None = None, size: int | None = None):
    data = server.files[name]
    return Resource(
        name=name, url=f"{server.url}/{name}", filename=name,
        checksum=checksum if checksum is not None else "md5:" + hashlib.md5(data).hexdigest(),
        size=len(data) if size is None else size,
    )


def test_download_verifies_and_extracts(server, tmp_path):
    path = download(resource(server), tmp_path / "dl")
    assert path.read_bytes() == server.files["dev-tiny.tar.gz"]
    extract(path, tmp_path / "data", "dev-tiny")
    assert len(list((tmp_path / "data" / "LibriSpeech" / "dev-tiny").rglob("*.flac"))) == 3


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.cut_after = 1000
    path = download(resource(server), tmp_path, timeout=5)
    assert path.read_bytes() == server.files["dev-tiny.tar.gz"]
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]


def test_checksum_mismatch_is_an_error_and_removes_the_part_file(server, tmp_path):
    bad = resource(server, checksum="md5:" + "0" * 32)
    with pytest.raises(DownloadError, match="does not match"):
        download(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="size"):
        download(resource(server, size=12345), tmp_path)  # more bytes than published: corrupt
    assert list(tmp_path.iterdir()) == []


def test_finished_stages_are_skipped(server, tmp_path):
    res = resource(server)
    path = download(res, tmp_path / "dl")
    extract(path, tmp_path / "data", "dev-tiny")
    before = len(server.requests)
    download(res, tmp_path / "dl")
    (tmp_path / "data" / "LibriSpeech" / "dev-tiny" / "7" / "100" / "7-100.trans.txt").write_text("edited\n")
    extract(path, tmp_path / "data", "dev-tiny")  # marker present: nothing is unpacked again
    assert len(server.requests) == before
    assert (tmp_path / "data" / "LibriSpeech" / "dev-tiny" / "7" / "100" / "7-100.trans.txt").read_text() == "edited\n"


def test_corrupt_archive_gives_a_clear_error(server, tmp_path):
    path = download(resource(server, "corrupt.tar.gz"), tmp_path / "dl")
    with pytest.raises(DownloadError, match="corrupt or unreadable archive"):
        extract(path, tmp_path / "data", "corrupt")
    assert not any(p.name.startswith(".corrupt") for p in (tmp_path / "data").iterdir())


def test_unreachable_server_fails_after_retries(tmp_path, monkeypatch):
    monkeypatch.setattr("asr.utils.download.time.sleep", lambda s: None)
    dead = Resource("x", "http://127.0.0.1:9/x.tar.gz", "x.tar.gz", "", 0)
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download(dead, tmp_path, retries=2, timeout=2)


def test_prepare_librispeech_end_to_end_through_a_mirror(server, tmp_path, monkeypatch, capsys):
    from asr.data import librispeech
    from asr.cli import main
    from asr.data.dataset import SpeechDataset
    from asr.data.manifest import read_manifest
    from asr.data.text import CharVocabulary

    archive = tiny_librispeech_tarball("dev-clean")
    server.files["dev-clean.tar.gz"] = archive
    # The published size cannot match the tiny archive: the CLI says so and exits 2.
    assert main(["prepare", "librispeech", "--subsets", "dev-clean", "--dest", str(tmp_path), "--mirror", server.url]) == 2
    assert "of 337926286 bytes arrived; run again to resume" in capsys.readouterr().err
    (tmp_path / "archives" / "dev-clean.tar.gz.part").unlink()
    tiny = Resource("dev-clean", "unused", "dev-clean.tar.gz", "md5:" + hashlib.md5(archive).hexdigest(), len(archive))
    monkeypatch.setitem(librispeech.ARCHIVES, "dev-clean", tiny)
    manifests = librispeech.prepare_librispeech(["dev-clean"], tmp_path, mirror=server.url, speed_perturb=True)
    utterances = read_manifest(manifests["dev-clean"])
    assert [u.text for u in utterances] == ["hello number zero", "hello number one", "hello number two"]
    perturbed = read_manifest(tmp_path / "manifests" / "dev-clean-sp.jsonl")
    assert len(perturbed) == 9 and {u.speed for u in perturbed} == {0.9, 1.0, 1.1}
    slow = next(u for u in perturbed if u.speed == 0.9)
    assert slow.id.startswith("sp0.9-") and slow.duration == pytest.approx(0.5 / 0.9, abs=1e-3)
    waveform = SpeechDataset([slow], CharVocabulary.english())[0][1]
    assert len(waveform) == pytest.approx(8000 / 0.9, abs=2)
    # Run again: every stage is skipped, no request reaches the server.
    before = len(server.requests)
    librispeech.prepare_librispeech(["dev-clean"], tmp_path, mirror=server.url)
    assert len(server.requests) == before


def test_every_subset_names_a_known_archive():
    from asr.data.librispeech import ARCHIVES, COMBINED, LM_FILES, SUBSETS

    assert all(subset.archive in ARCHIVES for subset in SUBSETS.values())
    assert all(part in SUBSETS for parts in COMBINED.values() for part in parts)
    for resource in [*ARCHIVES.values(), *LM_FILES.values()]:
        algorithm, digest = resource.checksum.split(":")
        assert algorithm == "md5" and len(digest) == 32 and resource.url.endswith(resource.filename)
