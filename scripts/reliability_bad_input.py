"""The bad-input harness: runs each case of reliability_bad_cases through the CLI and judges the handling.

A case is handled when the CLI exits with a documented code, stderr names the file with a
reason, there is no traceback, every good file's result is there, and no pickle payload ran.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from reliability_bad_cases import (
    Case,
    Outcome,
    audio_cases,
    checkpoint_cases,
    manifest_cases,
    output_cases,
    training_cases,
)
from reliability_common import ASR, ROOT, clean_env, say

from asr.data.synthetic import tiny_config, write_tone_manifests


def run_cli(argv: list[str], in_process: bool, timeout: float) -> Outcome:
    """``asr ARGV`` in a subprocess (as a user runs it), or in this process (fast, for tests)."""
    start = time.monotonic()
    if not in_process:
        try:
            result = subprocess.run([*ASR, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                    env=clean_env(), errors="replace", check=False)
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

    corpus = write_tone_manifests(folder / "corpus")
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
