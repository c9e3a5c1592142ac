"""Reliability, measured: kill -9 and resume, bad input, fuzzing, throughput on a shared CPU, hostile server clients.

    python scripts/reliability.py [--quick] [--out RELIABILITY.md] [--only kill,bad-input,fuzz,load,server]

Prints one Markdown table per section and writes them into RELIABILITY.md (a section run
alone replaces only its own part of the file). Everything runs on self-made data (the tone
language of asr/data/synthetic.py) in a temporary folder: no network, no ../shared data.

- kill: a tiny training run killed with SIGKILL at random moments (some while a checkpoint's
  temporary file exists, some just after a validation line was written), re-run after each
  kill with the same command; ``last.pt``/``best.pt`` must load after every kill and the
  final weights must equal an uninterrupted run's (``torch.equal``). Then DDP: 2 gloo ranks
  under ``torchrun --max-restarts``, a rank killed, the finished run equal to an
  uninterrupted one.
- bad-input: broken audio, manifests, configs and checkpoints (one of them a pickle whose
  payload would create a marker file), each given to the CLI as a user would, beside good
  files: the documented exit code, stderr naming the file and the reason, no traceback,
  every good file's result there, and the payload never executed.
- fuzz: tests/test_fuzz.py under its ``long`` hypothesis profile (ASR_FUZZ_PROFILE=long).
- load: training throughput alone and beside one CPU-bound process, with the thread governor
  (asr/utils/threads.py) off and on. Needs the machine to itself: run it alone.
- server: a real ``asr serve`` on 127.0.0.1 (a tiny model trained on the spot, beam search, an
  API key) under hostile but fair clients, each bounded in time: long silence twice, a header
  that lies about the rate, 30 min of silence, clients trickling 1 byte/s into every slot, one
  leaving mid-upload, an idle live session, foreign Host and Origin, no or a wrong key, the
  file under another field, oversized and chunked uploads, SIGTERM while busy. Per kind: held
  or not; slots recovered, the server's RSS before and after, temporary files left.

``--quick`` kills fewer times, skips the 3-hour file and the DDP restarts' extra kills.

This file parses the arguments and writes the report; the harnesses are its siblings
reliability_kill.py, reliability_bad_input.py (cases in reliability_bad_cases.py) and
reliability_fuzz_load.py and reliability_server.py (clients in reliability_server_cases.py, the
server process in reliability_server_process.py), with shared helpers in reliability_common.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

# The harnesses are modules beside this file (its folder is on sys.path when run as a script).
from reliability_bad_input import bad_input_table, run_bad_input_section
from reliability_common import ROOT, say
from reliability_fuzz_load import load_table, run_fuzz_section, run_load_section
from reliability_kill import kill_table, run_ddp_kill, run_kill_section
from reliability_server import run_server_section, server_table

from asr.utils.atomic import atomic_write

SECTIONS = ("kill", "bad-input", "fuzz", "load", "server")


def merge_report(path: Path, sections: dict[str, str]) -> str:
    """RELIABILITY.md with ``sections`` replaced (or added), the others kept as they were."""
    titles = {"kill": "kill -9 and resume", "bad-input": "Bad input", "fuzz": "Fuzzing", "load": "Under load",
              "server": "asr serve under hostile clients"}
    existing: dict[str, str] = {}
    if path.exists():
        for block in re.split(r"^## ", path.read_text(), flags=re.MULTILINE)[1:]:
            title, _, body = block.partition("\n")
            existing[title.strip()] = body.strip()
    for key, body in sections.items():
        existing[titles[key]] = body
    order = [titles[k] for k in SECTIONS if titles[k] in existing]
    header = ("# Reliability, measured\n\nWritten by `python scripts/reliability.py` (`--only "
              + ",".join(SECTIONS) + "` reruns a part; `--quick` is shorter). Each section says when and where it ran.\n")
    return header + "".join(f"\n## {title}\n\n{existing[title]}\n" for title in order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills, no 3-hour file, shorter fuzzing")
    parser.add_argument("--out", default=str(ROOT / "RELIABILITY.md"), help="report file (default RELIABILITY.md)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--kills", type=int, help="SIGKILLs of the single-process run (default 24, quick 6)")
    parser.add_argument("--ddp-kills", type=int, help="ranks killed in the DDP run (default 3, quick 1)")
    parser.add_argument("--load-steps", type=int, default=40, help="training steps per throughput run")
    parser.add_argument("--load-minutes", type=float, default=2.0, help="time cap per throughput run")
    parser.add_argument("--load-hidden", type=int, default=256, help="BiLSTM units per direction in the load runs")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = f"{stamp}, {os.cpu_count()} CPUs, torch {torch.__version__}{', --quick' if args.quick else ''}"
    folder = Path(tempfile.mkdtemp(prefix="asr-reliability-"))
    sections: dict[str, str] = {}
    try:
        if "kill" in only:
            kills = args.kills or (6 if args.quick else 24)
            report = run_kill_section(folder / "kill", kills, args.seed)
            ddp_kills = args.ddp_kills or (1 if args.quick else 3)
            ddp = [run_ddp_kill(folder / "kill", ddp_kills, args.seed, dropout=p) for p in (0.0, 0.2)]
            sections["kill"] = f"Run {where}.\n\n" + kill_table(report, ddp)
        if "bad-input" in only:
            bad = run_bad_input_section(folder / "bad", args.quick)
            sections["bad-input"] = f"Run {where}.\n\n" + bad_input_table(bad)
        if "fuzz" in only:
            examples, failed, last = run_fuzz_section("ci" if args.quick else "long")
            sections["fuzz"] = (f"Run {where}.\n\n| property tests (tests/test_fuzz.py) | examples run | failed tests |\n"
                                f"|---|---|---|\n| manifest parser, text normaliser, config loader, audio loader | "
                                f"{examples} | {failed} |\n\npytest: `{last}`")
        if "load" in only:
            figures = run_load_section(folder / "load", args.load_steps, args.load_minutes, args.load_hidden)
            sections["load"] = f"Run {where}.\n\n" + load_table(figures, args.load_steps, args.load_hidden)
        if "server" in only:
            sections["server"] = f"Run {where}.\n\n" + server_table(run_server_section(folder / "server"))
    finally:
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for key in only:
        print(f"\n## {key}\n\n{sections[key]}")
    out = Path(args.out)
    text = merge_report(out, sections)
    with atomic_write(out) as written:
        written.write(text)
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
