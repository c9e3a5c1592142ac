"""Reliability, measured: kill -9 and resume, bad input, fuzzing, throughput on a shared CPU.

    python scripts/reliability.py [--quick] [--out RELIABILITY.md] [--only kill,bad-input,fuzz,load]

Prints one Markdown table per section and writes them into RELIABILITY.md (a section run
alone replaces only its own part of the file). Everything runs on self-made data (the tone
language of tests/conftest.py) in a temporary folder: no network, no ../shared data.

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

``--quick`` kills fewer times, skips the 3-hour file and the DDP restarts' extra kills.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tone-language corpus lives beside the fixtures
sys.path.insert(0, str(ROOT))

from conftest import OVERFIT_TEXTS, SAMPLE_RATE, tiny_config, tone_audio, write_tone_corpus

from asr.utils.atomic import atomic_write
from asr.config import to_dict
from asr.data.dataset import write_manifest

SECTIONS = ("kill", "bad-input", "fuzz", "load")
ASR = [sys.executable, "-m", "asr"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared setup


def make_corpus(folder: Path) -> dict[str, Path]:
    """The tone-language train/valid manifests of tests/conftest.py, written under ``folder``."""
    train = write_tone_corpus(folder / "train", OVERFIT_TEXTS, speaker="1")
    valid = write_tone_corpus(folder / "valid", OVERFIT_TEXTS[:4], speaker="2")
    write_manifest(folder / "train.jsonl", train)
    write_manifest(folder / "valid.jsonl", valid)
    return {"root": folder, "train": folder / "train.jsonl", "valid": folder / "valid.jsonl"}


def write_config(config, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    from asr.storage.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    left, right = model_tensors(a), model_tensors(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASR_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc: no pgrep needed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return sorted(children)


# --------------------------------------------------------------------------- kill -9


@dataclass
class KillReport:
    tried: int = 0  # SIGKILLs sent to a running training process
    survived: int = 0  # ... after which the checkpoints loaded and the run still ended equal
    series: int = 0  # runs taken from scratch to the end
    equal_series: int = 0  # ... whose final weights equalled the uninterrupted run's
    by_moment: dict[str, int] = field(default_factory=dict)  # kills per kind of moment
    saved_steps: list[int] = field(default_factory=list)  # the step last.pt held after each kill (-1: none yet)
    findings: list[str] = field(default_factory=list)  # everything else that went wrong


def kill_config(out_dir: Path, corpus: dict[str, Path], epochs: int):
    # Dropout, SpecAugment and VTLP on: resuming must restore the RNG states exactly.
    # One thread: thread counts may change float sums, and the comparison is bitwise.
    return tiny_config(out_dir, corpus, model={"dropout": 0.2},
                       specaugment={"enabled": True, "time_width": 5, "warp_factor": 0.1},
                       data={"max_frames_per_batch": 350},
                       train={"epochs": epochs, "checkpoint_every_steps": 1, "threads": 1})


def run_to_end(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float, poll: float = 0.001) -> bool:
    """Poll until ``condition`` holds (True) or the process ends / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(poll)
    return False


def checkpoint_problems(out_dir: Path) -> list[str]:
    """last.pt and best.pt, where they exist, must load."""
    from asr.storage.checkpoint import load_checkpoint

    problems = []
    for name in ("last.pt", "best.pt"):
        if (out_dir / name).exists():
            try:
                load_checkpoint(out_dir / name)
            except Exception as err:  # noqa: BLE001  (anything here is a finding)
                problems.append(f"{name} does not load after a kill: {err}")
    return problems


def saved_step(out_dir: Path) -> int:
    """The optimiser step last.pt holds (-1 before the first one)."""
    from asr.storage.checkpoint import load_checkpoint

    if not (out_dir / "last.pt").exists():
        return -1
    return int(load_checkpoint(out_dir / "last.pt")["train_state"]["position"]["step"])


def metrics_problems(out_dir: Path) -> list[str]:
    """metrics.jsonl after a killed and resumed run: strict JSON, one line per validated epoch."""
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    problems, epochs = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
        except ValueError as err:
            problems.append(f"metrics.jsonl:{number} is not strict JSON ({err})")
            continue
        if not record.get("partial"):  # a run stopped inside an epoch logs it again, complete, on resume
            epochs.append(record.get("epoch"))
    if len(epochs) != len(set(epochs)):
        problems.append(f"metrics.jsonl repeats epochs: {epochs}")
    return problems


@contextlib.contextmanager
def kill_on_error(process: subprocess.Popen):
    """Never leave a training process behind when the harness itself fails."""
    try:
        yield
    except BaseException:
        process.kill()
        process.wait()
        raise


def wait_for_moment(moment: str, process: subprocess.Popen, out_dir: Path, metrics: Path, metrics_size: int,
                    timing: dict[str, float], rng: random.Random) -> None:
    """Return at the kind of moment to kill at (or when the process has ended)."""
    if moment == "random":  # a random moment of training, once this run has saved a step of its own
        last = out_dir / "last.pt"
        mark = last.stat().st_mtime_ns if last.exists() else None
        if wait_for(lambda: last.exists() and last.stat().st_mtime_ns != mark, process, 300):
            wait_for(lambda: False, process, rng.uniform(0, timing["training"] / 4))
    elif moment == "checkpoint-write":  # while a checkpoint's temporary file exists
        wait_for(lambda: any(p.name.endswith(".tmp") for p in out_dir.glob("*")), process, 300)
    elif wait_for(lambda: metrics.exists() and metrics.stat().st_size > metrics_size, process, 300):
        time.sleep(rng.uniform(0, 0.05))  # just after a validation line: best.pt and last.pt are being written


def kill_series(report: KillReport, folder: Path, corpus: dict[str, Path], epochs: int, kills_wanted: int,
                reference: Path, timing: dict[str, float], rng: random.Random) -> None:
    """One run from scratch, killed until it finishes (or ``kills_wanted`` kills), then finished."""
    out_dir = folder / f"series-{report.series}"
    config_path = write_config(kill_config(out_dir, corpus, epochs), folder / f"series-{report.series}.yaml")
    command = [*ASR, "train", str(config_path)]
    env = clean_env()
    kills_here, survived_here, problems_here = 0, 0, []
    moments = ("random", "checkpoint-write", "after-validation")
    log_path = folder / f"series-{report.series}.log"
    while kills_here < kills_wanted:
        moment = moments[(report.tried + kills_here) % len(moments)]
        metrics = out_dir / "metrics.jsonl"
        metrics_size = metrics.stat().st_size if metrics.exists() else 0
        with open(log_path, "ab") as log:  # a file, not a pipe: nobody reads a killed run's pipe
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
        with kill_on_error(process):
            wait_for_moment(moment, process, out_dir, metrics, metrics_size, timing, rng)
        if process.poll() is None:
            process.kill()
            process.wait()
            kills_here += 1
            report.by_moment[moment] = report.by_moment.get(moment, 0) + 1
            problems = checkpoint_problems(out_dir)
            report.saved_steps.append(saved_step(out_dir) if not problems else -1)
            problems_here += problems
            survived_here += not problems
        elif process.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            report.findings.append(f"series {report.series}: resumed run failed ({process.returncode}): {tail}")
            report.tried += kills_here
            report.series += 1
            return
        else:
            break  # finished before this kill
    report.tried += kills_here
    try:
        run_to_end(command, env)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        report.findings.append(f"series {report.series}: the final resumed run failed: {str(err)[-500:]}")
        report.series += 1
        return
    equal = same_weights(out_dir / "last.pt", reference / "last.pt") and same_weights(
        out_dir / "best.pt", reference / "best.pt")
    if equal:
        report.equal_series += 1
        report.survived += survived_here  # a kill is survived when the run still ends equal
    else:
        report.findings.append(f"series {report.series}: final weights differ from the uninterrupted run's")
    report.findings += [f"series {report.series}: {p}" for p in problems_here]
    leftovers = sorted(p.name for p in out_dir.glob("*.tmp")) + sorted(p.name for p in out_dir.glob(".*.tmp"))
    if leftovers:
        report.findings.append(f"series {report.series}: temporary files left after the run finished: {leftovers}")
    report.findings += [f"series {report.series}: {p}" for p in metrics_problems(out_dir)]
    report.series += 1


def run_kill_section(folder: Path, kills: int, seed: int = 0, epochs: int = 12) -> KillReport:
    """``kills`` SIGKILLs over as many series as it takes; each series must end equal."""
    corpus = make_corpus(folder / "corpus")
    reference = folder / "reference"
    config_path = write_config(kill_config(reference, corpus, epochs), folder / "reference.yaml")
    start = time.monotonic()
    log_path = folder / "reference.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*ASR, "train", str(config_path)], stdout=subprocess.DEVNULL, stderr=log,
                                   env=clean_env(), cwd=ROOT)
    with kill_on_error(process):
        wait_for(lambda: (reference / "last.pt").exists(), process, 300)
        first_checkpoint = time.monotonic() - start
        process.wait(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{log_path.read_text(errors='replace')[-3000:]}")
    timing = {"first_checkpoint": first_checkpoint, "total": time.monotonic() - start,
              "training": time.monotonic() - start - first_checkpoint}
    say(f"kill: uninterrupted run {timing['total']:.1f} s (first checkpoint after {first_checkpoint:.1f} s)")
    report = KillReport()
    rng = random.Random(seed)
    while report.tried < kills:
        before = report.tried
        kill_series(report, folder, corpus, epochs, kills - report.tried, reference, timing, rng)
        say(f"kill: series {report.series - 1}: {report.tried - before} kills, "
            f"{report.equal_series}/{report.series} series equal so far")
        if report.tried == before and report.series > 3 * kills:
            break  # the run never lives long enough to be killed
    return report


@dataclass
class DdpReport:
    dropout: float = 0.0  # model.dropout of the run (with SpecAugment and VTLP on when > 0)
    kills: int = 0  # ranks killed (each one restarts the group)
    equal: bool = False  # final weights equal to the uninterrupted 2-rank run's
    finished: bool = False
    findings: list[str] = field(default_factory=list)


def run_ddp_kill(folder: Path, kills: int, seed: int = 0, epochs: int = 25, dropout: float = 0.0) -> DdpReport:
    """2 gloo ranks under torchrun; ``kills`` times a random rank is killed mid-training.

    ``dropout`` > 0 also turns on SpecAugment and VTLP: then every rank's random draws must
    continue after a restart as they would have without it.
    """
    corpus = make_corpus(folder / "corpus") if not (folder / "corpus" / "train.jsonl").exists() else {
        "root": folder / "corpus", "train": folder / "corpus" / "train.jsonl", "valid": folder / "corpus" / "valid.jsonl"}
    rng = random.Random(seed)
    env = clean_env(OMP_NUM_THREADS="1")
    report = DdpReport(dropout=dropout)

    def command(config_path: Path, restarts: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                f"--max-restarts={restarts}", "-m", "asr.training.loop", str(config_path)]

    def config_for(out_dir: Path):
        random_draws = {"model": {"dropout": dropout},
                        "specaugment": {"enabled": dropout > 0, "time_width": 5, "warp_factor": 0.1 if dropout else 0.0}}
        return tiny_config(out_dir, corpus, data={"max_frames_per_batch": 350}, **random_draws,
                           train={"epochs": epochs, "checkpoint_every_steps": 1, "device": "cpu", "threads": 1})

    tag = f"ddp-dropout{dropout:g}"
    reference, killed = folder / f"{tag}-reference", folder / f"{tag}-killed"
    run_to_end(command(write_config(config_for(reference), folder / f"{tag}-reference.yaml"), 0), env)
    job = subprocess.Popen(command(write_config(config_for(killed), folder / f"{tag}-killed.yaml"), kills), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    output_lines: list[str] = []
    reader = _drain(job, output_lines)
    try:
        for _ in range(kills):
            last = killed / "last.pt"
            mark = last.stat().st_mtime_ns if last.exists() else 0
            # Wait until this incarnation has trained (a newer last.pt), then a random moment more.
            if not wait_for(lambda last=last, mark=mark: last.exists() and last.stat().st_mtime_ns != mark, job, 300,
                            poll=0.01):
                break
            time.sleep(rng.uniform(0.0, 1.0))
            workers = child_pids(job.pid)
            if job.poll() is not None or not workers:
                break
            os.kill(rng.choice(workers), signal.SIGKILL)
            report.kills += 1
            report.findings += [f"DDP kill {report.kills}: {p}" for p in checkpoint_problems(killed)]
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
        reader.join(timeout=10)
    report.finished = job.returncode == 0
    if not report.finished:
        report.findings.append(f"DDP run failed ({job.returncode}): {''.join(output_lines[-5:]).strip()}")
        return report
    report.equal = same_weights(killed / "last.pt", reference / "last.pt")
    if not report.equal:
        report.findings.append(f"DDP ({tag}): final weights differ from the uninterrupted 2-rank run's")
    report.findings += [f"DDP ({tag}): {p}" for p in metrics_problems(killed)]
    return report


def _drain(process: subprocess.Popen, lines: list[str]):
    """Read a process's output in a thread, so that a full pipe never blocks it."""
    import threading

    thread = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    thread.start()
    return thread


def kill_table(report: KillReport, ddp_runs: list[DdpReport]) -> str:
    moments = ", ".join(f"{count} {name}" for name, count in sorted(report.by_moment.items()))
    rows = [
        "| check | result |", "|---|---|",
        f"| kills survived / tried (single process) | {report.survived} / {report.tried} ({moments}) |",
        f"| step saved in last.pt after each kill (-1: none yet) | {' '.join(map(str, report.saved_steps))} |",
        (f"| runs equal to the uninterrupted run (torch.equal, last.pt and best.pt) | "
         f"{report.equal_series} / {report.series} |"),
    ]
    for ddp in ddp_runs:
        draws = f"dropout {ddp.dropout:g}, SpecAugment and VTLP on" if ddp.dropout else "no dropout or SpecAugment"
        rows.append(f"| DDP, 2 gloo ranks under torchrun --max-restarts, {draws}: ranks killed, run finished, "
                    f"equal to an uninterrupted 2-rank run | {ddp.kills} killed, "
                    f"{'finished' if ddp.finished else 'FAILED'}, {'equal' if ddp.equal else '**NOT equal**'} |")
    findings = report.findings + [f for ddp in ddp_runs for f in ddp.findings]
    text = "\n".join(rows)
    if findings:
        text += "\n\nFindings:\n" + "\n".join(f"- {f}" for f in dict.fromkeys(findings))
    return text


# --------------------------------------------------------------------------- bad input


@dataclass
class Outcome:
    """What one CLI run did."""

    code: int | None  # exit status; None when it timed out
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Case:
    """One kind of bad input, given to the CLI beside good files."""

    name: str  # what kind of bad input
    group: str  # audio, manifest, config, checkpoint, output
    argv: list[str]  # asr arguments
    codes: set[int]  # acceptable exit codes
    names: list[str] = field(default_factory=list)  # strings stderr must hold (the file, the key)
    good_paths: list[str] = field(default_factory=list)  # transcribe --format json: results that must be there
    scored: int | None = None  # evaluate: utterances that must be scored
    check: Callable[[Outcome], str | None] | None = None  # any further check: a problem, or None
    timeout: float = 120.0


def run_cli(argv: list[str], in_process: bool, timeout: float) -> Outcome:
    """``asr ARGV`` in a subprocess (as a user runs it), or in this process (fast, for tests)."""
    start = time.monotonic()
    if not in_process:
        try:
            result = subprocess.run([*ASR, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                    env=clean_env(), errors="replace")
        except subprocess.TimeoutExpired as err:
            return Outcome(None, _text(err.stdout), _text(err.stderr), time.monotonic() - start)
        return Outcome(result.returncode, result.stdout, result.stderr, time.monotonic() - start)
    from asr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")  # shown every time, as in a fresh process
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:  # noqa: BLE001  (an escaped exception is the finding)
            import traceback

            err.write("Traceback (most recent call last):\n" + traceback.format_exc())
            code = 1
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - start)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def judge(case: Case, outcome: Outcome, marker: Path) -> list[str]:
    """Why the case was not handled ([] when it was)."""
    problems = []
    if outcome.code is None:
        return [f"timed out after {case.timeout:.0f} s"]
    if "Traceback" in outcome.stdout + outcome.stderr:
        lines = [line for line in outcome.stderr.strip().splitlines() if line.strip()]
        problems.append(f"traceback ({lines[-1].strip() if lines else '?'})")
    if outcome.code not in case.codes:
        problems.append(f"exit {outcome.code}, expected {'/'.join(map(str, sorted(case.codes)))}")
    for name in case.names:
        lines = [line for line in outcome.stderr.splitlines() if name in line]
        if not lines:
            problems.append(f"stderr does not name {name!r}")
        elif not any(len(re.sub(r"\W+", "", line.replace(name, "").replace("error", ""))) >= 8 for line in lines):
            problems.append(f"stderr names {name!r} but gives no reason")
    if case.good_paths:
        done = set()
        for line in outcome.stdout.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "text" in record and "error" not in record:
                    done.add(record.get("path"))
        missing = [p for p in case.good_paths if p not in done]
        if missing:
            problems.append(f"good files without a result: {[Path(p).name for p in missing]}")
    if case.scored is not None:
        found = re.search(r"utterances: (\d+) scored", outcome.stdout)
        if not found or int(found.group(1)) != case.scored:
            problems.append(f"expected {case.scored} utterances scored, got "
                            f"{found.group(1) if found else 'no report'}")
    if case.check is not None and outcome.code is not None:
        problem = case.check(outcome)
        if problem:
            problems.append(problem)
    if marker.exists():
        problems.append("THE PICKLE PAYLOAD RAN (marker file created)")
    return problems


class Payload:
    """Unpickling this creates ``marker``: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


PNG_HEADER = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
                           "9c6360000002000154a24f5d0000000049454e44ae426082")


def write_long_audio(path: Path, hours: float) -> None:
    """Hours of near-silence with a tone word every minute, written in one-minute pieces."""
    word = tone_audio("bad cab", seed=1)
    minute = SAMPLE_RATE * 60
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, format="FLAC") as out:
        for number in range(int(hours * 60)):
            piece = np.random.default_rng(number).normal(0, 0.002, minute).astype(np.float32)
            piece[SAMPLE_RATE : SAMPLE_RATE + len(word)] += word
            out.write(piece)


def audio_cases(folder: Path, checkpoint: str, good: list[str], quick: bool) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    tone = tone_audio("bad cab", seed=3)
    real = Path(good[0]).read_bytes()
    cases: list[Case] = []

    def case(name: str, filename: str, content: bytes | None, ok: bool, check=None, extra_names=(),
             timeout: float = 120.0, warning_codes: bool = False) -> None:
        """``ok``: the file must be transcribed; ``warning_codes``: with a warning, exit 0 or 1."""
        path = folder / filename
        if content is not None:
            path.write_bytes(content)
        argv = ["transcribe", checkpoint, good[0], str(path), good[1], "--format", "json"]
        codes = {0, 1} if warning_codes else {0} if ok else {1}
        cases.append(Case(name, "audio", argv, codes, [] if ok else [str(path), *extra_names],
                          good_paths=good + ([str(path)] if ok else []), check=check, timeout=timeout))

    wav = wav_bytes(tone)
    case("empty file (0 bytes)", "empty.wav", b"", ok=False)
    case("WAV header only, no samples", "header.wav", wav_bytes(np.zeros(0, np.float32)), ok=False)
    case("text file renamed .wav", "text.wav", b"this is not audio\n" * 20, ok=False)
    case("PNG image renamed .wav", "image.wav", PNG_HEADER, ok=False)
    case("random bytes .flac", "random.flac", np.random.default_rng(0).bytes(5000), ok=False)
    case("missing file", "missing.wav", None, ok=False)
    nan = tone.copy()
    nan[1000:1010] = np.nan
    case("NaN samples (float WAV)", "nan.wav", wav_bytes(nan, subtype="FLOAT"), ok=False)
    inf = tone.copy()
    inf[500] = np.inf
    case("infinite samples (float WAV)", "inf.wav", wav_bytes(inf, subtype="FLOAT"), ok=False)
    case("a directory named .wav", "folder.wav", None, ok=False)
    (folder / "folder.wav").mkdir(exist_ok=True)
    for rate in (8000, 48000):
        import soxr

        case(f"{rate // 1000} kHz", f"rate{rate}.wav", wav_bytes(soxr.resample(tone, SAMPLE_RATE, rate), rate), ok=True)
    case("stereo", "stereo.wav", wav_bytes(np.stack([tone, 0.5 * tone], axis=1)), ok=True)
    case("24-bit PCM", "pcm24.wav", wav_bytes(tone, subtype="PCM_24"), ok=True)
    case("8-bit unsigned PCM", "pcm8.wav", wav_bytes(tone, subtype="PCM_U8"), ok=True)
    case("silence", "silence.wav", wav_bytes(np.zeros(SAMPLE_RATE * 2, np.float32)), ok=True)
    case("clipping (10x over full scale)", "clipped.wav", wav_bytes(np.clip(10 * tone, -1, 1)), ok=True)
    case("50 ms", "short.wav", wav_bytes(tone[: SAMPLE_RATE // 20]), ok=True)
    case("one sample", "one.wav", wav_bytes(tone[:1]), ok=True)
    case("DC offset", "dc.wav", wav_bytes(np.clip(tone + 0.5, -1, 1)), ok=True)
    case("file name with spaces and accents", "é t é.flac", real, ok=True)
    case("Ogg Vorbis", "vorbis.ogg", _encoded(tone, "OGG", "VORBIS"), ok=True)

    # Problems that still allow a transcript: it must say so, naming the file.
    def warned(path_name: str) -> Callable[[Outcome], str | None]:
        return lambda o: None if (str(folder / path_name) in o.stderr and "warning" in o.stderr.lower()) else \
            "no warning naming the file"

    case("WAV cut in half (header promises more)", "halfcut.wav", wav[: len(wav) // 2], ok=True,
         check=warned("halfcut.wav"), warning_codes=True)
    flac = _encoded(tone, "FLAC", "PCM_16")
    path = folder / "truncated.flac"
    path.write_bytes(flac[: len(flac) // 2])
    argv = ["transcribe", checkpoint, good[0], str(path), good[1], "--format", "json"]
    cases.append(Case("truncated FLAC", "audio", argv, {0, 1}, good_paths=good,
                      check=lambda o, p=str(path): None if p in o.stderr else "nothing names the truncated file"))
    antiphase = np.stack([tone, -tone], axis=1)
    case("stereo in anti-phase (cancels when averaged)", "antiphase.wav", wav_bytes(antiphase), ok=True,
         check=_antiphase_check(str(folder / "antiphase.wav")), warning_codes=True)
    if not quick:
        long_path = folder / "three_hours.flac"
        say("bad-input: writing a 3-hour file ...")
        write_long_audio(long_path, 3.0)
        case("3 hours long (FLAC)", "three_hours.flac", None, ok=True, timeout=900)
    return cases


def _encoded(samples: np.ndarray, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _antiphase_check(path: str) -> Callable[[Outcome], str | None]:
    def check(outcome: Outcome) -> str | None:
        if path in outcome.stderr:
            return None  # told the user
        for line in outcome.stdout.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("path") == path and record.get("words"):
                    return None  # a downmix that keeps the speech
        return "downmixed to silence without a word"
    return check


def output_cases(folder: Path, checkpoint: str, good: list[str]) -> list[Case]:
    cases = []
    first, second = folder / "d1" / "same.flac", folder / "d2" / "same.flac"
    for path in (first, second):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good[0], path)
    out = folder / "same-out"

    def both_kept(outcome: Outcome) -> str | None:
        written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
        if outcome.code == 0 and len(written) < 2:
            return f"two inputs named same.flac, {len(written)} output file(s)"
        return None

    cases.append(Case("two inputs with the same name, --output-dir", "output",
                      ["transcribe", checkpoint, str(first), str(second), "--output-dir", str(out)], {0, 2},
                      check=both_kept))
    blocker = folder / "a-file"
    blocker.write_text("not a folder")
    cases.append(Case("--output-dir is an existing file", "output",
                      ["transcribe", checkpoint, good[0], "--output-dir", str(blocker)], {2}, [str(blocker)]))
    return cases


def manifest_cases(folder: Path, checkpoint: str, corpus: dict[str, Path], baseline_cer: str) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    good_lines = corpus["valid"].read_text().splitlines()[:2]
    good = [json.loads(line) for line in good_lines]
    cases: list[Case] = []

    def evaluate(name: str, bad: bytes, codes: set[int], scored: int | None, named: bool = True, check=None) -> None:
        path = folder / (re.sub(r"\W+", "_", name) + ".jsonl")
        path.write_bytes(good_lines[0].encode() + b"\n" + bad + b"\n" + good_lines[1].encode() + b"\n")
        names = [f"{path}:2"] if named else []
        cases.append(Case(name, "manifest", ["evaluate", checkpoint, str(path), "--worst", "0"], codes,
                          scored=scored, check=check or (lambda o, n=names: None if all(x in o.stdout + o.stderr
                                                                                     for x in n) else
                                                         f"no message names {n[0]}")))

    line = dict(good[0], id="x")
    evaluate("manifest: audio file missing", json.dumps(dict(line, audio=str(folder / "gone.flac"))).encode(), {1}, 2,
             named=False, check=lambda o: None if "gone.flac" in o.stdout + o.stderr else "the missing file is not named")
    evaluate("manifest: malformed JSON line", b'{"id": "x", "audio": ', {1}, 2)
    evaluate("manifest: non-UTF-8 bytes in a line", json.dumps(line).encode().replace(b"bad", b"b\xe9d\xff"), {1}, 2)
    evaluate("manifest: line without text", json.dumps({k: v for k, v in line.items() if k != "text"}).encode(), {1}, 2)
    evaluate("manifest: line without audio", json.dumps({k: v for k, v in line.items() if k != "audio"}).encode(),
             {1}, 2)
    evaluate("manifest: line without duration", json.dumps({k: v for k, v in line.items() if k != "duration"}).encode(),
             {0, 1}, None, check=lambda o: None if re.search(r"utterances: 3 scored", o.stdout) or "utterances: 2 scored"
             in o.stdout else "the good lines were not scored")
    evaluate("manifest: duration not a number", json.dumps(dict(line, duration="long")).encode(), {0, 1}, None,
             check=lambda o: None if re.search(r"utterances: [23] scored", o.stdout) else "the good lines were not scored")
    evaluate("manifest: a JSON list, not an object", b"[1, 2, 3]", {1}, 2)
    evaluate("manifest: unknown characters in the reference", json.dumps(dict(line, text="naïve 42 ünïcode")).encode(),
             {0, 1}, None, named=False, check=lambda o: None if re.search(r"utterances: [23] scored", o.stdout) else
             "the good lines were not scored")

    shouting = folder / "upper_case_references.jsonl"
    shouting.write_text("".join(json.dumps(dict(g, text=g["text"].upper().replace(" ", ", ") + "!")) + "\n"
                                for g in good))
    cases.append(Case("manifest: upper case and punctuation in references", "manifest",
                      ["evaluate", checkpoint, str(shouting), "--worst", "0"], {0}, scored=2,
                      check=lambda o: None if f"CER {baseline_cer} " in o.stdout else
                      f"CER differs from the normalised references' {baseline_cer} %"))
    empty = folder / "empty.jsonl"
    empty.write_text("")
    cases.append(Case("manifest: empty file", "manifest", ["evaluate", checkpoint, str(empty)], {1, 2}, [str(empty)],
                      check=lambda o: "reported a WER for no utterances" if "WER 0.00" in o.stdout else None))
    missing = folder / "no-such-manifest.jsonl"
    cases.append(Case("manifest: file missing", "manifest", ["evaluate", checkpoint, str(missing)], {2}, [str(missing)]))
    # `asr prepare` on a LibriSpeech-layout folder whose transcript is not UTF-8.
    chapter = folder / "libri" / "1" / "2"
    chapter.mkdir(parents=True, exist_ok=True)
    shutil.copy(good[0]["audio"], chapter / "1-2-0000.flac")
    shutil.copy(good[1]["audio"], chapter / "1-2-0001.flac")
    transcript = chapter / "1-2.trans.txt"
    transcript.write_bytes(b"1-2-0000 BAD CAB\n1-2-0001 A D\xe9B\xff\n")
    cases.append(Case("prepare: non-UTF-8 transcript line", "manifest",
                      ["prepare", str(folder / "libri"), str(folder / "prepared.jsonl")], {0, 1, 2},
                      [f"{transcript}"]))
    return cases


def training_cases(folder: Path, corpus: dict[str, Path], trained_run: Path) -> list[Case]:
    """Bad configs and bad training manifests for `asr train` (each must stop before training, or skip)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    base = to_dict(tiny_config(folder / "run", corpus, train={"epochs": 1, "max_steps": 2, "threads": 1}))

    def config_case(name: str, names: list[str], codes: set[int] = frozenset({2}), overrides=(), edit=None,
                    text: str | None = None, out: Path | None = None) -> None:
        data = json.loads(json.dumps(base))
        data["train"]["out_dir"] = str(out or folder / ("run_" + re.sub(r"\W+", "_", name)))
        if edit:
            edit(data)
        path = folder / (re.sub(r"\W+", "_", name) + ".yaml")
        path.write_text(text if text is not None else yaml.safe_dump(data))
        cases.append(Case(name, "config", ["train", str(path), *overrides], set(codes),
                          [n.replace("{path}", str(path)) for n in names]))

    config_case("config: unknown key", ["colour"], edit=lambda d: d["model"].update(colour="blue"))
    config_case("config: wrong type", ["hidden_size"], edit=lambda d: d["model"].update(hidden_size="big"))
    config_case("config: YAML syntax error", ["{path}"], text="model: {hidden_size: [1, 2\n")
    config_case("config: top level is a list", ["{path}"], text="- 1\n- 2\n")
    config_case("config: training manifest missing", ["nowhere.jsonl"],
                edit=lambda d: d["data"].update(train_manifest=str(folder / "nowhere.jsonl")))
    config_case("config: override without '='", ["model.hidden_size"], overrides=["model.hidden_size"])
    for key, value in (("model.num_layers", 0), ("model.hidden_size", -4), ("model.dropout", 1.5),
                       ("optim.lr", -1.0), ("train.epochs", 0), ("data.max_frames_per_batch", 0)):
        config_case(f"config: {key}={value}", [key.split(".")[1]], overrides=[f"{key}={value}"])
    if not torch.cuda.is_available():
        config_case("config: train.device=cuda on a CPU-only torch", ["cuda"], overrides=["train.device=cuda"])
    resized = folder / "resized"
    resized.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_run / "last.pt", resized / "last.pt")
    config_case("config: resuming into an out_dir of another model size", [str(resized)],
                overrides=["model.hidden_size=32"], out=resized)

    unreadable = folder / "unreadable.jsonl"
    unreadable.write_text("".join(json.dumps({"id": f"u{i}", "audio": str(folder / f"u{i}.flac"), "text": "abc",
                                              "duration": 1.0}) + "\n" for i in range(3)))
    for i in range(3):
        (folder / f"u{i}.flac").write_bytes(b"not audio")
    config_case("train manifest: every file unreadable", [str(unreadable)],
                edit=lambda d: d["data"].update(train_manifest=str(unreadable)))
    long_text = folder / "too_long.jsonl"
    rows = corpus["train"].read_text().splitlines()
    crowded = dict(json.loads(rows[0]), id="crowded", text="abc " * 60)
    long_text.write_text("\n".join([*rows, json.dumps(crowded)]) + "\n")
    config_case("train manifest: transcript longer than its frames allow", [], codes={0},
                edit=lambda d: d["data"].update(train_manifest=str(long_text)))
    return cases


def checkpoint_cases(folder: Path, checkpoint: str, good: list[str], marker: Path) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    real = Path(checkpoint).read_bytes()
    cases: list[Case] = []

    def case(name: str, filename: str, content: bytes | None = None, writer=None) -> None:
        path = folder / filename
        if content is not None:
            path.write_bytes(content)
        if writer is not None:
            writer(path)
        cases.append(Case(name, "checkpoint", ["transcribe", str(path), *good], {2}, [str(path)]))

    case("checkpoint: empty file", "empty.pt", b"")
    case("checkpoint: truncated", "truncated.pt", real[: len(real) // 2])
    case("checkpoint: random bytes", "random.pt", np.random.default_rng(1).bytes(4096))
    case("checkpoint: a text file", "text.pt", b"hello\n")
    case("checkpoint: a plain pickle carrying a payload", "payload.pkl",
         writer=lambda p: p.write_bytes(__import__("pickle").dumps({"model": Payload(marker)})))
    case("checkpoint: torch.save zip carrying a payload", "payload.pt",
         writer=lambda p: torch.save({"format": "asr-checkpoint", "version": 1, "model": Payload(marker)}, p))

    def patched(path: Path, change: Callable[[dict], None]) -> None:
        payload = torch.load(checkpoint, weights_only=True)
        change(payload)
        torch.save(payload, path)

    case("checkpoint: a future format version", "future.pt", writer=lambda p: patched(p, lambda d: d.update(version=99)))
    case("checkpoint: another program's file", "foreign.pt", writer=lambda p: torch.save({"state_dict": {}}, p))
    case("checkpoint: weights missing", "noweights.pt", writer=lambda p: patched(p, lambda d: d.pop("model")))
    case("checkpoint: NaN weights", "nan.pt",
         writer=lambda p: patched(p, lambda d: [t.fill_(math.nan) for t in d["model"].values() if t.is_floating_point()]))
    case("checkpoint: zero normalisation std", "zerostd.pt",
         writer=lambda p: patched(p, lambda d: d["normalizer"]["std"].zero_()))
    case("checkpoint: a folder without a model", "empty-folder", writer=lambda p: p.mkdir(exist_ok=True))
    case("checkpoint: a zip archive of something else", "other.zip",
         writer=lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "hello"))
    cases += model_folder_cases(folder, checkpoint, good)
    return cases


def model_folder_cases(folder: Path, checkpoint: str, good: list[str]) -> list[Case]:
    """`asr package` folders: a good one (control) and damaged ones."""
    try:
        from asr.deploy.package import CONFIG_FILE, VOCABULARY_FILE, WEIGHTS_FILE, package_model
    except ImportError:  # an asr without model folders
        return []
    cases = []
    for name, damage in (
        ("good (control)", None),
        ("truncated model.safetensors", lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:999])),
        ("config.json not JSON", lambda f: (f / CONFIG_FILE).write_text("{not json")),
        ("vocabulary missing", lambda f: (f / VOCABULARY_FILE).unlink()),
        ("model.safetensors replaced by a pickle", lambda f: torch.save({"x": torch.zeros(1)}, f / WEIGHTS_FILE)),
    ):
        target = folder / ("folder-" + re.sub(r"\W+", "_", name))
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            package_model(checkpoint, target)
        if damage is None:
            cases.append(Case(f"model folder: {name}", "checkpoint", ["transcribe", str(target), *good, "--format",
                                                                      "json"], {0}, good_paths=good))
            continue
        damage(target)
        cases.append(Case(f"model folder: {name}", "checkpoint", ["transcribe", str(target), *good], {2}, [str(target)]))
    return cases


@dataclass
class BadInputReport:
    results: list[tuple[Case, list[str], Outcome]] = field(default_factory=list)  # case, problems, outcome
    payload_ran: bool = False

    @property
    def handled(self) -> int:
        return sum(1 for _, problems, _ in self.results if not problems)


def prepare_bad_input(folder: Path) -> tuple[dict[str, Path], Path, list[str]]:
    """Corpus, a briefly trained run (its folder) and two good audio files."""
    from asr.training.loop import train

    corpus = make_corpus(folder / "corpus")
    run = folder / "trained"
    if not (run / "best.pt").exists():
        threads = torch.get_num_threads()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                torch.set_num_threads(1)
                train(tiny_config(run, corpus, train={"epochs": 2, "threads": 1}))
        finally:
            torch.set_num_threads(threads)  # the load section measures with the machine's own count
    good = [json.loads(line)["audio"] for line in corpus["valid"].read_text().splitlines()[:2]]
    return corpus, run, good


def all_bad_input_cases(folder: Path, quick: bool, in_process: bool) -> tuple[list[Case], Path]:
    corpus, run, good = prepare_bad_input(folder)
    checkpoint = str(run / "best.pt")
    marker = folder / "PAYLOAD_RAN"
    marker.unlink(missing_ok=True)
    # The WER the good references give: the normalised-reference case must match it.
    good_manifest = folder / "good.jsonl"
    good_manifest.write_text("\n".join(corpus["valid"].read_text().splitlines()[:2]) + "\n")
    baseline = run_cli(["evaluate", checkpoint, str(good_manifest), "--worst", "0"], in_process, 120)
    found = re.search(r"CER (\S+)", baseline.stdout)  # finer than WER for a barely trained model
    baseline_cer = found.group(1) if found else "?"
    cases = (audio_cases(folder / "audio", checkpoint, good, quick) + output_cases(folder / "output", checkpoint, good)
             + manifest_cases(folder / "manifests", checkpoint, corpus, baseline_cer)
             + training_cases(folder / "configs", corpus, run)
             + checkpoint_cases(folder / "checkpoints", checkpoint, good, marker))
    return cases, marker


def run_bad_input_section(folder: Path, quick: bool, in_process: bool = False,
                          select: Callable[[Case], bool] | None = None) -> BadInputReport:
    cases, marker = all_bad_input_cases(folder, quick, in_process)
    report = BadInputReport()
    for case in cases:
        if select is not None and not select(case):
            continue
        outcome = run_cli(case.argv, in_process, case.timeout)
        problems = judge(case, outcome, marker)
        report.results.append((case, problems, outcome))
        say(f"bad-input: {'ok  ' if not problems else 'FAIL'} {case.name} ({outcome.seconds:.1f} s)"
            + (f": {'; '.join(problems)}" if problems else ""))
    report.payload_ran = marker.exists()
    return report


def bad_input_table(report: BadInputReport) -> str:
    groups: dict[str, list[int]] = {}
    for case, problems, _ in report.results:
        counts = groups.setdefault(case.group, [0, 0])
        counts[0] += not problems
        counts[1] += 1
    rows = ["| kind | handled / tried |", "|---|---|"]
    rows += [f"| {group} | {handled} / {tried} |" for group, (handled, tried) in groups.items()]
    rows.append(f"| **all** | **{report.handled} / {len(report.results)}** |")
    rows.append(f"| pickle payload executed | {'YES' if report.payload_ran else 'never'} |")
    lines = ["\n".join(rows), "", ("Per kind (exit code; ok = documented exit code, the file named in stderr with a "
                                   "reason, no traceback, every good file's result there):"), ""]
    for case, problems, outcome in report.results:
        verdict = "ok" if not problems else "**not handled**: " + "; ".join(problems)
        lines.append(f"- {case.group} / {case.name}: exit {outcome.code} in {outcome.seconds:.1f} s, {verdict}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- fuzz


def run_fuzz_section(profile: str = "long") -> tuple[int, int, str]:
    """(examples run, failed tests, pytest's last line) for tests/test_fuzz.py under ``profile``."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_fuzz.py"),
               "--hypothesis-show-statistics"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=clean_env(ASR_FUZZ_PROFILE=profile),
                            timeout=3600)
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
    train = write_tone_corpus(folder / "train", texts, speaker="1")
    valid = write_tone_corpus(folder / "valid", texts[:1], speaker="2")
    write_manifest(folder / "train.jsonl", train)
    write_manifest(folder / "valid.jsonl", valid)
    return {"root": folder, "train": folder / "train.jsonl", "valid": folder / "valid.jsonl"}


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


# --------------------------------------------------------------------------- report


def merge_report(path: Path, sections: dict[str, str]) -> str:
    """RELIABILITY.md with ``sections`` replaced (or added), the others kept as they were."""
    titles = {"kill": "kill -9 and resume", "bad-input": "Bad input", "fuzz": "Fuzzing", "load": "Under load"}
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
