"""The fast part of scripts/reliability.py (kill -9 and resume, bad input) and the thread governor.

The full harness (24 kills, DDP restarts, ~70 kinds of bad input, long fuzzing, load) is
``python scripts/reliability.py``; these run the same functions on a few cases.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from asr.data.synthetic import tiny_config
from asr.utils import threads
from asr.utils.threads import CpuSample, ThreadGovernor, ThreadSettingError, choose_threads, others_cores

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_harness(name: str = "reliability") -> ModuleType:
    """One of scripts/reliability*.py; they import each other by name, as when the script runs."""
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    return importlib.import_module(name)


# --------------------------------------------------------------------------- the thread governor

# Two CPUs, 100 ticks a second each. cpuN: user nice system idle iowait irq softirq steal guest guest_nice
PROC_STAT = """cpu  {u0_plus_u1} 0 0 {i0_plus_i1} 0 0 0 0 0 0
cpu0 {u0} 0 0 {i0} 0 0 0 0 0 0
cpu1 {u1} 0 0 {i1} 0 0 0 0 0 0
intr 12345
ctxt 678
"""


def proc_stat(busy: list[int], idle: list[int]) -> str:
    return PROC_STAT.format(u0=busy[0], u1=busy[1], i0=idle[0], i1=idle[1], u0_plus_u1=sum(busy),
                            i0_plus_i1=sum(idle))


def sample(busy: list[int], idle: list[int], own: int, allowed=frozenset({0, 1})) -> CpuSample:
    busy_ticks, total = threads.parse_proc_stat(proc_stat(busy, idle), set(allowed))
    return CpuSample(busy_ticks, total, own, len(allowed))


def test_proc_readings_are_parsed_per_allowed_cpu():
    assert threads.parse_proc_stat(proc_stat([10, 20], [90, 80]), {0, 1}) == (30, 200)
    assert threads.parse_proc_stat(proc_stat([10, 20], [90, 80]), {1}) == (20, 100)
    # steal (8th field) is busy: another guest had the CPU; guest time is inside user already
    assert threads.parse_proc_stat("cpu0 1 2 3 4 5 6 7 8 9 10\n", {0}) == (1 + 2 + 3 + 6 + 7 + 8, 36)
    # utime and stime are fields 14 and 15, counted after the command name, which may hold ") ("
    own = "4242 (python (x) y) R 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 3 0 100 0"
    assert threads.parse_own_ticks(own) == 333


def test_idle_machine_keeps_every_thread_and_our_own_work_is_not_load():
    before = sample([0, 0], [0, 0], own=0)
    # Over 2 s we used both CPUs fully ourselves: nobody else is there.
    after = sample([200, 200], [0, 0], own=400)
    assert others_cores(before, after) == 0.0
    assert choose_threads(before, after, ceiling=2) == 2
    # Idle machine, and we were idle too.
    assert choose_threads(before, sample([0, 0], [200, 200], own=0), ceiling=2) == 2


def test_one_busy_process_leaves_one_core():
    before = sample([0, 0], [0, 0], own=0)
    # We used one core, another process the other (it got a whole core).
    after = sample([200, 200], [0, 0], own=200)
    assert others_cores(before, after) == pytest.approx(1.0)
    assert choose_threads(before, after, ceiling=2) == 1
    # Beside our 2 spinning threads the busy loop got only 2/3 of a core: still a competitor.
    squeezed = sample([200, 200], [0, 0], own=267)
    assert choose_threads(before, squeezed, ceiling=2) == 1


def test_background_noise_is_ignored_and_there_is_always_one_thread():
    before = sample([0, 0], [0, 0], own=0)
    noise = sample([120, 120], [80, 80], own=200)  # others: 40 ticks over 2 s = 0.2 core
    assert choose_threads(before, noise, ceiling=2) == 2
    swamped = sample([200, 200], [0, 0], own=10)  # others take nearly everything
    assert choose_threads(before, swamped, ceiling=2) == 1


def test_threads_come_back_only_once_the_load_has_clearly_gone():
    before = sample([0, 0], [0, 0], own=0)
    light = sample([100, 100], [100, 100], own=150)  # others: 50 ticks over 2 s = 0.25 core
    assert choose_threads(before, light, ceiling=2) == 2  # from scratch: noise
    assert choose_threads(before, light, ceiling=2, current=1) == 1  # not yet gone enough to add a thread
    gone = sample([100, 100], [100, 100], own=180)  # 0.1 core
    assert choose_threads(before, gone, ceiling=2, current=1) == 2


def test_cpus_outside_our_affinity_do_not_count():
    before = sample([0, 0], [0, 0], own=0, allowed={0})
    # cpu1 is fully busy with someone else, but we may only run on cpu0, which is ours alone.
    after = sample([200, 200], [0, 0], own=200, allowed={0})
    assert others_cores(before, after) == 0.0
    assert choose_threads(before, after, ceiling=1) == 1


def test_at_most_the_ceiling_on_a_big_idle_machine():
    before = CpuSample(busy=0, total=0, own=0, cpus=64)
    after = CpuSample(busy=0, total=64 * 200, own=0, cpus=64)
    assert choose_threads(before, after, ceiling=32) == 32


def fake_readings(monkeypatch, readings: list[CpuSample]) -> None:
    queue = list(readings)
    monkeypatch.setattr(threads, "read_sample", lambda allowed: queue.pop(0))


def test_governor_rechecks_at_most_every_interval_and_sets_the_count(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    idle0, idle1, idle2 = sample([0, 0], [0, 0], 0), sample([0, 0], [25, 25], 0), sample([0, 0], [200, 200], 0)
    busy = sample([200, 400], [200, 0], own=200)  # next 2 s: another process took a core
    fake_readings(monkeypatch, [idle0, idle1, idle2, busy])
    governor = ThreadGovernor(ceiling=2, interval=2.0)
    assert governor.adjust(now=0.0) == 2  # the first look spans a short sleep: idle, both threads
    assert governor.adjust(now=1.0) == 2  # within the interval: no /proc read at all
    assert governor.adjust(now=2.0) == 2  # idle: both threads
    assert governor.adjust(now=4.0) == 1 and torch.get_num_threads() == 1


def test_the_first_look_already_sees_a_busy_machine(monkeypatch):
    # Before the first step: one step with 2 threads beside a busy process took longer than
    # many with 1 (RELIABILITY.md), so the first call must not wait for a second reading.
    torch.set_num_threads(2)
    slept = []
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    fake_readings(monkeypatch, [sample([0, 0], [0, 0], 0), sample([25, 25], [0, 0], own=25)])
    assert ThreadGovernor(ceiling=2, interval=2.0).adjust(now=0.0) == 1 and torch.get_num_threads() == 1
    assert slept == [threads.FIRST_LOOK_SECONDS]


def test_governor_leaves_a_count_chosen_elsewhere_alone(monkeypatch):
    torch.set_num_threads(2)
    fake_readings(monkeypatch, [sample([0, 0], [0, 0], 0), sample([200, 200], [0, 0], 200)])
    governor = ThreadGovernor(ceiling=2, interval=2.0)
    governor.adjust(now=0.0)
    torch.set_num_threads(2 if torch.get_num_threads() == 1 else 1)  # the caller chose a count
    chosen = torch.get_num_threads()
    assert governor.adjust(now=5.0) == chosen and governor.standing_down


def test_asr_threads_fixes_the_count_and_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("ASR_THREADS", "1")
    torch.set_num_threads(2)
    governor = threads.governor_from_environment()
    assert governor.adjust(now=0.0) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("ASR_THREADS", "many")
    with pytest.raises(ThreadSettingError, match="ASR_THREADS"):
        threads.governor_from_environment()
    monkeypatch.setenv("ASR_THREADS", "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's choice for each rank is kept
    assert threads.governor_from_environment().standing_down
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not threads.governor_from_environment().standing_down


def test_cli_reports_a_bad_asr_threads_as_an_error(monkeypatch, capsys, tmp_path):
    from asr.cli import main

    monkeypatch.setattr(threads, "_governor", None)
    monkeypatch.setenv("ASR_THREADS", "-3")
    assert main(["evaluate", str(tmp_path / "model.pt"), str(tmp_path / "m.jsonl")]) == 2
    assert "error: ASR_THREADS='-3'" in capsys.readouterr().err


def test_commands_without_the_network_ignore_asr_threads(monkeypatch, capsys, tmp_path):
    import subprocess

    from asr.cli import main

    monkeypatch.setattr(threads, "_governor", None)
    monkeypatch.setenv("ASR_THREADS", "-3")
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "m.jsonl")]) == 1  # its own error, not ASR_THREADS
    assert "ASR_THREADS" not in capsys.readouterr().err
    # `asr lm build` does not even import torch (here it fails later, for want of KenLM or of the text).
    probe = ("import sys; from asr.cli import main; main(['lm', 'build', 'missing.txt', 'out.arpa']); "
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
    assert "ASR_THREADS" not in result.stderr


def test_a_fixed_train_threads_is_never_governed(monkeypatch):
    monkeypatch.setattr(threads, "_governor", None)
    monkeypatch.setattr(threads, "read_sample", lambda allowed: pytest.fail("read /proc despite a fixed count"))
    torch.set_num_threads(1)
    assert threads.adjust_threads(fixed=1) == 1


def test_training_and_transcription_consult_the_governor(tone_corpus, trained_checkpoint, tmp_path, monkeypatch):
    from asr.inference import recognizer as transcribe_module
    from asr.training import loop as train_module

    calls = []
    monkeypatch.setattr(train_module, "adjust_threads", lambda fixed=0: calls.append(("step", fixed)))
    monkeypatch.setattr(transcribe_module, "adjust_threads", lambda fixed=0: calls.append(("batch", fixed)))
    state = train_module.train(tiny_config(tmp_path / "run", tone_corpus, train={"epochs": 1, "threads": 0}))
    assert calls == [("step", 0)] * state.step  # once per training step; train.threads=0: governed
    calls.clear()
    recognizer = transcribe_module.load_model(trained_checkpoint)
    audio = [json.loads(line)["audio"] for line in tone_corpus["valid"].read_text().splitlines()]
    assert all(r.ok for r in recognizer.transcribe(audio))
    assert calls and {kind for kind, _ in calls} == {"batch"}  # once per inference batch


# --------------------------------------------------------------------------- the harness, fast


@pytest.mark.slow
def test_kill_nine_during_training_resumes_to_the_same_weights(tmp_path):
    harness = load_harness("reliability_kill")
    report = harness.run_kill_section(tmp_path, kills=3, seed=1, epochs=4)
    assert report.tried == 3
    assert report.survived == report.tried, harness.kill_table(report, [])
    assert report.equal_series == report.series >= 1
    assert report.by_moment.get("checkpoint-write") == 1  # killed while a checkpoint was being written
    assert not report.findings, report.findings


FAST_KINDS = (
    "empty file (0 bytes)", "text file renamed .wav", "NaN samples (float WAV)", "stereo", "50 ms",
    "WAV cut in half (header promises more)", "two inputs with the same name, --output-dir",
    "manifest: malformed JSON line", "manifest: non-UTF-8 bytes in a line", "manifest: line without text",
    "manifest: empty file", "config: unknown key", "config: model.num_layers=0",
    "checkpoint: truncated", "checkpoint: a plain pickle carrying a payload",
    "checkpoint: torch.save zip carrying a payload",
)


def test_bad_input_kinds_are_handled_and_no_payload_runs(tmp_path):
    harness = load_harness("reliability_bad_input")
    report = harness.run_bad_input_section(tmp_path, quick=True, in_process=True,
                                           select=lambda case: case.name in FAST_KINDS)
    assert len(report.results) == len(FAST_KINDS)
    assert not report.payload_ran
    unhandled = {case.name: problems for case, problems, _ in report.results if problems}
    assert not unhandled, unhandled


FAST_SERVER_KINDS = (
    "250 s of digital silence (FLAC) twice, then a good file", "a client that disconnects mid-upload",
    "Host: evil.example (DNS rebinding)", "POST from a page of another origin", "WebSocket from a page of another origin",
    "no API key", "live session without the key", "the file under another field name (audio=)",
    "2 MB upload, chunked (no Content-Length)", "SIGTERM while a recognition runs and an upload is stalled",
)  # the full section adds the 100 Hz header, 30 min of silence, trickling clients (10 s), an idle live session (30 s)


def test_a_real_server_holds_against_hostile_clients(trained_checkpoint, tmp_path):
    harness = load_harness("reliability_server")
    report = harness.run_server_section(tmp_path, checkpoint=trained_checkpoint,
                                        select=lambda case: case.name in FAST_SERVER_KINDS)
    assert sorted(result.case.name for result in report.results) == sorted(FAST_SERVER_KINDS)
    not_held = {result.case.name: result.problems for result in report.results if result.problems}
    assert not not_held, harness.server_table(report)
    assert all(result.recovered for result in report.results[:-1]) and report.results[-1].recovered is None
    assert report.spooled_after_cases == []
    assert report.memory_before[0] > 0 and report.memory_after[1], "the server and its workers measured"


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The harness's malicious checkpoints are real: an unsafe load creates the marker."""
    harness = load_harness("reliability_bad_cases")
    marker = tmp_path / "RAN"
    path = tmp_path / "payload.pt"
    torch.save({"model": harness.Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_report_replaces_only_the_sections_run(tmp_path):
    harness = load_harness()
    out = tmp_path / "RELIABILITY.md"
    out.write_text(harness.merge_report(out, {"kill": "kills: 20 / 20", "load": "old load figures"}))
    text = harness.merge_report(out, {"load": "new load figures"})
    assert "kills: 20 / 20" in text and "new load figures" in text and "old load figures" not in text
    assert text.index("## kill -9") < text.index("## Under load")
