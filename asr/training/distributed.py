"""torchrun set-up, kept out of the loop: this process's rank, its device, the process group
and the few collectives the loop needs (one process when run without torchrun)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from asr.config import ConfigError, ExperimentConfig
from asr.model.features import FeatureFrontend


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (world_size 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> Distributed:
        """This process's place as torchrun's environment describes it (rank 0 of 1 without torchrun)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def choose_device(name: str) -> torch.device:
    """train.device as a torch device; ConfigError for one this machine or this torch build lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name}: not a torch device ({err}); use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"train.device={name}: {reason}; use train.device=cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name}: this machine shows {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name}: MPS is not available here; use train.device=cpu (or auto)")
    return device


def setup_distributed(config: ExperimentConfig) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    dist_info = Distributed.from_environment()
    device = choose_device(config.train.device)
    if not dist_info.enabled:
        return dist_info, device
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if dist_info.local_rank >= visible:  # NCCL would hang or fail obscurely: one GPU per process
            raise ConfigError(
                f"rank {dist_info.rank}: local rank {dist_info.local_rank} needs a GPU of its own but this machine "
                f"shows {visible}; run torchrun with --nproc_per_node={visible} or set train.device=cpu (gloo)"
            )
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        # Gloo's eager full-mesh connect failed ("connection refused") in the workers that
        # torchrun restarts after a worker dies; connecting pairs on first use works.
        os.environ.setdefault("TORCH_GLOO_LAZY_INIT", "1")
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist_info, device


def data_parallel(
    model: torch.nn.Module, frontend: FeatureFrontend, dist_info: Distributed, device: torch.device
) -> torch.nn.Module:
    """What training steps call: ``model`` itself in one process; under torchrun its DDP
    wrapper, once every rank holds rank 0's normalisation statistics."""
    if not dist_info.enabled:
        return model
    for buffer in (frontend.normalizer.mean, frontend.normalizer.std):
        torch.distributed.broadcast(buffer, src=0)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_ranks_agree(flag: bool, dist_info: Distributed, device: torch.device) -> bool:
    """True on every rank if any rank says True (so that all ranks stop together)."""
    if not dist_info.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def broadcast_int(value: int, dist_info: Distributed, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not dist_info.enabled:
        return value
    tensor = torch.tensor([value], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())


def rank_step_seed(seed: int, rank: int, step: int) -> int:
    """A seed for one rank's step, distinct for every (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def barrier(dist_info: Distributed) -> None:
    """Every rank waits here for the others (nothing to wait for in one process)."""
    if dist_info.enabled:
        torch.distributed.barrier()


def cleanup_distributed(dist_info: Distributed) -> None:
    """Leave the process group that :func:`setup_distributed` joined."""
    if dist_info.enabled:
        torch.distributed.destroy_process_group()
