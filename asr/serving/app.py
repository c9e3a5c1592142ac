"""``asr serve``: the FastAPI app over one recognizer, its error handlers and ``/healthz``, and uvicorn.

The routes live beside it: the OpenAI-compatible API (asr/serving/openai_api.py), the page and
its endpoints (asr/serving/page_api.py) and live mode (asr/serving/live_socket.py); what they
share (limits, spooling, the worker pool) is asr/serving/context.py.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from asr.inference.live import LiveOptions
from asr.inference.recognizer import SpeechRecognizer
from asr.serving.context import ApiError, ServerContext, ServerOptions, Slots, error_response
from asr.serving.live_socket import add_live_route
from asr.serving.openai_api import add_openai_routes
from asr.serving.page_api import add_page_routes


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

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, keep serving
        return error_response(500, f"internal error: {type(err).__name__}: {err}", "internal_error", "server_error")


def create_app(recognizer: SpeechRecognizer,
               options: ServerOptions = ServerOptions()) -> FastAPI:  # noqa: B008  (frozen: safe to share)
    """The FastAPI app serving ``recognizer``: the OpenAI-compatible API, the page at ``/``
    with its endpoints and live mode. Run it with uvicorn (see :func:`serve`)."""
    pool = ThreadPoolExecutor(max_workers=max(options.workers, 1), thread_name_prefix="asr-recognize")
    context = ServerContext(recognizer, options, pool, Slots(max(options.workers, 1) + max(options.max_queue, 0)))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="asr", lifespan=lifespan)
    app.state.slots = context.slots  # for /healthz and tests
    _add_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict:
        slots = context.slots
        return {"status": "ok", "model": options.model_name, "busy": slots.used, "capacity": slots.capacity}

    add_openai_routes(app, context)
    live_options = LiveOptions()  # one set: what /api/info tells the page is what /api/live does
    add_page_routes(app, context, live_options)
    add_live_route(app, context, live_options)
    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn  # only for serving: tests and scripts drive the app without it

    uvicorn.run(app, host=host, port=port, log_level="info")
