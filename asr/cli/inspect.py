"""``asr inspect``: figures and JSON of what the network computes for one audio file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli.options import EXIT_OK, EXIT_USAGE, MODEL_HELP


def add_commands(commands: argparse._SubParsersAction) -> None:
    """inspect."""
    inspect = commands.add_parser("inspect", help="figures and JSON of the log-mel, CTC posteriors and the "
                                  "LSTM gates and cell states for one audio file")
    inspect.add_argument("checkpoint", help=MODEL_HELP + " (LSTM models)")
    inspect.add_argument("file", help="one audio file (at most 30 s)")
    inspect.add_argument("--out", required=True, help="folder for inspect.json and the PNG figures")
    inspect.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    inspect.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from asr.decoding.settings import DecodingSettings
    from asr.inference.recognizer import load_model
    from asr.inspect.figures import write_figures
    from asr.inspect.gates import trace_file, write_json

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out {out_dir} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    # fp32 and greedy: the trace runs the float weights step by step and shows the greedy path.
    recognizer = load_model(args.checkpoint, device=args.device, decoding=DecodingSettings())
    trace = trace_file(recognizer, args.file)
    written = [write_json(trace, out_dir / "inspect.json"), *write_figures(trace, out_dir)]
    print(f"transcript (greedy): {trace.transcript}", file=sys.stderr)
    for path in written:
        print(path)
    return EXIT_OK
