"""The page with a model of a language in another script: a tiny Russian model (data.language ru,
its Cyrillic characters taken from its transcripts) trained on espeak-ng's Russian, served by
``asr serve`` and used in Chromium. Uploaded, its words show in Cyrillic, are downloaded as UTF-8
text and subtitles, and come live from the (fake) microphone over the WebSocket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile

# pytestmark: Chromium and espeak-ng, as the page's other tests need them; playwright: the fixture.
from test_browser import (SAMPLE_RATE, asr_serve, espeak, error_text, framed, launch, live_session,  # noqa: F401
                          open_page, playwright, pytestmark, train_phrase_model, upload, word_errors)

# Commands sharing words ("open/close", "door/window", "light"), as the English phrases do.
PHRASES = ["открой дверь", "закрой дверь", "открой окно", "закрой окно", "включи свет", "выключи свет"]
VOICES = [("ru", 150), ("ru+f2", 170)]
TEST_PHRASE = "включи свет"


def cyrillic(text: str) -> bool:
    return all("\u0400" <= c <= "\u04ff" for c in text.replace(" ", "")) and text.strip() != ""


@pytest.fixture(scope="module")
def russian_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("russian_audio")
    speech = espeak(TEST_PHRASE, *VOICES[0])
    upload_path, microphone = folder / "включи_свет.wav", folder / "microphone.wav"
    soundfile.write(upload_path, framed(speech, 0.3, 1.0), SAMPLE_RATE, subtype="PCM_16")
    soundfile.write(microphone, framed(speech, 0.2, 1.5), SAMPLE_RATE, subtype="PCM_16")
    return {"upload": upload_path, "microphone": microphone}


@pytest.fixture(scope="module")
def russian_server(tmp_path_factory: pytest.TempPathFactory, russian_audio: dict[str, Path]):
    checkpoint = train_phrase_model(tmp_path_factory.mktemp("russian"), PHRASES, VOICES, russian_audio["upload"],
                                    TEST_PHRASE, language="ru", framings=4)
    with asr_serve(checkpoint, tmp_path_factory.mktemp("serve_ru")) as url:
        yield url


def test_the_page_shows_and_downloads_cyrillic_words(russian_server: str, playwright, russian_audio,
                                                     tmp_path) -> None:
    browser = launch(playwright)
    try:
        page = open_page(browser, russian_server)
        words = upload(page, russian_audio["upload"])
        text = " ".join(w["word"] for w in words)
        assert word_errors(TEST_PHRASE, text) <= 1 and cyrillic(text), text
        # Drawn: each word takes room on the page (a font has its glyphs).
        widths = page.eval_on_selector_all("#transcript .word",
                                           "spans => spans.map(s => s.getBoundingClientRect().width)")
        assert all(width > 5 for width in widths), widths
        for fmt in ("txt", "srt"):
            assert page.get_attribute(f"#downloads a[data-format={fmt}]", "download") == f"включи_свет.{fmt}"
            saved = page.eval_on_selector(f"#downloads a[data-format={fmt}]", "a => fetch(a.href).then(r => r.text())")
            assert text in " ".join(saved.split()), saved  # UTF-8 end to end: the same words, not mojibake
        assert error_text(page) is None and page.script_errors == []
        page.screenshot(path=str(tmp_path / "russian.png"), full_page=True)
    finally:
        browser.close()


def test_live_cyrillic_from_the_microphone(russian_server: str, playwright, russian_audio) -> None:
    with live_session(playwright, russian_server, russian_audio["microphone"]) as (page, final):
        heard = final.query_selector(".final-text").text_content()
        assert word_errors(TEST_PHRASE, heard) <= 2 and cyrillic(heard), heard  # the loop may start mid-phrase
        page.click("#live-stop")
        page.wait_for_function("document.querySelector('#live-status').textContent === 'Stopped.'")
        assert error_text(page) is None and page.script_errors == []
