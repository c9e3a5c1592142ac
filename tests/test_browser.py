"""The page of ``asr serve`` (asr/serving/web/) in a real browser against the real server.

Chromium (Debian's, at /usr/bin/chromium; scripts/ensure_chromium.sh installs it) is driven by
Playwright. A small model is trained here, in about a minute on one core, on short espeak-ng
phrases that it then really recognises, so the page is tested end to end: upload a file and
read its timed words, follow them in the player, download the subtitles, see a refused file's
error, transcribe a (fake) microphone live over the WebSocket and record it to a WAV file, and
draw the figures of the network's insides.

Set ASR_SCREENSHOT=path.png to save the page after an upload and an inspection there (the
README's docs/serve-page.png is made so).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import soxr

from asr.data.manifest import Utterance
from asr.data.manifest import write_manifest
from tests.conftest import tiny_config
from conftest import free_port, stop_process, wait_for_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[dev])")

CHROMIUM = Path(os.environ.get("ASR_CHROMIUM", "/usr/bin/chromium"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (bash scripts/ensure_chromium.sh)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None,
                       reason="espeak-ng not installed (bash scripts/ensure_espeak.sh)"),
]

SAMPLE_RATE = 16_000
# Short commands sharing words, so the model learns words rather than whole phrases.
PHRASES = ["open the door", "close the window", "turn on the light", "play the music",
           "stop the car", "call my phone", "show the garden", "open the window"]
VOICES = [("en-us", 150), ("en-gb", 140), ("en-us+f2", 175)]  # (espeak-ng voice, words per minute)
# Each recording is trained with several silences around it: a model that saw one framing of
# each phrase learns that framing and fails on the same words with other pauses (live mode cuts
# segments with its own). 8 phrases x 3 voices x 6 framings = 144 utterances, 5 minutes of audio.
FRAMINGS = 6
EPOCHS = 20
TEST_PHRASE = "turn on the light"
TEST_VOICE = VOICES[0]
MODEL_NAME = "espeak-commands"
CHROMIUM_ARGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
TIMEOUT_MS = 30_000  # every wait in the browser is bounded by this unless it says otherwise


def espeak(text: str, voice: str, speed: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 at 16 kHz (as recipes/espeak/synthesize.py does)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", wav.name, text],
                       check=True, capture_output=True, timeout=60)
        samples, rate = soundfile.read(wav.name, dtype="float32")
    return soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)


def framed(speech: np.ndarray, before: float, after: float) -> np.ndarray:
    """``speech`` with ``before`` and ``after`` seconds of silence around it."""
    silence = lambda seconds: np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)  # noqa: E731
    return np.concatenate([silence(before), speech, silence(after)])


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions + deletions + insertions)."""
    output = jiwer.process_words(reference, hypothesis or "<nothing>")
    return output.substitutions + output.deletions + output.insertions


# ---------------------------------------------------------------- the model and the server


@pytest.fixture(scope="session")
def phrase_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Test files: the test phrase as a WAV with silence after it (uploads), and with 1.5 s of
    silence after it for the fake microphone (Chromium loops the file)."""
    folder = tmp_path_factory.mktemp("phrase_audio")
    speech = espeak(TEST_PHRASE, *TEST_VOICE)
    upload, microphone = folder / "turn_on_the_light.wav", folder / "microphone.wav"
    soundfile.write(upload, framed(speech, 0.3, 1.0), SAMPLE_RATE, subtype="PCM_16")
    soundfile.write(microphone, framed(speech, 0.2, 1.5), SAMPLE_RATE, subtype="PCM_16")
    return {"upload": upload, "microphone": microphone}


def train_phrase_model(root: Path, phrases: list[str], voices: list[tuple[str, int]], test_audio: Path,
                       test_phrase: str, language: str = "en", framings: int = FRAMINGS, epochs: int = EPOCHS) -> Path:
    """A tiny model trained on espeak-ng's ``phrases`` until it recognises ``test_audio``."""
    import asr
    from asr.training.loop import train

    rng = random.Random(0)
    utterances = []
    for v, (voice, speed) in enumerate(voices):
        for p, text in enumerate(phrases):
            speech = espeak(text, voice, speed)
            for f in range(framings):
                path = root / f"{v}-{f}-{p:04d}.flac"
                soundfile.write(path, framed(speech, rng.uniform(0.0, 0.6), rng.uniform(0.0, 1.0)), SAMPLE_RATE)
                utterances.append(Utterance(path.stem, str(path), text, soundfile.info(path).duration, str(v)))
    write_manifest(root / "train.jsonl", utterances)
    write_manifest(root / "valid.jsonl", utterances[::framings * 3])  # a few, to keep validation cheap
    config = tiny_config(
        root / "model", {"train": root / "train.jsonl", "valid": root / "valid.jsonl"},
        model={"num_layers": 2, "hidden_size": 64, "layer_norm": True},
        optim={"lr": 8e-3, "warmup_steps": 20},
        data={"max_frames_per_batch": 1200, "language": language},
        train={"epochs": epochs, "log_every_steps": 50, "valid_every_epochs": 10},
    )
    train(config)
    checkpoint = root / "model" / "best.pt"
    # Say so here if the model is what fails, rather than leave it to the page's tests.
    heard = asr.load_model(str(checkpoint)).transcribe([test_audio])[0].text
    assert word_errors(test_phrase, heard) <= 1, f"the trained model heard {heard!r} for {test_phrase!r}"
    return checkpoint


@pytest.fixture(scope="session")
def phrase_checkpoint(tmp_path_factory: pytest.TempPathFactory, phrase_audio: dict[str, Path]) -> Path:
    """A tiny model trained on the phrases until it recognises them (about a minute on one core)."""
    return train_phrase_model(tmp_path_factory.mktemp("phrases"), PHRASES, VOICES, phrase_audio["upload"],
                              TEST_PHRASE)


@contextmanager
def asr_serve(checkpoint: Path, folder: Path, environment: dict[str, str] | None = None):
    """`asr serve` on a free loopback port; its URL. Always stopped afterwards."""
    port = free_port()
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "asr", "serve", str(checkpoint), "--host", "127.0.0.1",
             "--port", str(port), "--model-name", MODEL_NAME],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(process, url, log_path, 90)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def server(phrase_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    with asr_serve(phrase_checkpoint, tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as driver:
        yield driver


def launch(playwright, *args: str):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + list(args))


@pytest.fixture()
def browser(playwright):
    browser = launch(playwright)
    yield browser
    browser.close()


def open_page(browser, url: str):
    """The page, loaded, with /api/info read; errors in its scripts fail the test."""
    page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.script_errors = errors  # checked by the tests
    page.goto(url)
    page.wait_for_function(f"document.querySelector('#model-name').textContent === {MODEL_NAME!r}")
    return page


def upload(page, path: Path) -> list[dict]:
    """Choose ``path`` in the file input; the transcript's words once shown."""
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#transcript .word")
    return page.eval_on_selector_all("#transcript .word", """spans => spans.map(span => ({
        word: span.textContent, start: Number(span.dataset.start), end: Number(span.dataset.end),
        confidence: Number(span.dataset.confidence), doubtful: span.classList.contains('doubtful'),
        title: span.title}))""")


def drop_file(page, path: Path) -> None:
    """Drop ``path`` on the drop zone, as a file dragged from the desktop is."""
    transfer = page.evaluate_handle("""([name, bytes]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'audio/wav'}));
        return transfer;
    }""", [path.name, list(path.read_bytes())])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def error_text(page) -> str | None:
    return None if page.get_attribute("#error", "hidden") is not None else page.text_content("#error")


# ---------------------------------------------------------------- the tests


def test_upload_shows_timed_words_player_downloads_and_errors(server: str, browser, phrase_audio, tmp_path) -> None:
    page = open_page(browser, server)
    words = upload(page, phrase_audio["upload"])

    text = " ".join(w["word"] for w in words)
    assert word_errors(TEST_PHRASE, text) <= 1, text
    duration = soundfile.info(phrase_audio["upload"]).duration
    for word in words:
        assert 0 <= word["start"] <= word["end"] <= duration + 0.01 and 0 <= word["confidence"] <= 1, word
        assert word["doubtful"] == (word["confidence"] < 0.5), word  # info.low_confidence
        assert "confidence" in word["title"] and "–" in word["title"], word
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)

    # Clicking a word seeks the player to it (and the word is highlighted).
    last = page.locator("#transcript .word").last
    last.click()
    start = words[-1]["start"]
    page.wait_for_function(f"Math.abs(document.querySelector('#player').currentTime - {start}) < 0.5",
                           timeout=5000)
    page.wait_for_selector("#transcript .word.current", timeout=5000)

    # Downloads: the server's renderings, saved under the uploaded file's name.
    for fmt in ("txt", "json", "srt", "vtt"):
        assert page.get_attribute(f"#downloads a[data-format={fmt}]", "download") == f"turn_on_the_light.{fmt}"
    srt = page.eval_on_selector("#downloads a[data-format=srt]", "a => fetch(a.href).then(r => r.text())")
    assert "-->" in srt and words[-1]["word"] in srt
    with page.expect_download(timeout=10_000) as saved:
        page.click("#downloads a[data-format=vtt]")
    assert saved.value.suggested_filename == "turn_on_the_light.vtt"
    assert Path(saved.value.path()).read_text().startswith("WEBVTT")
    assert error_text(page) is None
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

    # Not audio: the server's 400, in words, in the error box.
    page.set_input_files("#file-input", files=[{"name": "x.wav", "mimeType": "audio/wav",
                                                "buffer": b"this is text, not a recording\n" * 20}])
    page.wait_for_selector("#error:not([hidden])")
    assert "audio" in error_text(page).lower()
    assert page.script_errors == []


@contextmanager
def live_session(playwright, url: str, microphone: Path):
    """The page in a Chromium whose fake microphone plays ``microphone`` in a loop, live mode
    started: the page and its first final. The browser is closed afterwards."""
    browser = launch(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={microphone}")
    try:
        page = open_page(browser, url)
        page.click("#live-start")
        yield page, page.wait_for_selector("#live-finals .final", timeout=60_000)
    finally:
        browser.close()


def test_live_microphone_and_recording(server: str, playwright, phrase_audio) -> None:
    # Chromium's fake microphone plays the file in a loop: the phrase, then 1.5 s of silence.
    with live_session(playwright, server, phrase_audio["microphone"]) as (page, final):
        heard = final.query_selector(".final-text").text_content()
        assert word_errors(TEST_PHRASE, heard) <= 2, heard  # the loop may start mid-phrase
        delay = float(final.query_selector(".final-delay").get_attribute("data-delay"))
        assert 0 < delay < 30
        assert "after speech ended" in final.text_content()
        page.click("#live-stop")
        page.wait_for_function("document.querySelector('#live-status').textContent === 'Stopped.'")
        assert page.is_enabled("#live-start") and not page.is_enabled("#live-stop")
        assert error_text(page) is None

        # Recording: the microphone to a 16-bit WAV made in the page, uploaded like a file.
        page.click("#record-start")
        page.wait_for_selector("#record-stop:visible")  # the microphone is open: recording runs
        page.wait_for_timeout(3500)  # longer than one loop of the file: a whole phrase is in it
        page.click("#record-stop")
        page.wait_for_selector("#transcript .word")
        duration = page.eval_on_selector("#player", """player => new Promise(resolve => {
            if (player.readyState >= 1) resolve(player.duration);
            else player.addEventListener('loadedmetadata', () => resolve(player.duration));
        })""")
        assert 3.2 < duration < 10, duration
        assert page.get_attribute("#downloads a[data-format=txt]", "download").startswith("recording-")
        assert error_text(page) is None
        assert page.script_errors == []


def test_inspect_draws_the_figures(server: str, browser, phrase_audio, tmp_path) -> None:
    page = open_page(browser, server)
    info = page.evaluate("fetch('/api/info').then(r => r.json())")
    if not info["inspect"]["available"]:
        pytest.skip(f"inspect unavailable: {info['inspect']['reason']}")
    drop_file(page, phrase_audio["upload"])  # dropped on the drop zone this time
    page.wait_for_selector("#transcript .word")
    page.click("#inspect summary")
    page.wait_for_selector("#inspect-button:enabled")
    page.click("#inspect-button")
    page.wait_for_function("document.querySelectorAll('#inspect-figures img').length >= 3", timeout=90_000)
    # Every figure decoded (a broken data URL has no size) and has its title.
    sizes = page.eval_on_selector_all("#inspect-figures img", """images => Promise.all(images.map(image =>
        image.decode().then(() => [image.naturalWidth, image.alt])))""")
    assert all(width > 100 and title for width, title in sizes), sizes
    assert "reproduce the model to" in page.text_content("#inspect-difference")
    assert error_text(page) is None and page.script_errors == []
    page.locator("#transcript .word").nth(2).click()  # the picture shows a word followed in the player
    save_screenshot(page, tmp_path / "inspect.png")
    if os.environ.get("ASR_SCREENSHOT"):
        save_screenshot(page, Path(os.environ["ASR_SCREENSHOT"]))


def wait_for_error(page, *words: str) -> str:
    """The error box's text once it shows all of ``words`` (case-insensitive)."""
    condition = " && ".join(f"text.includes({w.lower()!r})" for w in words)
    page.wait_for_function(f"""() => {{
        const box = document.querySelector('#error');
        const text = box.hidden ? '' : box.textContent.toLowerCase();
        return {condition};
    }}""")
    return page.text_content("#error")


def test_errors_are_told_in_words(server: str, playwright, phrase_audio) -> None:
    # A microphone exists but the permission prompt is answered "no" (headless Chromium does).
    browser = launch(playwright, "--use-fake-device-for-media-stream")
    try:
        page = open_page(browser, server)
        # The server's refusals, and no server at all, as the page meets them.
        busy = {"status": 503, "headers": {"Retry-After": "7"}, "content_type": "application/json",
                "body": '{"error": {"message": "the server is busy", "type": "server_error", "code": "server_busy"}}'}
        large = {"status": 413, "content_type": "application/json",
                 "body": '{"error": {"message": "the upload is 90000 bytes; the limit is 0.01 MB"}}'}
        for answer, words in ((lambda route: route.fulfill(**busy), ("busy", "try again in 7 s")),
                              (lambda route: route.fulfill(**large), ("too large", "the limit is 0.01 mb")),
                              (lambda route: route.abort(), ("could not reach the server", "network"))):
            page.route("**/api/transcribe", answer)
            page.set_input_files("#file-input", str(phrase_audio["upload"]))
            wait_for_error(page, *words)
            page.unroute("**/api/transcribe")
        assert page.is_enabled("#file-input")  # the page is usable again

        page.click("#live-start")
        wait_for_error(page, "microphone permission was denied")
        assert page.is_enabled("#live-start") and not page.is_enabled("#live-stop")

        # A browser without AudioWorklet cannot record: said so, not a script error.
        page.add_init_script("delete window.AudioWorkletNode;")
        page.reload()
        page.wait_for_function(f"document.querySelector('#model-name').textContent === {MODEL_NAME!r}")
        page.click("#record-start")
        wait_for_error(page, "audioworklet")
        assert page.script_errors == []
    finally:
        browser.close()


def test_the_page_asks_for_the_api_key_once(phrase_checkpoint: Path, playwright, phrase_audio, tmp_path) -> None:
    """A server with ASR_API_KEY: the page asks for the key, says so when it is wrong, then
    transcribes and opens live mode with it, and keeps it for the tab (sessionStorage)."""
    key = "page-test-key"
    browser = launch(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={phrase_audio['microphone']}")
    try:
        with asr_serve(phrase_checkpoint, tmp_path, {"ASR_API_KEY": key}) as url:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("#key-card:not([hidden])")
            assert "needs its API key" in page.text_content("#key-reason")
            page.fill("#key-input", "wrong")
            page.click("#key-submit")
            page.wait_for_function("document.querySelector('#key-reason').textContent.includes('did not accept')")
            page.wait_for_selector("#key-card:not([hidden])")
            page.fill("#key-input", key)
            page.click("#key-submit")
            page.wait_for_function(f"document.querySelector('#model-name').textContent === {MODEL_NAME!r}")
            assert page.is_hidden("#key-card")
            assert upload(page, phrase_audio["upload"])  # the upload carried the key
            page.click("#live-start")  # and the live socket's start message
            page.wait_for_function("document.querySelector('#live-status').textContent.startsWith('Listening')")
            page.click("#live-stop")
            page.wait_for_function("document.querySelector('#live-status').textContent === 'Stopped.'")
            page.reload()  # the tab keeps the key: no second question
            page.wait_for_function(f"document.querySelector('#model-name').textContent === {MODEL_NAME!r}")
            assert page.is_hidden("#key-card") and page.evaluate("sessionStorage.getItem('asr-api-key')") == key
            assert error_text(page) is None and errors == []
    finally:
        browser.close()


def save_screenshot(page, path: Path) -> None:
    """The page down to the second row of figures: the README's picture of it."""
    page.evaluate("document.querySelector('#player').pause()")
    page.evaluate("window.scrollTo(0, 0)")
    bottom = page.evaluate("""() => {
        const figures = document.querySelectorAll('#inspect-figures figure');
        const last = figures[Math.min(3, figures.length - 1)];
        return Math.ceil(last.getBoundingClientRect().bottom + window.scrollY + 12);
    }""")
    page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1200, "height": bottom})


def test_evaluation_report_renders_from_the_file(playwright, tmp_path) -> None:
    """``asr evaluate --html``'s page (asr/scoring/html_report.py), opened as a file: its tables,
    plot and coloured errors show, and it asks for nothing beyond itself."""
    pytest.importorskip("matplotlib")
    from asr.scoring.evaluate import EvaluationReport
    from asr.scoring.html_report import write_html_report
    from asr.scoring.metrics import score_utterances

    references = ["open the door", "close the window", "turn on the light", "play the music"]
    hypotheses = ["open a door", "close window", "turn on the light now", "play the music"]
    scores = score_utterances(["u1", "u2", "u3", "u4"], references, hypotheses)
    report = EvaluationReport(scores, audio_seconds=7.8, speakers=["a", "a", "b", "b"], durations=[1.5, 2.0, 2.5, 1.8])
    path = tmp_path / "report.html"
    write_html_report(path, report, "espeak-commands on test.jsonl")
    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri())
        assert page.locator("table").first.is_visible() and page.locator("table").count() >= 5
        width = page.eval_on_selector("img.plot", "image => image.decode().then(() => image.naturalWidth)")
        assert width > 300 and page.is_visible("img.plot")
        colours = page.eval_on_selector_all(".alignment .pair.substitute, .alignment .pair.delete, "
                                            ".alignment .pair.insert",
                                            "spans => spans.map(span => getComputedStyle(span).backgroundColor)")
        assert len(colours) == 3 and "rgba(0, 0, 0, 0)" not in colours, colours  # the->a, the deleted, now
        assert all(url.startswith(("file:", "data:")) for url in requested), requested
        assert errors == []
    finally:
        browser.close()
