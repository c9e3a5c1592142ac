"""Training's logs: progress lines on stderr, metrics.jsonl and TensorBoard scalars."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from asr.utils.atomic import atomic_write, json_safe


def log(message: str) -> None:
    """One line on stderr that does not break a running progress bar."""
    tqdm.write(message, file=sys.stderr)


def write_metrics(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """metrics.jsonl holding exactly ``records``, one strict-JSON line each (replaced atomically).

    Written whole from the run's history, which last.pt saves: a run killed after logging an
    epoch but before checkpointing it logs that epoch again on resume, and only once."""
    with atomic_write(path) as out:
        for record in records:
            out.write(json.dumps(json_safe(record), allow_nan=False) + "\n")


class TensorBoard:
    """SummaryWriter when tensorboard is installed, otherwise a silent stand-in."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency: lstm-asr[tensorboard]
        except ImportError:
            log("tensorboard is not installed (pip install 'lstm-asr[tensorboard]'): no event files written")
            self.writer = None
        else:
            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
