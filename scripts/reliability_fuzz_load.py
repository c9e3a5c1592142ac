"""The fuzz and load harnesses: tests/test_fuzz.py at length, and training throughput on a shared CPU.

The load section measures training alone and beside one CPU-bound process, with the thread
governor (asr/utils/threads.py) off and on. It needs the machine to itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from reliability_common import ASR, ROOT, clean_env, run_to_end, say, write_config

from asr.data.synthetic import tiny_config, write_tone_manifests

# --------------------------------------------------------------------------- fuzz


def run_fuzz_section(profile: str = "long") -> tuple[int, int, str]:
    """(examples run, failed tests, pytest's last line) for tests/test_fuzz.py under ``profile``."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_fuzz.py"),
               "--hypothesis-show-statistics"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=clean_env(ASR_FUZZ_PROFILE=profile),
                            timeout=3600, check=False)
    examples = sum(int(n) for n in re.findall(r"(\d+) passing", result.stdout))
    failed = re.search(r"(\d+) failed", result.stdout)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    return examples, int(failed.group(1)) if failed else (0 if result.returncode == 0 else -1), last


# --------------------------------------------------------------------------- load


def load_corpus(folder: Path, utterances: int = 48) -> dict[str, Path]:
    """Longer tone-language utterances (2-4 s) for throughput: a batch of real size."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    texts = [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(3, 5)))
             for _ in range(utterances)]
    return write_tone_manifests(folder, texts, texts[:1])


CORES = len(os.sched_getaffinity(0))  # the cores this harness may use: what training gets by default


def measure_throughput(folder: Path, corpus: dict[str, Path], name: str, threads: str, busy: bool, steps: int,
                       minutes: float, hidden: int) -> tuple[float, str]:
    """Training audio-s/s over ``steps`` steps (or ``minutes``) with ASR_THREADS=``threads``, beside a busy
    loop or not, and the thread count it ended with."""
    out_dir = folder / name
    shutil.rmtree(out_dir, ignore_errors=True)
    config = tiny_config(out_dir, corpus, model={"num_layers": 3, "hidden_size": hidden},
                         data={"max_frames_per_batch": 4000, "stats_utterances": 8},
                         train={"epochs": 1000, "max_steps": steps, "max_minutes": minutes, "threads": 0,
                                "log_every_steps": 1000})
    path = write_config(config, folder / f"{name}.yaml")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) if busy else None
    try:
        result = run_to_end([*ASR, "train", str(path)], clean_env(ASR_THREADS=threads), timeout=60 * minutes + 300)
    finally:
        if hog is not None:
            os.killpg(hog.pid, signal.SIGKILL)
            hog.wait()
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    changes = re.findall(r"threads: (\d+) -> (\d+)", result.stderr)
    final = changes[-1][1] if changes else (threads if threads != "auto" else str(CORES))
    return float(lines[-1]["audio_seconds_per_second"]), f"{final} ({len(changes)} change(s))" if changes else final


def run_load_section(folder: Path, steps: int, minutes: float, hidden: int) -> dict[str, tuple[float, str]]:
    corpus = load_corpus(folder / "corpus")
    default = str(CORES)
    figures: dict[str, tuple[float, str]] = {}
    for name, threads, busy in (("one thread alone", "1", False), ("governor off, alone", default, False),
                                ("governor off, beside a busy process", default, True),
                                ("governor on, alone", "auto", False), ("governor on, beside a busy process", "auto", True)):
        figures[name] = measure_throughput(folder, corpus, re.sub(r"\W+", "_", name), threads, busy, steps, minutes,
                                           hidden)
        say(f"load: {name}: {figures[name][0]:.1f} audio-s/s, threads {figures[name][1]}")
    return figures


def load_table(figures: dict[str, tuple[float, str]], steps: int, hidden: int) -> str:
    one = figures["one thread alone"][0]
    rows = [(f"Training, 3 x {hidden} BiLSTM, up to {steps} steps each, {CORES} cores "
             "(ASR_THREADS=N fixes the count; auto = the governor of asr/utils/threads.py). Target: beside a busy "
             "process, the governor keeps >= 90 % of one thread alone, and alone it loses nothing."), "",
            "| run | audio-s/s | vs one thread alone | threads at the end |", "|---|---|---|---|"]
    rows += [f"| {name} | {value:.1f} | {100 * value / one:.0f} % | {threads} |"
             for name, (value, threads) in figures.items()]
    return "\n".join(rows)
