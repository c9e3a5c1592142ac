"""Load test of ``asr serve`` on loopback: N concurrent clients uploading one audio file.

    python scripts/bench_serve.py MODEL AUDIO [--clients 1,2,4,8] [--requests 24] [--max-seconds 120]

Starts the server in this process on 127.0.0.1 (a free port), then for each client count
sends ``--requests`` uploads to ``POST /v1/audio/transcriptions`` from that many threads and
prints requests/s, audio seconds per second and the p50/p95 latency as a Markdown table.
Bounded in count and time: each level stops after ``--max-seconds``. Requests refused with
503 (queue full) are counted, not retried. Live (WebSocket) streams are not measured yet.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from asr.audio import audio_duration
from asr.server import ServerOptions, create_app
from asr.transcribe import load_model


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint, model folder or hf://ORG/NAME")
    parser.add_argument("audio", help="the file every client uploads (e.g. 10 s of speech)")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent clients per level (default 1,2,4,8)")
    parser.add_argument("--requests", type=int, default=24, help="uploads per level (default 24)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per level (default 120)")
    parser.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue (default 8)")
    args = parser.parse_args(argv)

    audio = Path(args.audio).read_bytes()
    seconds = audio_duration(args.audio)
    recognizer = load_model(args.model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(recognizer, ServerOptions(max_queue=args.max_queue)),
                                           host="127.0.0.1", port=port, log_level="warning"))
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
        print("| clients | ok / 503 / failed | requests/s | audio-s/s | p50 latency s | p95 latency s |")
        print("|---:|---|---:|---:|---:|---:|")
        for clients in [int(c) for c in args.clients.split(",")]:
            r = run_level(url, audio, Path(args.audio).name, clients, args.requests, args.max_seconds)
            rate = r["ok"] / r["wall"]
            print(f"| {clients} | {r['ok']} / {r['refused']} / {r['failed']} | {rate:.2f} | {rate * seconds:.1f} | "
                  f"{r['p50']:.2f} | {r['p95']:.2f} |", flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
