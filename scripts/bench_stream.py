"""Streaming benchmark: the streaming step's real-time factor, how many real-time streams the
machine's cores sustain, and how long after a word ends it is emitted.

    python scripts/bench_stream.py MODEL AUDIO [AUDIO ...] [--seconds 60] [--piece-ms 100]
                                   [--streams 8,16,32] [--processes 2]

MODEL streams (latency-controlled or unidirectional). The AUDIO files are joined (and looped)
into ``--seconds`` of audio. Prints Markdown tables:

1. Real-time factor on one thread (compute seconds per audio second; features, network and
   greedy partials, fed in ``--piece-ms`` pieces as fast as possible), fp32 and int8.
2. For each count in ``--streams``: that many streams at real-time pace, spread over
   ``--processes`` processes of one thread each, in ``--precision``. A piece of every stream
   is given each tick (all streams reach a chunk's end on the same tick: the worst case); a
   tick's lag is how long after its piece had played the last stream took it in, and a word's
   delay the wall time from its end in the audio to its emission (look-ahead, piece size,
   waiting and compute). A count is sustained when no tick lags half a second behind the
   audio and the p95 delay stays under 1 s: the streams keep pace (a lag that grew, tick
   after tick, would pass 0.5 s within the run). "finish" is the time the streams' final results took after the
   audio ended (each re-decodes its whole utterance for word times and confidences).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

import numpy as np
import torch

from asr.data.audio import read_audio
from asr.inference.recognizer import load_model


def joined_audio(paths: list[str], rate: int, seconds: float) -> np.ndarray:
    pieces = [read_audio(p, rate).samples for p in paths]
    audio = np.concatenate(pieces)
    repeats = int(np.ceil(seconds * rate / len(audio)))
    return np.tile(audio, repeats)[: int(seconds * rate)]


def real_time_factor(model: str, precision: str, audio: np.ndarray, piece_ms: float) -> float:
    torch.set_num_threads(1)
    recognizer = load_model(model, precision=precision)
    size = int(piece_ms / 1000 * recognizer.sample_rate)
    warm = recognizer.stream()
    warm.accept(audio[: recognizer.sample_rate])
    began = time.perf_counter()
    stream = recognizer.stream()
    for start in range(0, len(audio), size):
        stream.accept(audio[start: start + size])
    stream.finish()
    return (time.perf_counter() - began) / (len(audio) / recognizer.sample_rate)


def paced_streams(job: tuple[str, np.ndarray, int, float, str]) -> dict:
    """``count`` streams of ``audio`` at real-time pace in this process (one thread)."""
    model, audio, count, piece_ms, precision = job
    torch.set_num_threads(1)
    recognizer = load_model(model, precision=precision)
    rate = recognizer.sample_rate
    size = int(piece_ms / 1000 * rate)
    streams = [recognizer.stream() for _ in range(count)]
    lags = []
    began = time.perf_counter()
    for tick, start in enumerate(range(0, len(audio), size)):
        played = began + (tick + 1) * piece_ms / 1000
        time.sleep(max(0.0, played - time.perf_counter()))  # the piece has "played"
        for stream in streams:
            stream.accept(audio[start: start + size])
        lags.append(time.perf_counter() - played)
    ended = time.perf_counter()
    results = [stream.finish() for stream in streams]
    delays = [wall - (began + word.end) for result in results
              for word, wall in zip(result.transcription.words, result.emitted_wall)]
    return {"delays": delays, "lags": lags, "finish": time.perf_counter() - ended}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("audio", nargs="+")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream (default 60)")
    parser.add_argument("--piece-ms", type=float, default=100.0, help="audio per piece fed (default 100)")
    parser.add_argument("--streams", default="8,16,32", help="concurrent stream counts to try (default 8,16,32)")
    parser.add_argument("--processes", type=int, default=2, help="processes (one thread each) sharing the streams")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="of the paced streams")
    args = parser.parse_args(argv)
    rate = load_model(args.model).sample_rate
    if not 1000 / rate <= args.piece_ms < 60_000:
        parser.error(f"--piece-ms must be from one sample ({1000 / rate:g} ms) to a minute, not {args.piece_ms:g}")
    audio = joined_audio(args.audio, rate, args.seconds)
    print(f"{len(audio) / rate:.0f} s of audio per stream, {args.piece_ms:g} ms pieces", file=sys.stderr)

    print("| precision | real-time factor, 1 thread | streams one core could hold |\n|---|---|---|")
    for precision in ("fp32", "int8"):
        factor = real_time_factor(args.model, precision, audio, args.piece_ms)
        print(f"| {precision} | {factor:.4f} | {1 / factor:.0f} |", flush=True)

    print(f"\n| streams ({args.precision}) | processes | p95 / max lag (s) | median delay (s) | p95 delay (s) | "
          "finish (s) | sustained |\n|---|---|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")
    for count in [int(c) for c in args.streams.split(",") if c.strip()]:
        shares = [count // args.processes + (i < count % args.processes) for i in range(args.processes)]
        with context.Pool(args.processes) as pool:
            parts = pool.map(paced_streams, [(args.model, audio, n, args.piece_ms, args.precision)
                                             for n in shares if n])
        delays = [d for part in parts for d in part["delays"]]
        lags = [lag for part in parts for lag in part["lags"]]
        if not delays:
            print(f"| {count} | no words were emitted: give audio with speech |")
            continue
        lag95, p95 = float(np.percentile(lags, 95)), float(np.percentile(delays, 95))
        sustained = max(lags) < 0.5 and p95 < 1.0
        print(f"| {count} | {args.processes} | {lag95:.3f} / {max(lags):.3f} | {statistics.median(delays):.3f} | "
              f"{p95:.3f} | {max(part['finish'] for part in parts):.2f} | {'yes' if sustained else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
