"""The web page of ``asr serve`` and the endpoints only it uses.

``GET /`` is the page and ``/static/*`` its files (asr/serving/web/: plain HTML, CSS and JS, no CDN,
no build step). ``GET /api/info`` tells the page the limits; ``POST /api/transcribe`` returns
the timed words together with the txt/json/srt/vtt downloads rendered by asr/inference/writers.py (the
CLI's writers, so a download equals ``asr transcribe --format X``); ``POST /api/inspect``
returns the figures of ``asr inspect`` for one short file. Uploads go through the same
spooling, limits and worker pool as the OpenAI-compatible endpoint (asr/serving/context.py).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.util
import tempfile
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from asr.decoding.settings import DecodingSettings
from asr.errors import AsrError
from asr.inference.live import LiveOptions
from asr.inference.recognizer import SpeechRecognizer
from asr.inference.writers import EXTENSIONS, json_record, render
from asr.inspect.figures import write_figures  # loads matplotlib only when it draws
from asr.inspect.gates import MAX_INSPECT_SECONDS, GatesUnavailableError, check_lstm_model, trace_file
from asr.serving.context import ApiError, ServerContext, Upload, audio_error
from asr.serving.worker import transcribe_upload

WEB_FOLDER = Path(__file__).with_name("web")


def inspect_unavailable(context: ServerContext) -> str | None:
    """Why the inspect panel cannot work with this model or installation (None: it can)."""
    try:
        check_lstm_model(context.recognizer.model)
    except GatesUnavailableError as err:
        return str(err)
    if importlib.util.find_spec("matplotlib") is None:
        return "the figures need matplotlib: pip install 'lstm-asr[inspect]'"
    return None


def public_decoding(settings: DecodingSettings) -> str:
    """How the server decodes, naming the LM and lexicon by file name only: the page (and
    whoever asks) has no business with this machine's folders."""
    text = settings.describe()
    for file in (settings.lm, settings.lexicon):
        if file:
            text = text.replace(str(file), Path(file).name)
    return text


def add_page_routes(app: FastAPI, context: ServerContext, live: LiveOptions) -> None:
    recognizer, options = context.recognizer, context.options
    app.mount("/static", StaticFiles(directory=WEB_FOLDER), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_FOLDER / "index.html", media_type="text/html")

    @app.get("/api/info")
    async def info() -> dict:
        unavailable = inspect_unavailable(context)
        return {
            "model": options.model_name,
            "sample_rate": recognizer.sample_rate,
            "max_upload_mb": options.max_upload_mb,
            "low_confidence": options.low_confidence,
            "decoding": public_decoding(recognizer.decoding),
            "max_audio_seconds": options.max_audio_seconds,
            "live": {"available": options.max_live > 0, "streaming": recognizer.streams,
                     "interim_interval_s": live.interim_interval_s, "pause_seconds": live.pause_seconds},
            "inspect": {"available": unavailable is None, "reason": unavailable, "max_seconds": MAX_INSPECT_SECONDS},
        }

    @app.post("/api/transcribe")
    async def transcribe(request: Request) -> JSONResponse:
        upload, result = await context.run_upload(request, transcribe_upload)
        if not result.ok:
            raise audio_error(upload, result.error)
        result = dataclasses.replace(result, path=upload.filename)  # the client's name, not our spool file
        record = json_record(result)
        record["downloads"] = {EXTENSIONS[fmt].lstrip("."): render(result, fmt) for fmt in EXTENSIONS}
        return JSONResponse(record)

    @app.post("/api/inspect")
    async def inspect(request: Request) -> JSONResponse:
        unavailable = inspect_unavailable(context)
        if unavailable is not None:
            raise ApiError(501 if "matplotlib" in unavailable else 400, unavailable, "inspect_unavailable")
        upload, outcome = await context.run_upload(request, functools.partial(_inspect, temp_dir=options.temp_dir))
        if isinstance(outcome, str):  # unreadable, or longer than inspect shows
            raise ApiError(400, outcome.replace(str(upload.path), upload.filename), "invalid_audio", param="file")
        return JSONResponse(outcome)


def _inspect(recognizer: SpeechRecognizer, upload: Upload, temp_dir: str | None) -> dict | str:
    """In a recognition worker: trace the file and draw its figures (matplotlib is not
    thread-safe; a worker runs one task at a time). Errors about the audio are returned as text."""
    try:
        trace = trace_file(recognizer, upload.path)
    except AsrError as err:  # unreadable, too long
        return str(err)
    trace = dataclasses.replace(trace, path=upload.filename)  # figure titles name the client's file, not our spool
    with tempfile.TemporaryDirectory(prefix="asr-inspect-", dir=temp_dir) as folder:
        figures = [{"title": _title(png.stem),
                    "png": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")}
                   for png in write_figures(trace, folder)]
    return {"text": trace.transcript, "duration": round(trace.duration, 3),
            "max_difference_from_model": trace.max_difference, "figures": figures}


def _title(stem: str) -> str:
    if stem == "log_mel":
        return "Log-mel features"
    if stem == "posteriorgram":
        return "CTC posteriors, greedy path and word boundaries"
    layer, direction = stem.removeprefix("layer").split("_")
    return f"Layer {layer}, {direction} LSTM: input, forget and output gates, cell state"
