"""Whether bf16 autocast can run the LSTM here, and fp32 when it cannot.

On the CPU, oneDNN runs a bf16 LSTM only with AVX-512 BF16 or AMX; elsewhere (AVX2-only
CPUs) it fails with "could not create a primitive descriptor for the LSTM forward
propagation primitive". A config or command that asks for bf16 then runs in fp32, with a
warning, instead of failing: the same recipe works on every machine, fastest where it can.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch


class PrecisionFallbackWarning(UserWarning):
    """bf16 was asked for where it cannot run: fp32 is used instead."""


@cache
def bf16_lstm_supported(device_type: str) -> bool:
    """One tiny LSTM step under bf16 autocast on ``device_type`` (cached per process)."""
    if device_type != "cpu":
        return True  # CUDA GPUs run bf16 LSTMs (cuDNN); other devices are not tried here
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            torch.nn.LSTM(4, 4, batch_first=True)(torch.zeros(1, 2, 4))  # (B, T, C)
    except RuntimeError:
        return False
    return True


def usable_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """``precision``, or fp32 where bf16 cannot run the LSTM; with the warning to show then."""
    if precision != "bf16" or bf16_lstm_supported(device.type):
        return precision, None
    return "fp32", ("bf16 was asked for, but this CPU cannot run a bf16 LSTM (oneDNN needs AVX-512 BF16 "
                    "or AMX); running in fp32 instead")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32 and int8 run without autocast


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (training and inference alike): none
    for fp32 or int8 and, where bf16 cannot run the LSTM, none either (fp32)."""
    precision, _ = usable_precision(precision, device)
    if precision not in AUTOCAST_DTYPES:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
