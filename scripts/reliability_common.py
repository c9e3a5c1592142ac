"""Helpers shared by the reliability harnesses: child environments, runs to the end, comparing weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from asr.config import to_dict

ROOT = Path(__file__).resolve().parent.parent
ASR = [sys.executable, "-m", "asr"]


def say(message: str) -> None:
    """Progress on stderr (stdout carries the Markdown report)."""
    print(message, file=sys.stderr, flush=True)


def write_config(config, path: Path) -> Path:
    """``config`` as YAML at ``path``, for `asr train PATH`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    from asr.storage.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bitwise equal weights."""
    left, right = model_tensors(a), model_tensors(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment for a child run, without our thread settings, this checkout's asr first."""
    env = {k: v for k, v in os.environ.items() if k not in ("ASR_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def run_to_end(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root; a failure raises with the end of its stderr."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result
