"""What the routes of ``asr serve`` share: options, errors, admission slots, upload spooling, the context.

Uploads are streamed to a temporary file in chunks and cut off at the size limit; the
file's name is ours (never the client's) and it is removed whatever happens. Recognition
runs in worker processes (asr/serving/worker.py), each driven by a thread of a small pool, so
the event loop never blocks and a recognition past ``request_timeout_s`` is killed (504); a
request needs a slot (running or waiting) from the moment it arrives, so at most ``workers +
max_queue`` uploads are on disk at once and any more get 503 with Retry-After before their
body is read.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from asr.data.audio import AudioError, audio_duration
from asr.inference.recognizer import SpeechRecognizer
from asr.serving.worker import RecognitionTimeout, RecognitionWorkers, WorkerUnavailable

T = TypeVar("T")
FORM_FIELDS_BYTES = 64 * 1024  # room for the form's other fields and multipart framing beside the file
MAX_FIELD_BYTES = 4096  # one non-file form field (model, response_format, ...)


@dataclass(frozen=True)
class ServerOptions:
    max_upload_mb: float = 200.0  # largest accepted audio file, in MiB (413 above)
    max_queue: int = 8  # requests that may wait for a worker; more get 503
    # Recognitions at once, each upload's in a worker process holding its own copy of the model
    # (asr/serving/worker.py). One: torch already uses every core for one.
    workers: int = 1
    request_timeout_s: float | None = 300.0  # longest one upload's recognition may run (504, worker killed); None: no limit
    model_name: str = "asr"  # the id /v1/models reports; any `model` a client sends is accepted
    temp_dir: str | None = None  # where uploads are spooled (None: the system's temporary folder)
    retry_after_s: int = 5  # the Retry-After a 503 suggests
    max_live: int = 4  # live microphone streams at once (each re-decodes its open segment twice a second)
    low_confidence: float = 0.5  # the page marks words whose confidence is below this
    # Time limits, so that no client holds a slot for ever (issue 33).
    max_audio_seconds: float = 2 * 60 * 60  # longest audio, from its header before decoding (413); a live session's too
    min_upload_rate: float = 10_000  # bytes/s an upload must average once upload_grace_s is over (408); 0: none
    upload_grace_s: float = 10.0  # an upload's first seconds, in which any rate is fine (slow starts, tiny files)
    live_idle_s: float = 30.0  # a live session that sends nothing for this long is closed
    # Access (asr/serving/access.py).
    api_key: str | None = field(default=None, repr=False)  # needed as "Authorization: Bearer KEY"; None: open
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides localhost, 127.0.0.1, [::1] ("*": any)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may use the API (CORS), e.g. https://app.example.com

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


class _FormReader:
    """python_multipart's callbacks: the ``file`` part goes to ``audio`` (413 past ``limit``),
    the other fields to :attr:`fields` (400 past MAX_FIELD_BYTES each)."""

    def __init__(self, audio: BinaryIO, limit: int, mb: str) -> None:
        self.audio, self.limit, self.mb = audio, limit, mb
        self.fields: dict[str, list[str]] = {}
        self.header_field = self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None  # the current part's form name
        self.is_file = False
        self.value = b""  # the current non-file part's bytes
        self.file_size = 0
        self.files = 0  # `file` parts seen; a second one is refused
        self.filename = ""  # the client's name for the file part

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.headers, self.name, self.is_file, self.value = {}, None, False, b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        self.is_file = self.name == "file"
        if self.is_file:
            self.files += 1
            self.filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
            if self.files > 1:
                raise ApiError(400, "send one 'file' per request", "invalid_request", param="file")
        elif b"filename" in disposition:  # a file under another name (curl -F audio=@x.wav): say which field
            raise ApiError(400, f"no 'file' field in the form: the file came as field {self.name!r}; "
                           "send the audio as multipart field 'file'", "invalid_request", param="file")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            self.file_size += end - start
            if self.file_size > self.limit:
                raise ApiError(413, f"the file is larger than the limit of {self.mb}", "file_too_large", param="file")
            self.audio.write(data[start:end])
        else:
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                raise ApiError(400, f"form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                               "invalid_request", param=self.name)

    def on_part_end(self) -> None:
        if not self.is_file and self.name:
            self.fields.setdefault(self.name, []).append(self.value.decode("utf-8", "replace"))


class UploadReads:
    """The uploads being read, so that shutdown ends them with a 503 of ours instead of uvicorn
    cancelling their tasks at its grace period's end (a traceback per upload in the log)."""

    def __init__(self) -> None:
        self.stopping = False
        self._timers: set[tuple[asyncio.AbstractEventLoop, asyncio.Timeout]] = set()

    def add(self, timer: asyncio.Timeout) -> None:
        self._timers.add((asyncio.get_running_loop(), timer))

    def discard(self, timer: asyncio.Timeout) -> None:
        self._timers.discard((asyncio.get_running_loop(), timer))

    def stop(self) -> None:
        """Every read times out now. Thread- and signal-safe: it only schedules."""
        self.stopping = True
        for loop, timer in list(self._timers):
            loop.call_soon_threadsafe(timer.reschedule, loop.time())


async def receive_upload(request: Request, options: ServerOptions, reads: UploadReads | None = None) -> Upload:
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
    form = _FormReader(audio, limit, mb)
    parser = MultipartParser(params[b"boundary"], form.callbacks())
    try:
        try:
            await _read_body(request, parser, options, body_limit, mb, reads)
            parser.finalize()
        finally:
            audio.close()
    except (ApiError, ClientDisconnect, asyncio.CancelledError):  # cancelled: the server is shutting down
        _remove(path)
        raise
    except TimeoutError as err:  # a trickle holds a slot that others wait for: it loses it
        _remove(path)
        if reads is not None and reads.stopping:
            raise ApiError(503, "the server is shutting down; retry later", "server_unavailable", "server_error",
                           headers={"Retry-After": str(options.retry_after_s)}) from None
        raise ApiError(408, f"the upload arrived slower than {options.min_upload_rate:g} bytes/s; the server "
                       "stopped waiting for it", "upload_too_slow", param="file",
                       headers={"Connection": "close"}) from err
    except Exception as err:  # python_multipart's parse errors, and anything else about the body
        _remove(path)
        raise ApiError(400, f"malformed multipart body: {err}", "invalid_request") from err
    if form.files == 0:
        _remove(path)
        return Upload(None, 0, form.fields)
    upload = Upload(path, form.file_size, form.fields, _label(form.filename))
    await _check_duration(upload, options)
    return upload


async def _read_body(request: Request, parser: MultipartParser, options: ServerOptions,
                     body_limit: int, mb: str, reads: UploadReads | None = None) -> None:
    """Feed the body to ``parser``: 413 past ``body_limit``, TimeoutError as soon as it has
    arrived slower than ``options.min_upload_rate`` on average since the grace period began."""
    rate = options.min_upload_rate
    began = asyncio.get_running_loop().time()
    received = 0

    def deadline() -> float | None:  # when the average falls below the rate, should nothing more come
        return began + options.upload_grace_s + received / rate if rate > 0 else None

    async with asyncio.timeout(deadline()) as timer:
        if reads is not None:
            reads.add(timer)
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:  # no Content-Length (chunked), or it lied
                    raise ApiError(413, f"the upload is larger than the limit of {mb}", "file_too_large",
                                   param="file")
                parser.write(chunk)
                if reads is None or not reads.stopping:  # shutting down: the deadline stop() set stands
                    timer.reschedule(deadline())
        finally:
            if reads is not None:
                reads.discard(timer)


async def _check_duration(upload: Upload, options: ServerOptions) -> None:
    """413 for audio longer than ``options.max_audio_seconds`` by its header, before anything
    decodes it (an 89 KB FLAC can hold 30 min of silence). A header soundfile cannot read is
    left to the recognizer, which says why; the file is removed on refusal."""
    try:
        seconds = await asyncio.to_thread(audio_duration, upload.path)  # a header read: off the event loop
    except AudioError:
        return
    if seconds > options.max_audio_seconds:
        _remove(upload.path)
        raise ApiError(413, f"the audio is {seconds:,.0f} s long by its header; the limit is "
                       f"{options.max_audio_seconds:g} s", "audio_too_long", param="file")


def _label(filename: str) -> str:
    """The client's file name reduced to a printable base name (shown, never opened)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:200].strip()
    return name or "upload"


@dataclass
class ServerContext:
    """What the routes of the API, the page and live mode share."""

    recognizer: SpeechRecognizer  # this process's copy: live mode, and what the page is told of the model
    options: ServerOptions
    # ``workers`` threads: each drives a recognition worker process, or decodes live audio (in
    # this process: a live decode covers one segment, at most a window long), one at a time.
    pool: ThreadPoolExecutor
    slots: Slots  # uploads admitted: running, waiting, or still arriving
    recognition: RecognitionWorkers  # the processes uploads are recognised in
    reads: UploadReads = field(default_factory=UploadReads)  # uploads still arriving

    async def run_upload(self, request: Request, work: Callable[[SpeechRecognizer, Upload], T],
                         check: Callable[[Upload], None] | None = None) -> tuple[Upload, T]:
        """Admit a request (503 when full), spool its ``file`` (413 past the limit), let
        ``check`` refuse its form fields, and run ``work(recognizer, upload)`` in a recognition
        worker (a module-level function: it is sent by name). The upload is removed and the
        slot freed whatever happens, also when the client goes away."""
        if not self.slots.try_acquire():  # before reading the body: a busy server spends nothing on it
            raise ApiError(503, f"the server is busy ({self.slots.capacity} requests running or waiting); "
                           "retry later", "server_busy", "server_error",
                           headers={"Retry-After": str(self.options.retry_after_s)})
        upload: Upload | None = None
        handed_off = False  # once the worker owns the file and the slot, it releases them
        try:
            upload = await receive_upload(request, self.options, self.reads)
            if upload.path is None:
                raise ApiError(400, "no 'file' field in the form: send the audio as multipart field 'file'",
                               "invalid_request", param="file")
            if check is not None:
                check(upload)
            future = self.pool.submit(self._recognize, work, upload)
            handed_off = True
            return upload, await asyncio.wrap_future(future)
        finally:
            if not handed_off:
                _remove(upload.path if upload else None)
                self.slots.release()

    def _recognize(self, work: Callable[[SpeechRecognizer, Upload], T], upload: Upload) -> T:
        """In the pool: ``work`` in a recognition worker, past the time limit killed (504). The
        upload is removed and the slot freed whatever happens, also when the client is gone."""
        try:
            return self.recognition.call(work, upload)
        except RecognitionTimeout as err:
            raise ApiError(504, f"the recognition ran longer than this server's limit of {err.limit_s:g} s "
                           "(asr serve --request-timeout) and was stopped", "request_timeout", "server_error") from None
        except WorkerUnavailable as err:  # shutting down, or the worker died (a new one is starting)
            raise ApiError(503, str(err), "server_unavailable", "server_error",
                           headers={"Retry-After": str(self.options.retry_after_s)}) from None
        finally:
            _remove(upload.path)
            self.slots.release()

    def stop(self) -> None:
        """Shutting down (SIGTERM, SIGINT): running recognitions are killed and answered 503, as are
        the waiting ones when their turn comes, and uploads still arriving. Takes no lock: uvicorn's
        signal handler calls it."""
        self.reads.stop()
        self.recognition.stop()

    def close(self) -> None:
        """The end: :meth:`stop`, idle workers let go, the pool's queued work done (failing
        fast; each removes its upload)."""
        self.recognition.close()
        self.pool.shutdown(wait=True)


def audio_error(upload: Upload, reason: str | None) -> ApiError:
    """400 for audio that cannot be used, naming the reason (our temporary path never shown)."""
    reason = (reason or "unreadable audio").replace(str(upload.path), upload.filename)
    return ApiError(400, f"the file is not usable audio: {reason}", "invalid_audio", param="file")
