"""Who may use ``asr serve``: the Host names it answers to, the origins of browser pages that
may change anything, the API key, and CORS for the origins the operator names.

:func:`add_access_control` registers them as ASGI middleware, outermost first:

1. the Host check (Starlette's TrustedHostMiddleware): a request naming any host but a loopback
   name or an ``--allow-host`` one gets 400, so a DNS-rebinding page cannot reach a loopback
   server under its own name. ``/healthz`` answers any Host: load balancers and container
   probes ask for it by address.
2. CORS (Starlette's CORSMiddleware), only for ``--cors-origin`` origins: their browsers may
   read the answers, and their preflight requests are answered before the key is asked for.
3. :class:`AccessGuard`: a POST or WebSocket from a page of another origin gets 403 (a simple
   cross-origin form POST needs no preflight, so CORS alone would not stop it); with a key,
   every route but the page, its static files and ``/healthz`` needs ``Authorization: Bearer
   KEY`` (401 in OpenAI's shape otherwise). A browser cannot put headers on a WebSocket, so
   ``/api/live`` also takes the key in its start message (asr/serving/live_socket.py).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from asr.serving.context import ServerOptions, error_response

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # always served: this machine's own names
OPEN_PATHS = frozenset({"/", "/healthz"})  # no key: the page must load to ask for it; probes
OPEN_PREFIXES = ("/static/",)  # the page's scripts and styles
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # change nothing: a foreign Origin may send them
WILDCARD_BINDS = ("0.0.0.0", "::", "")  # every interface: no one name to allow


def bound_host_names(host: str) -> tuple[str, ...]:
    """The Host name a client uses for the address ``asr serve --host`` binds: allowed without
    ``--allow-host``. None for a wildcard bind, which has no name of its own."""
    if host in WILDCARD_BINDS:
        return ()
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return (f"[{host.strip('[]')}]",)  # a Host header brackets an IPv6 literal
    except ValueError:  # a host name
        pass
    return (host.lower(),)


def key_matches(expected: str, presented: object) -> bool:
    """Whether ``presented`` is the key, compared in constant time (no timing oracle)."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The KEY of ``Authorization: Bearer KEY`` (None when absent or another scheme)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _without_default_port(netloc: str) -> str:
    return netloc.lower().removesuffix(":80").removesuffix(":443")


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (no default port), or ``*``
    for any origin; ValueError for anything else."""
    if origin.strip() == "*":
        return "*"
    parts = urlsplit(origin.strip().rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(f"{origin!r} is not an origin like https://app.example.com or http://localhost:3000")
    default_port = ":80" if parts.scheme == "http" else ":443"
    return f"{parts.scheme}://{parts.netloc.lower().removesuffix(default_port)}"


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a page at ``origin`` is this server's own page, reached through ``host``.
    Compared by host and port only: behind a TLS proxy the server sees http, the page https."""
    if host is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and _without_default_port(parts.netloc) == _without_default_port(host)


class AccessGuard:
    """The Origin check and the API key, as ASGI middleware (plain ASGI: WebSockets too)."""

    def __init__(self, app: ASGIApp, options: ServerOptions) -> None:
        self.app = app
        self.key = options.api_key
        self.cors_origins = frozenset(normalise_origin(origin) for origin in options.cors_origins)
        self.any_origin = "*" in self.cors_origins  # --cors-origin '*': pages of every origin (with a key!)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:  # on a WebSocket, Starlette sends it as the handshake's HTTP answer
            await refusal(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        """403 for a foreign page's POST or WebSocket, 401 without the key; None: let it through."""
        headers = Headers(scope=scope)
        websocket = scope["type"] == "websocket"
        origin = headers.get("origin")
        if (origin is not None and (websocket or scope["method"] not in SAFE_METHODS)
                and not self.any_origin and origin.lower() not in self.cors_origins
                and not same_origin(origin, headers.get("host"))):
            return error_response(403, f"requests from pages of origin {origin!r} are not allowed here "
                                  "(the server allows its own page, and origins given with asr serve --cors-origin)",
                                  "origin_not_allowed")
        path = scope["path"]
        if self.key is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        if websocket and "authorization" not in headers:
            return None  # a browser's socket sends the key in its start message (live_socket.py)
        presented = bearer_token(headers.get("authorization"))
        if presented is None:
            message = "this server needs an API key: send it as 'Authorization: Bearer KEY'"
        elif not key_matches(self.key, presented):
            message = "the API key sent is not this server's key"
        else:
            return None
        return error_response(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class HostCheck:
    """Starlette's TrustedHostMiddleware for every path but ``/healthz``."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


def add_access_control(app: FastAPI, options: ServerOptions) -> None:
    """Register the checks (the last added runs first: the Host check, then CORS, then the guard)."""
    app.add_middleware(AccessGuard, options=options)
    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=[normalise_origin(o) for o in options.cors_origins],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"],
                           expose_headers=["Retry-After"])
    app.add_middleware(HostCheck, allowed_hosts=[*LOOPBACK_HOSTS, *(h.lower() for h in options.allowed_hosts)])
