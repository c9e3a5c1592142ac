"""Accuracy on long recordings: join a manifest's utterances into long files and score them.

    python scripts/long_audio.py CKPT MANIFEST [--group-sizes 1,3,10,0] [--window-seconds 30]

Consecutive utterances (manifest order) are joined with ``--gap`` seconds of silence into
files of ``group size`` utterances (0 = all of them in one file), transcribed through the
same path as ``asr evaluate`` and scored against the joined references. Group size 1 is
the utterances one by one; the difference to it is what long audio costs. ``--window-seconds``
overrides the window the model cuts long files into (default: what the checkpoint chose).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

import asr
from asr.data.audio import load_audio
from asr.scoring.evaluate import evaluate_manifest
from asr.data.manifest import read_manifest_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("manifest")
    parser.add_argument("--group-sizes", default="1,3,10,0", help="utterances per file; 0 = all (default 1,3,10,0)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds of silence between joined utterances")
    parser.add_argument("--window-seconds", type=float, help="override the model's long-audio window")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N utterances")
    args = parser.parse_args(argv)

    model = asr.load_model(args.checkpoint)
    if args.window_seconds:
        model.window_seconds = args.window_seconds
    reading = read_manifest_lines(args.manifest)
    for problem in reading.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    utterances = reading.utterances[: args.limit or None]
    rate = model.sample_rate
    waveforms = [load_audio(u.audio, rate) for u in utterances]
    gap = np.zeros(int(args.gap * rate), dtype=np.float32)
    print(f"{args.checkpoint}: window {model.window_seconds:.1f} s, {len(utterances)} utterances of {args.manifest}")
    print("| utterances per file | files | mean file s | WER % | CER % |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.group_sizes.split(",")]:
            size = size or len(utterances)
            manifest = Path(tmp) / f"joined-{size}.jsonl"
            seconds = []
            with open(manifest, "w", encoding="utf-8") as out:
                for first in range(0, len(utterances), size):
                    group = utterances[first : first + size]
                    joined = np.concatenate([part for w in waveforms[first : first + size] for part in (w, gap)])
                    path = Path(tmp) / f"{size}-{first}.flac"
                    soundfile.write(path, joined, rate)
                    seconds.append(len(joined) / rate)
                    record = {"id": f"{size}-{first}", "audio": str(path), "text": " ".join(u.text for u in group),
                              "duration": seconds[-1]}
                    out.write(json.dumps(record) + "\n")
            report = evaluate_manifest(model, manifest)  # the same path as `asr evaluate`
            if not report.complete:
                print(f"error: not every joined file was scored: {report.format(worst=0)}", file=sys.stderr)
                return 1
            print(f"| {size} | {len(seconds)} | {np.mean(seconds):.1f} | {100 * report.words.rate:.2f} | "
                  f"{100 * report.chars.rate:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
