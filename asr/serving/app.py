"""``asr serve``: the FastAPI app over one recognizer, its error handlers and ``/healthz``, and uvicorn.

The routes live beside it: the OpenAI-compatible API (asr/serving/openai_api.py), the page and
its endpoints (asr/serving/page_api.py) and live mode (asr/serving/live_socket.py); what they
share (limits, spooling, the worker pool) is asr/serving/context.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from asr.inference.live import LiveOptions
from asr.inference.recognizer import SpeechRecognizer
from asr.serving.access import add_access_control
from asr.serving.context import ApiError, ServerContext, ServerOptions, Slots, error_response
from asr.serving.live_socket import add_live_route
from asr.serving.openai_api import add_openai_routes
from asr.serving.page_api import add_page_routes
from asr.serving.worker import RecognitionWorkers

WS_PING_INTERVAL_S = 20.0  # uvicorn pings every WebSocket this often...
WS_PING_TIMEOUT_S = 20.0  # ...and closes one whose peer does not answer in this time (gone without a FIN)
_log = logging.getLogger("uvicorn.error")  # uvicorn's configured logger: our lines appear among its own
SHUTDOWN_GRACE_S = 3  # after SIGTERM/SIGINT, requests still uploading may finish this long before they are cancelled


def exposure_warning(host: str, has_key: bool = False) -> str | None:
    """A warning when ``host`` is not a loopback address and no API key guards the server."""
    if host == "localhost" or has_key:
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything
        pass
    return (f"serving on {host} without an API key: anyone who can reach this address can use the server; "
            "set ASR_API_KEY (or --api-key), or use --host 127.0.0.1 to keep it to this machine")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, including FastAPI's own 404s and validation errors."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.code, err.error_type, err.param, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), None, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, str(err.errors()), "invalid_request")

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Routine on a network, not a bug: one line, not a traceback. Nobody reads the answer.
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        _log.info("%s went away during %s %s", client, request.method, request.url.path)
        return Response(status_code=499)  # nginx's "client closed request"

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, keep serving
        return error_response(500, f"internal error: {type(err).__name__}: {err}", "internal_error", "server_error")


def create_app(recognizer: SpeechRecognizer,
               options: ServerOptions = ServerOptions()) -> FastAPI:  # noqa: B008  (frozen: safe to share)
    """The FastAPI app serving ``recognizer``: the OpenAI-compatible API, the page at ``/``
    with its endpoints and live mode. Run it with uvicorn (see :func:`serve`)."""
    workers = max(options.workers, 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr-recognize")
    context = ServerContext(recognizer, options, pool, Slots(workers + max(options.max_queue, 0)),
                            RecognitionWorkers(recognizer, workers, options.request_timeout_s))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        context.recognition.start()  # the workers load the model while the server starts listening
        try:
            yield
        finally:
            await asyncio.to_thread(context.close)  # kills what still runs; every spooled upload removed

    # No /docs or /redoc: their pages load scripts from a CDN, and the server needs no outside host.
    app = FastAPI(title="asr", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.slots = context.slots  # for /healthz and tests
    app.state.context = context  # for serve(): a signal stops the recognitions at once
    _add_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict:
        slots = context.slots
        return {"status": "ok", "model": options.model_name, "busy": slots.used, "capacity": slots.capacity}

    add_openai_routes(app, context)
    live_options = LiveOptions()  # one set: what /api/info tells the page is what /api/live does
    add_page_routes(app, context, live_options)
    add_live_route(app, context, live_options)
    add_access_control(app, options)
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until SIGTERM or SIGINT, which stop it within a few seconds:
    running recognitions are killed at once, uploads still arriving get SHUTDOWN_GRACE_S."""
    import uvicorn  # only for serving: tests and scripts drive the app without it

    context: ServerContext = app.state.context

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:  # uvicorn's signal handler
            super().handle_exit(sig, frame)
            context.stop()  # else uvicorn waits for the running requests, however long they take

    Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                          ws_ping_interval=WS_PING_INTERVAL_S, ws_ping_timeout=WS_PING_TIMEOUT_S)).run()
