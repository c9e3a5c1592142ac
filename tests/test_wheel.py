"""The wheel works on its own: built from the checkout, installed into a fresh venv, run outside the checkout.

The fresh venv gets the wheel alone (``--no-deps``); a ``.pth`` file there lists this venv's
site-packages so that torch, fastapi, ... import without a download. A path in a ``.pth`` file
goes on ``sys.path`` but its own ``.pth`` files (the editable install's finder among them) are not
run, so ``import asr`` can only find the installed wheel: what a user of ``pip install lstm-asr``
gets, the page of ``asr serve`` included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
import soundfile
from conftest import SAMPLE_RATE, free_port, tone_audio, stop_process, wait_for_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
DISTRIBUTION = "lstm_asr"  # the wheel's file name spells lstm-asr so
STEP_TIMEOUT = 120  # seconds for any one build, install or asr command
SERVE_START_TIMEOUT = 60


def run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=STEP_TIMEOUT)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} exited with {result.returncode}\n"
                                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def copy_source(destination: Path) -> Path:
    """What the build reads (top-level files, asr/), copied: a build in the checkout would leave
    build/lib behind, whose stale files (an old layout's) would go into later wheels."""
    destination.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, destination / path.name)
    shutil.copytree(ROOT / "asr", destination / "asr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post_file(url: str, path: Path) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def static_references(text: str) -> set[str]:
    """The page's own files that ``text`` (HTML or JS) names: "/static/..." paths."""
    return set(re.findall(r"""["'](/static/[^"'?#]+)""", text))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The wheel built from the checkout, installed alone into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = copy_source(root / "source")
    dist = root / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", dist, "."], cwd=source, env=env)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"{DISTRIBUTION}-"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    pages = [n for n in names if n.endswith("/web/index.html")]
    assert pages, f"the wheel has no page of asr serve: {names}"

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", wheel], cwd=root, env=env)
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root, env=env).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])  # this venv's
    (site_packages / "dev-venv-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    work = root / "work"  # the commands' cwd: nothing of the checkout beside them
    work.mkdir()
    return {"venv": venv, "python": python, "asr": venv / "bin" / "asr", "work": work, "env": env,
            "wheel": wheel, "pages": pages}


@pytest.fixture(scope="module")
def audio(installed: dict) -> Path:
    path = installed["work"] / "speech.wav"
    soundfile.write(path, tone_audio("bad cab"), SAMPLE_RATE)
    return path


@pytest.fixture(scope="module")
def model(installed: dict) -> Path:
    """The tiny fixture checkpoint, copied beside the work folder (outside the checkout)."""
    path = installed["work"] / "tiny-v2.pt"
    shutil.copy2(FIXTURES / "tiny-v2.pt", path)
    return path


def transcribe(installed: dict, model: Path, audio: Path) -> str:
    result = run([installed["asr"], "transcribe", model, audio], cwd=installed["work"], env=installed["env"])
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stdout  # one file: its text alone (the tiny model babbles)
    return lines[0]


def test_the_installed_wheel_is_what_imports(installed: dict):
    venv = installed["venv"].resolve()
    found = run([installed["python"], "-c", "import asr, torch, fastapi, uvicorn; print(asr.__file__)"],
                cwd=installed["work"], env=installed["env"]).stdout.strip()
    assert Path(found).resolve().is_relative_to(venv), f"asr came from {found}, not the fresh venv {venv}"
    assert not Path(found).resolve().is_relative_to(ROOT), found
    assert installed["asr"].is_file()
    page = Path(found).parent.joinpath(*installed["pages"][0].split("/")[1:])
    assert page.is_file(), f"the wheel's {installed['pages'][0]} is not at {page}"


def test_transcribe_and_package_with_the_installed_command(installed: dict, model: Path, audio: Path):
    from_checkpoint = transcribe(installed, model, audio)
    folder = installed["work"] / "tiny-folder"
    run([installed["asr"], "package", model, folder], cwd=installed["work"], env=installed["env"])
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    # The same weights and greedy decoding: the folder hears what the checkpoint heard.
    assert transcribe(installed, folder, audio) == from_checkpoint


def test_serve_from_the_installed_wheel(installed: dict, model: Path, audio: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = installed["work"] / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(installed["asr"]), "serve", str(model), "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=installed["work"], env=installed["env"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_server(process, url, log_path, SERVE_START_TIMEOUT)

        status, body = get(f"{url}/")
        page = body.decode()
        assert status == 200 and "<html" in page.lower(), (status, page[:500])
        assets = static_references(page)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
        checked: set[str] = set()
        while assets - checked:  # the page's files, and the files its scripts load (the worklet)
            asset = min(assets - checked)
            checked.add(asset)
            status, content = get(f"{url}{asset}")
            assert status == 200 and content, f"GET {asset}: {status}"
            if asset.endswith(".js"):
                assets |= static_references(content.decode())

        status, body = post_file(f"{url}/v1/audio/transcriptions", audio)
        assert status == 200, (status, body[:500])
        assert isinstance(json.loads(body)["text"], str)
    finally:
        stop_process(process)
