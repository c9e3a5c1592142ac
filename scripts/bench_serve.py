"""Load test of ``asr serve`` on loopback: N concurrent clients uploading one audio file.

    python scripts/bench_serve.py MODEL AUDIO [--clients 1,2,4,8] [--requests 24] [--max-seconds 120]
                                              [--live 1,2,4,8] [--live-seconds 20]

Starts the server in this process on 127.0.0.1 (a free port), then for each client count
sends ``--requests`` uploads to ``POST /v1/audio/transcriptions`` from that many threads and
prints requests/s, audio seconds per second and the p50/p95 latency as a Markdown table.
Bounded in count and time: each level stops after ``--max-seconds``. Requests refused with
503 (queue full) are counted, not retried.

Then live mode: for each count in ``--live``, that many WebSocket clients each stream
``--live-seconds`` of AUDIO (looped; it should hold pauses) to ``/api/live`` at real-time
pace in 100 ms pieces. Interim lag is the time from sending the audio an interim covers to
receiving it; final delay is from sending the end of speech to receiving the final text
(it includes the pause that ends a segment, by design). A count is kept "in real time" when
the p95 interim lag stays under 1 s and every stream got its finals.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from websockets.sync.client import connect

from asr.data.audio import audio_duration, load_audio
from asr.inference.recognizer import load_model
from asr.serving.app import create_app
from asr.serving.context import ServerOptions


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1] if len(values) > 1 else values[0]


def run_level(url: str, audio: bytes, name: str, clients: int, requests: int, max_seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    refused = failed = 0
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def one(_: int) -> None:
        nonlocal refused, failed
        if time.monotonic() > deadline:
            return
        start = time.perf_counter()
        with httpx.Client(timeout=max_seconds) as client:
            response = client.post(url, files={"file": (name, audio)}, data={"model": "asr"})
        with lock:
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif response.status_code == 503:
                refused += 1
            else:
                failed += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {"clients": clients, "ok": len(latencies), "refused": refused, "failed": failed, "wall": wall,
            "p50": percentile(latencies, 0.5) if latencies else float("nan"),
            "p95": percentile(latencies, 0.95) if latencies else float("nan")}


def live_stream(url: str, samples: np.ndarray, rate: int, seconds: float) -> dict[str, list[float]]:
    """One real-time client: sends ``seconds`` of ``samples`` (looped) in 100 ms pieces at
    real-time pace, reading replies on another thread; the lags it saw."""
    piece = rate // 10
    total = int(seconds * rate)
    looped = np.resize(samples, total)  # the file again and again
    sent_at: list[float] = []  # wall time at which each piece's last sample was sent
    lags: dict[str, list[float]] = {"interim": [], "final": [], "decode": []}
    done = threading.Event()

    def wall_time_of(audio_seconds: float) -> float:
        index = min(max(int(np.ceil(audio_seconds * rate / piece)) - 1, 0), len(sent_at) - 1)
        return sent_at[index]

    with connect(url, max_size=None) as socket:
        socket.send('{"type": "start", "sample_rate": %d}' % rate)
        socket.recv()  # ready

        def read() -> None:
            for message in socket:
                reply = json.loads(message)
                now = time.perf_counter()
                if reply["type"] == "interim":
                    lags["interim"].append(now - wall_time_of(reply["end"]))
                elif reply["type"] == "final" and reply["speech_end"] is not None and reply["text"]:
                    lags["final"].append(now - wall_time_of(reply["speech_end"]))
                    lags["decode"].append(reply["decode_seconds"])
                elif reply["type"] in ("done", "error"):
                    break
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        began = time.perf_counter()
        for number, start in enumerate(range(0, total, piece)):
            chunk = (np.clip(looped[start:start + piece], -1, 1) * 32767).astype("<i2").tobytes()
            sent_at.append(time.perf_counter())
            socket.send(chunk)
            time.sleep(max(0.0, began + (number + 1) * 0.1 - time.perf_counter()))  # real-time pace
        socket.send('{"type": "stop"}')
        done.wait(seconds + 60)
    return lags


def run_live_level(url: str, samples: np.ndarray, rate: int, streams: int, seconds: float) -> dict[str, float]:
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda _: live_stream(url, samples, rate, seconds), range(streams)))
    interim = [lag for r in results for lag in r["interim"]]
    final = [lag for r in results for lag in r["final"]]
    return {"streams": streams, "interims": len(interim), "finals": len(final),
            "starved": sum(1 for r in results if not r["final"]),
            "interim_p50": percentile(interim, 0.5) if interim else float("nan"),
            "interim_p95": percentile(interim, 0.95) if interim else float("nan"),
            "final_p50": percentile(final, 0.5) if final else float("nan"),
            "final_p95": percentile(final, 0.95) if final else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint, model folder or hf://ORG/NAME")
    parser.add_argument("audio", help="the file every client uploads (e.g. 10 s of speech)")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent clients per level (default 1,2,4,8; empty: none)")
    parser.add_argument("--requests", type=int, default=24, help="uploads per level (default 24)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per level (default 120)")
    parser.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue (default 8)")
    parser.add_argument("--live", default="1,2,4,8", help="concurrent live streams per level (default 1,2,4,8; "
                        "empty: none)")
    parser.add_argument("--live-seconds", type=float, default=20.0, help="audio each live stream sends (default 20)")
    args = parser.parse_args(argv)
    live_levels = [int(c) for c in args.live.split(",") if c.strip()]

    audio = Path(args.audio).read_bytes()
    seconds = audio_duration(args.audio)
    recognizer = load_model(args.model)
    port = free_port()
    options = ServerOptions(max_queue=args.max_queue, max_live=max(live_levels, default=1))
    server = uvicorn.Server(uvicorn.Config(create_app(recognizer, options), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                print("error: the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
        run_level(url, audio, Path(args.audio).name, 1, 2, args.max_seconds)  # warm-up
        print(f"`asr serve` {args.model}, {seconds:.1f} s upload ({Path(args.audio).name}), "
              f"{args.requests} requests per level, --max-queue {args.max_queue}, decoding "
              f"{recognizer.decoding.describe()}")
        upload_levels = [int(c) for c in args.clients.split(",") if c.strip()]
        if upload_levels:
            print("| clients | ok / 503 / failed | requests/s | audio-s/s | p50 latency s | p95 latency s |")
            print("|---:|---|---:|---:|---:|---:|")
        for clients in upload_levels:
            r = run_level(url, audio, Path(args.audio).name, clients, args.requests, args.max_seconds)
            rate = r["ok"] / r["wall"]
            print(f"| {clients} | {r['ok']} / {r['refused']} / {r['failed']} | {rate:.2f} | {rate * seconds:.1f} | "
                  f"{r['p50']:.2f} | {r['p95']:.2f} |", flush=True)
        if live_levels:
            samples = load_audio(args.audio, recognizer.sample_rate)
            live_url = f"ws://127.0.0.1:{port}/api/live"
            print(f"\nLive mode: each stream sends {args.live_seconds:g} s of {Path(args.audio).name} (looped) at "
                  "real-time pace in 100 ms pieces")
            print("| live streams | interims / finals | interim lag p50 / p95 s | speech end to final p50 / p95 s "
                  "| in real time |")
            print("|---:|---|---|---|---|")
            for streams in live_levels:
                r = run_live_level(live_url, samples, recognizer.sample_rate, streams, args.live_seconds)
                kept = r["interim_p95"] < 1.0 and r["starved"] == 0
                print(f"| {streams} | {r['interims']} / {r['finals']} | {r['interim_p50']:.2f} / {r['interim_p95']:.2f} | "
                      f"{r['final_p50']:.2f} / {r['final_p95']:.2f} | {'yes' if kept else 'no'} |", flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
