"""``asr serve``: an HTTP API compatible with OpenAI's audio transcription endpoint.

``POST /v1/audio/transcriptions`` (multipart ``file``; ``response_format`` json | text | srt
| vtt | verbose_json; ``timestamp_granularities[]=word``), ``GET /v1/models`` and
``GET /healthz``, so the ``openai`` package and curl work with ``base_url`` pointed here.

Uploads are streamed to a temporary file in chunks and cut off at the size limit; the
file's name is ours (never the client's) and it is removed whatever happens. Recognition
runs in a small thread pool, so the event loop never blocks; a request needs a slot (running
or waiting) from the moment it arrives, so at most ``workers + max_queue`` uploads are on
disk at once and any more get 503 with Retry-After before their body is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from asr.inference.writers import render, subtitle_cues, word_record

if TYPE_CHECKING:
    from asr.inference.recognizer import SpeechRecognizer, Transcription

T = TypeVar("T")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
FORM_FIELDS_BYTES = 64 * 1024  # room for the form's other fields and multipart framing beside the file
MAX_FIELD_BYTES = 4096  # one non-file form field (model, response_format, ...)
CHUNK_BYTES = 1 << 16  # what the body is written to disk in


@dataclass(frozen=True)
class ServerOptions:
    max_upload_mb: float = 200.0  # largest accepted audio file, in MiB (413 above)
    max_queue: int = 8  # requests that may wait for a worker; more get 503
    # Recognitions at once. One: torch already uses every core for one, and a recognizer's
    # decoder (flashlight's beam search) is not known to be safe to share between threads.
    workers: int = 1
    model_name: str = "asr"  # the id /v1/models reports; any `model` a client sends is accepted
    temp_dir: str | None = None  # where uploads are spooled (None: the system's temporary folder)
    retry_after_s: int = 5  # the Retry-After a 503 suggests
    max_live: int = 4  # live microphone streams at once (each re-decodes its open segment twice a second)
    low_confidence: float = 0.5  # the page marks words whose confidence is below this

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """A request the API refuses: its HTTP status and OpenAI-shaped error."""

    def __init__(self, status: int, message: str, code: str, error_type: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.error_type = status, message, code, error_type
        self.param, self.headers = param, headers


def error_response(status: int, message: str, code: str | None, error_type: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def exposure_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address: the server has no authentication."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything
        pass
    return (f"serving on {host}: anyone who can reach this address can use the server (there is no "
            "authentication); use --host 127.0.0.1 to keep it to this machine")


class Slots:
    """Requests admitted (running or waiting); thread-safe, as workers release them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.used >= self.capacity:
                return False
            self.used += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.used -= 1


@dataclass
class Upload:
    path: str | None  # our temporary file holding the `file` part (None: the form had none)
    size: int  # bytes of the file part
    fields: dict[str, list[str]]  # the other form fields, each possibly repeated
    filename: str = "upload"  # the client's name for the file: a label in outputs, never a path


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def receive_upload(request: Request, options: ServerOptions) -> Upload:
    """Stream a multipart body into a temporary file, stopping at the size limit (413).

    The caller removes ``path``; on any error it is removed here.
    """
    limit = options.max_upload_bytes
    body_limit = limit + FORM_FIELDS_BYTES
    mb = f"{options.max_upload_mb:g} MB"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, f"the upload is {int(declared)} bytes; the limit is {mb}", "file_too_large", param="file")
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(400, "expected a multipart/form-data body with the audio in a 'file' field",
                       "invalid_request", param="file")

    fd, path = tempfile.mkstemp(prefix="asr-upload-", suffix=".audio", dir=options.temp_dir)
    audio = os.fdopen(fd, "wb")
    fields: dict[str, list[str]] = {}
    state: dict[str, Any] = {"header_field": b"", "header_value": b"", "headers": {}, "name": None,
                             "is_file": False, "value": b"", "file_size": 0, "files": 0}

    def on_part_begin() -> None:
        state.update(headers={}, name=None, is_file=False, value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header_value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header_field"].lower()] = state["header_value"]
        state["header_field"] = state["header_value"] = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        state["is_file"] = name == "file"
        if state["is_file"]:
            state["files"] += 1
            state["filename"] = disposition.get(b"filename", b"").decode("utf-8", "replace")
            if state["files"] > 1:
                raise ApiError(400, "send one 'file' per request", "invalid_request", param="file")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            state["file_size"] += end - start
            if state["file_size"] > limit:
                raise ApiError(413, f"the file is larger than the limit of {mb}", "file_too_large", param="file")
            audio.write(data[start:end])
        else:
            state["value"] += data[start:end]
            if len(state["value"]) > MAX_FIELD_BYTES:
                raise ApiError(400, f"form field {state['name']!r} is longer than {MAX_FIELD_BYTES} bytes",
                               "invalid_request", param=state["name"])

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            fields.setdefault(state["name"], []).append(state["value"].decode("utf-8", "replace"))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    try:
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:  # no Content-Length (chunked), or it lied
                    raise ApiError(413, f"the upload is larger than the limit of {mb}", "file_too_large", param="file")
                parser.write(chunk)
            parser.finalize()
        finally:
            audio.close()
    except ApiError:
        _remove(path)
        raise
    except ClientDisconnect:
        _remove(path)
        raise
    except Exception as err:  # python_multipart's parse errors, and anything else about the body
        _remove(path)
        raise ApiError(400, f"malformed multipart body: {err}", "invalid_request") from err
    if state["files"] == 0:
        _remove(path)
        return Upload(None, 0, fields)
    return Upload(path, state["file_size"], fields, _label(state.get("filename", "")))


def _label(filename: str) -> str:
    """The client's file name reduced to a printable base name (shown, never opened)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:200].strip()
    return name or "upload"


def _field(fields: dict[str, list[str]], name: str, default: str) -> str:
    values = fields.get(name)
    return values[-1].strip() if values else default


def _run_and_release(work: Callable[[Upload], T], upload: Upload, slots: Slots) -> T:
    """Runs in the pool; removes the upload and frees the slot even if the client is gone."""
    try:
        return work(upload)
    finally:
        _remove(upload.path)
        slots.release()


@dataclass
class ServerContext:
    """What the routes of the API, the page and live mode share."""

    recognizer: SpeechRecognizer
    options: ServerOptions
    pool: ThreadPoolExecutor  # every recognition runs here (one worker: see ServerOptions.workers)
    slots: Slots  # uploads admitted: running, waiting, or still arriving

    async def run_upload(self, request: Request, work: Callable[[Upload], T],
                         check: Callable[[Upload], None] | None = None) -> tuple[Upload, T]:
        """Admit a request (503 when full), spool its ``file`` (413 past the limit), let
        ``check`` refuse its form fields, and run ``work(upload)`` in the pool. The upload is
        removed and the slot freed whatever happens, also when the client goes away."""
        if not self.slots.try_acquire():  # before reading the body: a busy server spends nothing on it
            raise ApiError(503, f"the server is busy ({self.slots.capacity} requests running or waiting); "
                           "retry later", "server_busy", "server_error",
                           headers={"Retry-After": str(self.options.retry_after_s)})
        upload: Upload | None = None
        handed_off = False  # once the worker owns the file and the slot, it releases them
        try:
            upload = await receive_upload(request, self.options)
            if upload.path is None:
                raise ApiError(400, "no 'file' field in the form: send the audio as multipart field 'file'",
                               "invalid_request", param="file")
            if check is not None:
                check(upload)
            future = self.pool.submit(_run_and_release, work, upload, self.slots)
            handed_off = True
            return upload, await asyncio.wrap_future(future)
        finally:
            if not handed_off:
                _remove(upload.path if upload else None)
                self.slots.release()


def audio_error(upload: Upload, reason: str | None) -> ApiError:
    """400 for audio that cannot be used, naming the reason (our temporary path never shown)."""
    reason = (reason or "unreadable audio").replace(str(upload.path), upload.filename)
    return ApiError(400, f"the file is not usable audio: {reason}", "invalid_audio", param="file")


def _segments(result: Transcription) -> list[dict]:
    """Whisper-style segments: the subtitle cues, with the numbers we can honestly give."""
    segments: list[dict] = []
    words = list(result.words)
    position = 0
    for number, cue in enumerate(subtitle_cues(result.words)):
        count = len(cue.text.split(" "))
        cue_words = words[position:position + count]
        position += count
        text = cue.text.encode("utf-8")
        segments.append({
            "id": number, "seek": 0, "start": cue.start, "end": cue.end, "text": cue.text,
            "tokens": [], "temperature": 0.0,
            # mean log of the words' CTC posteriors (whisper: mean token log-probability)
            "avg_logprob": round(sum(math.log(max(w.confidence, 1e-10)) for w in cue_words) / max(len(cue_words), 1), 4),
            "compression_ratio": round(len(text) / max(len(zlib.compress(text)), 1), 4),  # as whisper computes it
        })
    return segments


def format_result(result: Transcription, response_format: str, granularities: list[str]) -> Response:
    """The transcription in one of OpenAI's response formats."""
    if response_format == "json":
        return JSONResponse({"text": result.text})
    if response_format == "verbose_json":
        body: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": round(result.duration, 3),
                                "text": result.text, "segments": _segments(result)}
        if "word" in granularities:
            body["words"] = [word_record(w) for w in result.words]
        if result.warnings:
            body["warnings"] = list(result.warnings)
        return JSONResponse(body)
    media = "text/vtt" if response_format == "vtt" else "text/plain"
    return PlainTextResponse(render(result, response_format), media_type=media)


def create_app(recognizer: SpeechRecognizer, options: ServerOptions = ServerOptions()) -> FastAPI:
    """The FastAPI app serving ``recognizer``: the OpenAI-compatible API, the page at ``/``
    with its endpoints and live mode (asr/serving/page_api.py, asr/serving/live_socket.py). Run it with
    uvicorn (see :func:`serve`)."""
    from asr.inference.live import LiveOptions
    from asr.serving.live_socket import add_live_route
    from asr.serving.page_api import add_page_routes

    pool = ThreadPoolExecutor(max_workers=max(options.workers, 1), thread_name_prefix="asr-recognize")
    context = ServerContext(recognizer, options, pool, Slots(max(options.workers, 1) + max(options.max_queue, 0)))
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="asr", lifespan=lifespan)
    app.state.slots = context.slots  # for /healthz and tests

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.code, err.error_type, err.param, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), None, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, str(err.errors()), "invalid_request")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, keep serving
        return error_response(500, f"internal error: {type(err).__name__}: {err}", "internal_error", "server_error")

    @app.get("/healthz")
    async def healthz() -> dict:
        slots = context.slots
        return {"status": "ok", "model": options.model_name, "busy": slots.used, "capacity": slots.capacity}

    def model_card() -> dict:
        return {"id": options.model_name, "object": "model", "created": created, "owned_by": "asr"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if model_id != options.model_name:
            return error_response(404, f"model {model_id!r} not found; this server has {options.model_name!r}",
                                  "model_not_found", param="model")
        return JSONResponse(model_card())

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        form: dict[str, Any] = {}

        def check(upload: Upload) -> None:
            response_format = _field(upload.fields, "response_format", "json")
            if response_format not in RESPONSE_FORMATS:
                raise ApiError(400, f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                               "invalid_value", param="response_format")
            granularities = [g.strip() for key in ("timestamp_granularities[]", "timestamp_granularities")
                             for g in upload.fields.get(key, [])]
            unknown = [g for g in granularities if g not in GRANULARITIES]
            if unknown:
                raise ApiError(400, f"timestamp_granularities {unknown[0]!r} is not one of word, segment",
                               "invalid_value", param="timestamp_granularities")
            language = _field(upload.fields, "language", "en").lower()
            if language not in ("en", "english", ""):
                raise ApiError(400, f"language {language!r} is not supported; this model transcribes English (en)",
                               "invalid_value", param="language")
            form.update(response_format=response_format, granularities=granularities)

        upload, result = await context.run_upload(request, lambda upload: recognizer.transcribe([upload.path])[0], check)
        if not result.ok:
            raise audio_error(upload, result.error)
        return format_result(result, form["response_format"], form["granularities"])

    live_options = LiveOptions()  # one set: what /api/info tells the page is what /api/live does
    add_page_routes(app, context, live_options)
    add_live_route(app, context, live_options)
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
