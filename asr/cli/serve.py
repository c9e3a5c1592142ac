"""``asr serve``: the web page and the OpenAI-compatible transcription API over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli.options import EXIT_OK, EXIT_USAGE, MODEL_HELP, add_decoding_arguments, load_recognizer


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
    serve.add_argument("--model-name", help="model id reported by /v1/models (default: the checkpoint's name)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_decoding_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from asr.serving.app import create_app, exposure_warning, serve  # fastapi: the serve extra
    from asr.serving.context import ServerOptions

    if args.max_upload_mb <= 0 or args.max_queue < 0 or args.max_live < 0:
        print("error: --max-upload-mb must be > 0, --max-queue and --max-live >= 0", file=sys.stderr)
        return EXIT_USAGE
    warning = exposure_warning(args.host)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    recognizer = load_recognizer(args)
    name = args.model_name or Path(args.checkpoint.rstrip("/")).name
    options = ServerOptions(max_upload_mb=args.max_upload_mb, max_queue=args.max_queue, model_name=name,
                            max_live=args.max_live)
    print(f"asr serve: the page is at http://{args.host}:{args.port}/ (API under /v1)", file=sys.stderr)
    serve(create_app(recognizer, options), host=args.host, port=args.port)
    return EXIT_OK
