"""The ``asr`` command line: one module per group of commands, each a thin layer over the library.

Each module adds its commands to the parser (``add_commands``) and imports the library only in
its handlers, so that ``asr --help``, ``asr prepare`` and ``asr lm build`` start without torch.
"""

from __future__ import annotations

import argparse
import sys

from asr.cli import data, deploy, inspect, lm, serve, train, transcribe
from asr.cli.options import EXIT_USAGE
from asr.errors import AsrError
from asr.version import __version__

# The commands that run the network (and so consult the thread governor, asr/utils/threads.py).
NETWORK_COMMANDS = frozenset({"train", "transcribe", "evaluate", "tune-lm", "package", "export", "serve", "inspect"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="BiLSTM-CTC speech recognition.")
    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for mode in (data, train, transcribe, lm, serve, deploy, inspect):  # the pipeline's order, in `asr --help`
        mode.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``asr ...`` (and ``python -m asr ...``, as torchrun runs it): the exit status."""
    argv = data.prepare_librispeech_argv(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        if args.command in NETWORK_COMMANDS:
            from asr.utils.threads import adjust_threads  # imports torch: not for prepare or lm build

            adjust_threads()  # ASR_THREADS checked, and the free cores first sampled, before any work
        return args.func(args)
    except AsrError as err:  # what a user can fix; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

