"""Torch's CPU thread count, following the cores other processes leave free.

On a shared CPU, OpenMP threads that outnumber the free cores spin-wait on each other:
measured on a 2-core machine, training with 2 threads beside one busy process ran 12x
slower (< 12 vs 153 audio-s/s), while 1 thread ran at 144-146. So training (once per step)
and transcription (once per batch) call :func:`adjust_threads`, which every few seconds
reads how much CPU time the other processes used on this process's CPUs (``/proc/stat``
minus this process's own ``/proc/self/stat`` times, within ``os.sched_getaffinity``) and
sets ``torch.set_num_threads`` to the cores left free: at least 1, at most torch's own
default (which it keeps when the machine is otherwise idle).

Settings (environment):

    ASR_THREADS=N   fix the count at N threads (N >= 1): the governor never changes it
    ASR_THREADS=auto (or 0, or unset)  governed, unless the count was chosen elsewhere:
                    OMP_NUM_THREADS set (torchrun sets it to 1 for each rank), the config's
                    ``train.threads`` (which wins over ASR_THREADS in training), or a
                    ``torch.set_num_threads`` call by the caller

Each change is reported on stderr (``threads: 2 -> 1 (...)``). DataLoader workers and beam
search worker processes are other processes here: the cores they keep busy are not free for
this process's threads either.
The thread count may change the order of some floating-point sums, so results may differ
from a fixed-count run in the last bits (the BiLSTM's fp32 forward and backward passes
measured bit-identical at 1 and 2 threads): fix the count (``ASR_THREADS`` or
``train.threads``) where a run must be bit-identical to another.
Linux only; elsewhere (no ``/proc``) the count stays as it is. CPU quotas of containers
(cgroup ``cpu.max``) are not read: there, fix the count.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.errors import AsrError

CHECK_SECONDS = 2.0  # at most one look at /proc per this many seconds (a few tens of microseconds each)
# The first look spans this long, before the first step: one step with too many threads on a
# busy CPU can take longer than many steps with the right count.
FIRST_LOOK_SECONDS = 0.25
# Load below this many cores is background noise (a shell, a logger), not a competing job ...
NOISE_CORES = 0.3
# ... and threads come back only once the load is below this: no flapping around the threshold.
RETURN_NOISE_CORES = 0.15
# /proc/stat fields (after the cpu name) that count as busy: user nice system irq softirq steal.
# Steal is time the hypervisor gave to another guest, as good as taken by another process.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


class ThreadSettingError(AsrError, ValueError):
    """ASR_THREADS holds something other than a positive count or ``auto``."""


@dataclass(frozen=True)
class CpuSample:
    """One reading of the CPU clocks (in clock ticks), summed over this process's allowed CPUs."""

    busy: int  # ticks all processes spent running on the allowed CPUs
    total: int  # all ticks of the allowed CPUs, idle included
    own: int  # ticks this process (all its threads) has used since it started
    cpus: int  # allowed CPUs


def parse_proc_stat(text: str, allowed: set[int]) -> tuple[int, int]:
    """(busy, total) ticks of the CPUs in ``allowed``, from the text of /proc/stat."""
    busy = total = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in allowed:
            continue
        # Guest time is already inside user/nice, so the first 8 fields are the whole clock.
        ticks = [int(value) for value in rest.split()[:8]]
        busy += sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks))
        total += sum(ticks)
    return busy, total


def parse_own_ticks(text: str) -> int:
    """utime + stime of the process, from the text of /proc/<pid>/stat."""
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = text.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def read_sample(allowed: set[int]) -> CpuSample:
    busy, total = parse_proc_stat(Path("/proc/stat").read_text(), allowed)
    return CpuSample(busy, total, parse_own_ticks(Path("/proc/self/stat").read_text()), len(allowed))


def others_cores(before: CpuSample, after: CpuSample) -> float:
    """Cores' worth of CPU time the other processes used between two samples."""
    elapsed_per_cpu = (after.total - before.total) / max(1, after.cpus)
    if elapsed_per_cpu <= 0:
        return 0.0
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / elapsed_per_cpu)


def choose_threads(before: CpuSample, after: CpuSample, ceiling: int, current: int | None = None) -> int:
    """Threads for the cores the other processes left free: 1 to ``ceiling``. More than
    ``current`` only when the other load has fallen clearly (below RETURN_NOISE_CORES)."""

    def free(noise: float) -> int:
        taken = math.ceil(others_cores(before, after) - noise)
        return max(1, min(ceiling, after.cpus - max(0, taken)))

    wanted = free(NOISE_CORES)
    if current is not None and wanted > current:
        wanted = max(current, free(RETURN_NOISE_CORES))
    return wanted


class ThreadGovernor:
    """Re-chooses torch's thread count at most every ``interval`` seconds (see the module doc)."""

    def __init__(self, ceiling: int, interval: float = CHECK_SECONDS, fixed: int | None = None) -> None:
        self.ceiling = ceiling  # never more threads than this (torch's default: the physical cores)
        self.interval = interval
        self.fixed = fixed  # ASR_THREADS=N, or None when governed
        self.allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.last_sample: CpuSample | None = None
        self.last_check = -math.inf
        self.expected = torch.get_num_threads()  # what the count is unless someone else changed it
        self.standing_down = False  # someone else chose the count: leave it alone from now on

    def adjust(self, now: float | None = None) -> int:
        """Apply the fixed count, or re-check the free cores if ``interval`` has passed; returns the count."""
        current = torch.get_num_threads()
        if self.fixed is not None:
            if current != self.fixed:
                torch.set_num_threads(self.fixed)
            return self.fixed
        if self.standing_down or current != self.expected:
            self.standing_down = True
            return current
        now = time.monotonic() if now is None else now
        if now - self.last_check < self.interval:
            return current
        self.last_check = now
        try:
            sample = read_sample(self.allowed)
        except (OSError, ValueError, IndexError):  # no /proc (not Linux) or an unexpected layout
            self.standing_down = True
            return current
        previous, self.last_sample = self.last_sample, sample
        if previous is None:
            time.sleep(FIRST_LOOK_SECONDS)
            previous, sample = sample, read_sample(self.allowed)
            self.last_sample = sample
        wanted = choose_threads(previous, sample, self.ceiling, current)
        if wanted != current:
            torch.set_num_threads(wanted)
            self.expected = wanted
            tqdm.write(f"threads: {current} -> {wanted} (other processes use {others_cores(previous, sample):.1f} "
                       f"of {sample.cpus} cores; ASR_THREADS=N fixes the count)", file=sys.stderr)
        return wanted


_governor: ThreadGovernor | None = None


def governor_from_environment() -> ThreadGovernor:
    """The governor the ASR_THREADS / OMP_NUM_THREADS settings ask for."""
    raw = os.environ.get("ASR_THREADS", "auto")
    setting = raw.strip().lower()
    ceiling = torch.get_num_threads()
    if setting in ("", "auto", "0"):
        governor = ThreadGovernor(ceiling)
        # An OpenMP thread count chosen by the user (or torchrun, 1 per rank) is kept.
        governor.standing_down = bool(os.environ.get("OMP_NUM_THREADS"))
        return governor
    try:
        count = int(setting)
    except ValueError:
        count = 0
    if count < 1:
        raise ThreadSettingError(f"ASR_THREADS={raw!r}: expected a thread count >= 1, or 'auto'")
    return ThreadGovernor(ceiling, fixed=count)


def adjust_threads(fixed: int = 0) -> int:
    """Cheap enough to call every training step and inference batch; returns the thread count.

    ``fixed`` > 0 (e.g. ``train.threads``) means the caller chose the count: nothing changes.
    """
    global _governor
    if fixed > 0:
        return torch.get_num_threads()
    if _governor is None:
        _governor = governor_from_environment()
    return _governor.adjust()
