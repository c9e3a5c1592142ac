"""The kill -9 harness: training runs SIGKILLed at chosen moments, single-process and DDP under torchrun.

Each run is resumed with the same command after every kill; checkpoints must load after each
kill and the finished run's weights must equal an uninterrupted run's (``torch.equal``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reliability_common import ASR, ROOT, clean_env, run_to_end, same_weights, say, write_config

from asr.data.synthetic import tiny_config, write_tone_manifests


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
    corpus = write_tone_manifests(folder / "corpus")
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


# --------------------------------------------------------------------------- DDP under torchrun


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
    corpus = write_tone_manifests(folder / "corpus") if not (folder / "corpus" / "train.jsonl").exists() else {
        "root": folder / "corpus", "train": folder / "corpus" / "train.jsonl", "valid": folder / "corpus" / "valid.jsonl"}
    rng = random.Random(seed)
    env = clean_env(OMP_NUM_THREADS="1")
    report = DdpReport(dropout=dropout)

    def command(config_path: Path, restarts: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                f"--max-restarts={restarts}", "-m", "asr", "train", str(config_path)]

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
