"""``asr serve``: the web page and the OpenAI-compatible transcription API over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from asr.cli.options import EXIT_OK, EXIT_USAGE, MODEL_HELP, add_decoding_arguments, load_recognizer, positive_float

API_KEY_VARIABLE = "ASR_API_KEY"  # the key from the environment: not in ps or the shell's history


def add_commands(commands: argparse._SubParsersAction) -> None:
    """serve."""
    serve = commands.add_parser("serve", help="serve a web page (files, microphone, live mode, inspect) and an "
                                "OpenAI-compatible transcription API over HTTP")
    serve.add_argument("checkpoint", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=200.0, help="largest audio upload in MB (default 200)")
    serve.add_argument("--max-queue", type=int, default=8, help="requests that may wait for recognition; "
                       "more get 503 (default 8)")
    serve.add_argument("--max-live", type=int, default=4, help="live microphone streams at once (default 4; "
                       "0 turns live mode off)")
    serve.add_argument("--max-audio-seconds", type=float, default=7200.0, help="longest audio per request, "
                       "read from the file's header before decoding (413 above; default 7200 = 2 h); also the "
                       "longest live session")
    serve.add_argument("--min-upload-rate", type=float, default=10_000.0, help="bytes/s an upload must average "
                       "after its first 10 s, or it gets 408 and frees its slot (default 10000; 0: no limit)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on the API, the page's endpoints "
                       f"and live mode (default ${API_KEY_VARIABLE}; prefer it: a flag shows in ps)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="a Host name clients may use besides localhost, 127.0.0.1, [::1] and the --host "
                       "address (repeatable; '*' turns the check off); others get 400")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let pages of this origin (https://app.example.com) use the API from the browser "
                       "(repeatable); other origins' POSTs and WebSockets get 403")
    serve.add_argument("--request-timeout", type=positive_float, default=300.0, metavar="SECONDS",
                       help="longest one upload's recognition may run: past it the recognition process is killed "
                       "(and replaced) and the request gets 504 (default 300)")
    serve.add_argument("--model-name", help="model id reported by /v1/models (default: the checkpoint's name)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_decoding_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from asr.serving.access import WILDCARD_BINDS, bound_host_names, normalise_origin  # fastapi: the serve extra
    from asr.serving.app import create_app, exposure_warning, serve
    from asr.serving.context import ServerOptions

    if args.max_upload_mb <= 0 or args.max_queue < 0 or args.max_live < 0:
        print("error: --max-upload-mb must be > 0, --max-queue and --max-live >= 0", file=sys.stderr)
        return EXIT_USAGE
    if args.max_audio_seconds <= 0 or args.min_upload_rate < 0:
        print("error: --max-audio-seconds must be > 0, --min-upload-rate >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        cors_origins = tuple(normalise_origin(origin) for origin in args.cors_origin)
    except ValueError as err:
        print(f"error: --cors-origin: {err}", file=sys.stderr)
        return EXIT_USAGE
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    warning = exposure_warning(args.host, api_key is not None)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.host in WILDCARD_BINDS and not args.allow_host:
        print(f"note: on {args.host or 'every interface'}, requests must name the server localhost, 127.0.0.1 or "
              "[::1] (others get 400); add --allow-host NAME for each name or address clients use", file=sys.stderr)
    recognizer = load_recognizer(args)
    name = args.model_name or Path(args.checkpoint.rstrip("/")).name
    options = ServerOptions(max_upload_mb=args.max_upload_mb, max_queue=args.max_queue, model_name=name,
                            max_live=args.max_live, max_audio_seconds=args.max_audio_seconds,
                            request_timeout_s=args.request_timeout,
                            min_upload_rate=args.min_upload_rate, api_key=api_key, cors_origins=cors_origins,
                            allowed_hosts=(*args.allow_host, *bound_host_names(args.host)))
    print(f"asr serve: the page is at http://{args.host}:{args.port}/ (API under /v1)", file=sys.stderr)
    serve(create_app(recognizer, options), host=args.host, port=args.port)
    return EXIT_OK
