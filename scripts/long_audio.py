"""Accuracy on long recordings: join a manifest's utterances into long files and score them.

    python scripts/long_audio.py CKPT MANIFEST [--group-sizes 1,3,10,0] [--window-seconds 30]

Consecutive utterances (manifest order) are joined with ``--gap`` seconds of silence into
files of ``group size`` utterances (0 = all of them in one file), transcribed through the
same path as ``asr transcribe`` and scored against the joined references. Group size 1 is
the utterances one by one; the difference to it is what long audio costs. ``--window-seconds``
overrides the window the model cuts long files into (default: what the checkpoint chose).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

import asr
from asr.audio import load_audio
from asr.metrics import error_counts
from asr.text import normalize_text


def read_pairs(manifest: str) -> list[tuple[str, str]]:
    import json

    pairs = []
    with open(manifest, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                pairs.append((record["audio"], normalize_text(record["text"])))
    return pairs


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
    pairs = read_pairs(args.manifest)[: args.limit or None]
    rate = model.sample_rate
    waveforms = [load_audio(path, rate) for path, _ in pairs]
    gap = np.zeros(int(args.gap * rate), dtype=np.float32)
    print(f"{args.checkpoint}: window {model.window_seconds:.1f} s, {len(pairs)} utterances of {args.manifest}")
    print("| utterances per file | files | mean file s | WER % | CER % |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.group_sizes.split(",")]:
            size = size or len(pairs)
            files, references, seconds = [], [], []
            for first in range(0, len(pairs), size):
                joined = np.concatenate([part for w in waveforms[first : first + size] for part in (w, gap)])
                path = Path(tmp) / f"g{size}-{first}.flac"
                soundfile.write(path, joined, rate)
                files.append(str(path))
                references.append(" ".join(text for _, text in pairs[first : first + size]))
                seconds.append(len(joined) / rate)
            results = model.transcribe(files)
            failed = [r for r in results if not r.ok]
            if failed:
                print(f"error: {failed[0].path}: {failed[0].error}", file=sys.stderr)
                return 1
            hypotheses = [r.text for r in results]
            words, chars = error_counts(references, hypotheses, "word"), error_counts(references, hypotheses, "char")
            print(f"| {size} | {len(files)} | {np.mean(seconds):.1f} | {100 * words.rate:.2f} | {100 * chars.rate:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
