"""The server section of scripts/reliability.py: a real `asr serve` on 127.0.0.1 under hostile but fair clients.

One server, started as a user would (``python -m asr serve``, beam search, an API key from
ASR_API_KEY, small limits so that the cases stay short), its uploads spooled in a folder of
its own (TMPDIR). Each case of reliability_server_cases.py plays one client (issue 33's probe:
long silence, a header that lies about the rate, trickling uploads, an idle live session, foreign
hosts and origins, no key, oversized and chunked uploads, a client that leaves mid-upload) and
says what it got and whether the server held; after each one the server must have freed
every slot and removed every spooled upload. SIGTERM while busy comes last. Everything is
bounded: each request has a timeout, each wait a deadline. The server process and its
helpers are in reliability_server_process.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reliability_common import say
from reliability_server_cases import server_cases
from reliability_server_process import SERVE_OPTIONS, SETTLE_S, Server, ServerCase


@dataclass
class CaseResult:
    case: ServerCase
    got: str
    problems: list[str]
    seconds: float
    recovered: bool | None  # slots and spool free afterwards (None: the case ends the server)
    tracebacks: int = 0  # new tracebacks in the server's log during the case


@dataclass
class ServerReport:
    results: list[CaseResult] = field(default_factory=list)
    memory_before: tuple[float, list[float]] = (0.0, [])  # MB: the server, each process below it
    memory_after: tuple[float, list[float]] = (0.0, [])
    load_average: float = 0.0  # the machine's 1-minute load when the section began (others' work too)
    spooled_after_cases: list[str] = field(default_factory=list)  # left in the spool before the shutdown case

    @property
    def held(self) -> int:
        return sum(1 for result in self.results if not result.problems)


def run_server_section(folder: Path, checkpoint: Path | None = None,
                       select: Callable[[ServerCase], bool] | None = None) -> ServerReport:
    """Train a tiny model unless ``checkpoint`` is given, serve it, and play every (selected) case."""
    from reliability_bad_input import prepare_bad_input  # it imports torch and trains

    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        checkpoint = prepare_bad_input(folder / "model")[1] / "best.pt"
    cases = [case for case in server_cases(folder / "audio") if select is None or select(case)]
    server = Server(checkpoint, folder / "server")
    report = ServerReport(load_average=os.getloadavg()[0])
    try:
        server.wait_ready()
        warm = server.post(folder / "audio" / "speech.wav")  # the workers have loaded the model: a fair RSS
        if warm.status_code != 200:
            raise RuntimeError(f"a good upload got {warm.status_code}: {warm.text[:500]}")
        report.memory_before = server.memory()
        for case in cases:
            if case.ends_server:
                report.memory_after = server.memory()
                report.spooled_after_cases = server.spooled()
            report.results.append(play(case, server))
        if not any(result.case.ends_server for result in report.results):
            report.memory_after, report.spooled_after_cases = server.memory(), server.spooled()
    finally:
        server.stop()
    return report


def play(case: ServerCase, server: Server) -> CaseResult:
    began, tracebacks = time.monotonic(), server.tracebacks()
    try:
        got, problems = case.run(server)
    except Exception as err:  # noqa: BLE001  (a client that could not finish is a finding, not a crash)
        got, problems = f"{type(err).__name__}: {err}"[:200], ["the client failed"]
    seconds = time.monotonic() - began
    recovered = None
    if not case.ends_server:
        recovered = server.process.poll() is None and server.settled()
        if not recovered:
            left = server.spooled() if server.process.poll() is None else "server exited"
            problems = [*problems, f"not recovered within {SETTLE_S:g} s (spool: {left})"]
    say(f"server: {'ok  ' if not problems else 'FAIL'} {case.name} ({seconds:.1f} s): {got}"
        + (f" -- {'; '.join(problems)}" if problems else ""))
    return CaseResult(case, got, problems, seconds, recovered, server.tracebacks() - tracebacks)


def server_table(report: ServerReport) -> str:
    rows = ["| group | client | expected | got | held |", "|---|---|---|---|---|"]
    for result in report.results:
        verdict = "yes" if not result.problems else "**no**: " + "; ".join(result.problems)
        rows.append(f"| {result.case.group} | {result.case.name} | {result.case.expected} | {result.got} "
                    f"({result.seconds:.1f} s) | {verdict} |")
    settled = [r.recovered for r in report.results if r.recovered is not None]
    (main_before, others_before), (main_after, others_after) = report.memory_before, report.memory_after
    logged = [f"{r.tracebacks} during '{r.case.name}'" for r in report.results if r.tracebacks]
    summary = [
        "| check | result |", "|---|---|",
        f"| kinds held / tried | **{report.held} / {len(report.results)}** |",
        (f"| slots recovered (busy 0 and the spool empty within {SETTLE_S:g} s of each case) | "
         f"{sum(settled)} / {len(settled)} |"),
        f"| RSS of the server process, before / after the cases | {main_before:.0f} / {main_after:.0f} MB |",
        (f"| RSS of the processes below it (recognition, decoding), before / after | "
         f"{megabytes(others_before)} / {megabytes(others_after)} MB |"),
        f"| temporary files left in its spool folder after the cases | {len(report.spooled_after_cases)} |",
        f"| tracebacks in the server's log | {', '.join(logged) if logged else 'none'} |",
    ]
    options = " ".join(SERVE_OPTIONS)
    return ("\n".join(summary) + "\n\n" + "\n".join(rows) + "\n\n"
            f"One `asr serve` on 127.0.0.1 (a tiny tone-language model trained on the spot, `{options}`, "
            "the key from ASR_API_KEY, default --min-upload-rate 10000 after 10 s and live idle limit 30 s), "
            "its uploads spooled in a folder of its own; every client is bounded in time. Not alone on the "
            f"machine: its load average was {report.load_average:.1f} when the section began.")


def megabytes(values: list[float]) -> str:
    return " + ".join(f"{value:.0f}" for value in values) if values else "none"

