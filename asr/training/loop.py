"""Training: a readable loop built from small functions.

    asr train CONFIG.yaml [section.key=value ...]

Writes ``last.pt`` (resumable: optimiser, scheduler, position and RNG states) and ``best.pt``
(lowest validation CER) into ``train.out_dir``, a ``metrics.jsonl`` line per validation, and
TensorBoard scalars when tensorboard is installed. Re-running the same command resumes
from ``last.pt`` and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.utils.atomic import atomic_write, json_safe, remove_stale_temporaries
from asr.storage.checkpoint import (
    CheckpointError,
    build_payload,
    check_resumable,
    read_checkpoint,
    save_checkpoint,
    train_audio_of,
)
from asr.config import ConfigError, ExperimentConfig, load_config, to_dict
from asr.data.dataset import (
    Batch,
    BucketBatchSampler,
    JoinedUtterance,
    ManifestError,
    SpeechDataset,
    TrainingItem,
    Utterance,
    collate,
    filter_for_training,
    frame_counts,
    join_utterances,
    parts_of,
    read_manifest,
)
from asr.decoding.beam import GreedyDecoder
from asr.errors import AsrError, DiskFullError, no_space_left
from asr.model.features import FeatureFrontend, StatsAccumulator, spec_augment, vtlp_filter_banks
from asr.scoring.metrics import error_counts
from asr.model.network import AcousticModel
from asr.data.phones import phonemize
from asr.data.text import CharVocabulary
from asr.utils.precision import usable_precision
from asr.utils.threads import adjust_threads


@dataclass
class TrainState:
    """Where training stands; saved in last.pt so that a run resumes exactly."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    step: int = 0  # optimiser steps so far
    best_cer: float = math.inf  # lowest validation CER so far
    train_seconds: float = 0.0  # wall time spent training, summed over resumed runs
    schedule_steps: int = 0  # steps the cosine decay spans when fitted to the time budget; 0 = by epochs
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation


# --------------------------------------------------------------------------- setup


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in _numpy_state().items()},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": keys, "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def restore_rng_states(states: dict[str, Any]) -> None:
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
        numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"],
    ))
    # RNG states are CPU byte tensors; a checkpoint loaded onto the GPU carries them there.
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def load_utterances(
    config: ExperimentConfig, vocabulary: CharVocabulary, say=log
) -> tuple[list[Utterance], list[Utterance]]:
    """Read both manifests and drop what CTC cannot train on, reporting every reason."""
    factor = config.model.subsampling_factor
    if not config.data.train_manifest:
        raise ConfigError("data.train_manifest is not set: give the training manifest (JSONL, `asr prepare`)")
    train_all = read_manifest(config.data.train_manifest)
    train, report = filter_for_training(train_all, vocabulary, factor, config.data.max_duration, config.features)
    say(f"train {config.data.train_manifest}: {report.summary()}")
    if not train:
        raise ManifestError(f"{config.data.train_manifest}: no usable training utterances ({report.summary()})")
    valid: list[Utterance] = []
    if config.data.valid_manifest:
        # Validation keeps long utterances; it only needs transcripts the vocabulary can spell.
        valid, report = filter_for_training(read_manifest(config.data.valid_manifest), vocabulary, factor, math.inf,
                                            config.features)
        say(f"valid {config.data.valid_manifest}: {report.summary()}")
    return train, valid


def make_loader(
    dataset: SpeechDataset,
    config: ExperimentConfig,
    shuffle: bool,
    device: torch.device,
    dist_info: Distributed | None = None,
) -> tuple[DataLoader, BucketBatchSampler]:
    dist_info = dist_info or Distributed()
    sampler = BucketBatchSampler(
        frame_counts(dataset.utterances, config.features),
        config.data.max_frames_per_batch,
        shuffle=shuffle,
        seed=config.train.seed,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0,
        # A private generator keeps the global RNG untouched, which exact resume relies on.
        generator=torch.Generator().manual_seed(config.train.seed),
    )
    return loader, sampler


def estimate_normalizer(
    frontend: FeatureFrontend, dataset: SpeechDataset, config: ExperimentConfig, device: torch.device
) -> None:
    """Fit the global mean/std on (a seeded subset of) the training audio, after any per-utterance mean."""
    count = min(len(dataset), config.data.stats_utterances)
    chosen = sorted(random.Random(config.train.seed).sample(range(len(dataset)), count))
    stats = StatsAccumulator(config.features.n_mels)
    for start in tqdm(range(0, count, 16), desc="normalisation stats", leave=False, disable=None):
        batch = collate([dataset[i] for i in chosen[start : start + 16]])
        if not batch.indices:  # every file unreadable (each one reported)
            continue
        features, lengths = frontend.unnormalized(batch.waveforms.to(device), batch.waveform_lengths.to(device))
        stats.add(features, lengths)
    if stats.count == 0:
        reasons = [dataset.failures[i] for i in chosen if i in dataset.failures]
        raise ManifestError(
            f"{config.data.train_manifest}: none of the {count} training utterances read for the normalisation "
            f"statistics could be used ({len(reasons)} unreadable); the first: " + "; ".join(reasons[:3])
        )
    mean, std = stats.result()
    frontend.normalizer.mean.copy_(mean)
    frontend.normalizer.std.copy_(std)


def make_scheduler(optimizer: torch.optim.Optimizer, config: ExperimentConfig, total_steps: Callable[[], int]):
    """Linear warm-up to the peak learning rate, then cosine decay to ``final_lr_ratio``.

    ``total_steps`` is asked at every step: a budget-fitted schedule learns its length after
    the second epoch.
    """
    warmup = max(1, config.optim.warmup_steps)
    final = config.optim.final_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps() - warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(config: ExperimentConfig, device: torch.device):
    precision, _ = usable_precision(config.train.precision, device)  # fp32 where bf16 cannot run the LSTM
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- steps


def ctc_loss(
    log_probs: torch.Tensor,
    output_lengths: torch.Tensor,
    labels: torch.Tensor,
    label_lengths: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Mean over the batch of the per-label CTC loss; impossible alignments contribute 0."""
    return torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),  # (T', B, V): ctc_loss wants time first
        labels.to(device),
        output_lengths,
        label_lengths.to(device),
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


def train_step(
    batch: Batch,
    frontend: FeatureFrontend,
    model: torch.nn.Module,  # the AcousticModel, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: ExperimentConfig,
    device: torch.device,
    phone_labels: Sequence[torch.Tensor] | None = None,  # per dataset index; for model.phone_ctc_weight > 0
) -> float:
    """One optimiser step; returns the character CTC loss (without the auxiliary phone loss)."""
    warped_banks = vtlp_filter_banks(frontend.log_mel, len(batch.waveform_lengths), config.specaugment)
    features, lengths = frontend(
        batch.waveforms.to(device, non_blocking=True), batch.waveform_lengths.to(device), warped_banks
    )
    features = spec_augment(features, lengths, config.specaugment)
    phone_weight = config.model.phone_ctc_weight
    with autocast(config, device):
        if phone_weight > 0:
            log_probs, output_lengths, phone_log_probs = model(features, lengths, with_phones=True)
        else:
            log_probs, output_lengths = model(features, lengths)
    loss = ctc_loss(log_probs, output_lengths, batch.labels, batch.label_lengths, device)
    total = loss
    if phone_weight > 0:
        if phone_labels is None:
            raise ValueError("model.phone_ctc_weight > 0 needs the training utterances' phone labels")
        phones = [phone_labels[i] for i in batch.indices]
        padded = torch.nn.utils.rnn.pad_sequence(phones, batch_first=True)  # (B, max_phones)
        phone_lengths = torch.tensor([len(p) for p in phones], dtype=torch.long)
        total = loss + phone_weight * ctc_loss(phone_log_probs, output_lengths, padded, phone_lengths, device)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item()


@torch.no_grad()
def validate(
    loader: DataLoader,
    frontend: FeatureFrontend,
    model: AcousticModel,
    decoder: GreedyDecoder,
    config: ExperimentConfig,
    device: torch.device,
) -> dict[str, float]:
    """Greedy-decode the validation set: loss, WER and CER."""
    model.eval()
    utterances = loader.dataset.utterances
    references, hypotheses = [], []
    total_loss = 0.0
    for batch in loader:
        if not batch.indices:
            continue
        features, lengths = frontend(batch.waveforms.to(device), batch.waveform_lengths.to(device))
        with autocast(config, device):
            log_probs, output_lengths = model(features, lengths)
        loss = ctc_loss(log_probs, output_lengths, batch.labels, batch.label_lengths, device)
        total_loss += loss.item() * len(batch.indices)
        hypotheses += [h.text for h in decoder(log_probs, output_lengths)]
        references += [utterances[i].text for i in batch.indices]
    model.train()
    return {
        "valid_loss": total_loss / max(1, len(references)),
        "valid_wer": error_counts(references, hypotheses, "word").rate,
        "valid_cer": error_counts(references, hypotheses, "char").rate,
    }


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
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("tensorboard is not installed (pip install 'asr[tensorboard]'): no event files written")
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


# --------------------------------------------------------------------------- distributed


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


def setup_distributed(config: ExperimentConfig) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), choose_device(config.train.device)
    dist_info = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = choose_device(config.train.device)
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


def all_ranks_agree(flag: bool, dist_info: Distributed, device: torch.device) -> bool:
    """True on every rank if any rank says True (so that all ranks stop together)."""
    if not dist_info.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run works with, built once by :func:`build_run`."""

    config: ExperimentConfig
    dist: Distributed
    device: torch.device
    vocabulary: CharVocabulary
    frontend: FeatureFrontend
    model: AcousticModel  # the network itself: saved, validated
    step_model: torch.nn.Module  # what training steps call: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    train_sampler: BucketBatchSampler
    valid_loader: DataLoader | None
    board: TensorBoard | None  # rank 0 only
    out_dir: Path
    state: TrainState = field(default_factory=TrainState)
    session_start: float = field(default_factory=time.monotonic)
    trained_before: float = 0.0  # seconds trained by earlier sessions of this run
    # Monotonic time rank 0 last passed the schedule-fitting point in end_of_epoch: the fit
    # measures one whole epoch cycle (training, validation, checkpoints, barrier).
    schedule_mark: float | None = None
    schedule_fitted: bool = False  # the budget schedule was measured in this session
    phone_labels: list[torch.Tensor] | None = None  # per training utterance, for the phone CTC loss

    def say(self, message: str) -> None:
        if self.dist.is_main:
            log(message)

    def train_seconds(self) -> float:
        return self.trained_before + time.monotonic() - self.session_start


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    steps: int = 0
    audio_seconds: float = 0.0  # over all ranks
    data_seconds: float = 0.0  # spent waiting for the loader's next batch (the device idles)
    start: float = field(default_factory=time.monotonic)
    stopped: bool = False  # the step or time budget ran out

    @property
    def mean_loss(self) -> float | None:
        """None when this session trained no batch of the epoch (resumed at its very end)."""
        return self.loss_sum / self.steps if self.steps else None

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / max(1e-9, time.monotonic() - self.start)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_seconds / max(1e-9, time.monotonic() - self.start)


def build_run(config: ExperimentConfig) -> Run:
    """Data, model, optimiser and schedule; resumed from last.pt when it exists."""
    dist_info, device = setup_distributed(config)
    if config.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision=fp16 needs a CUDA device, not {device}: the CPU has no fp16 LSTM; "
                          "use bf16 (or fp32) on the CPU")
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    out_dir = Path(config.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log if dist_info.is_main else (lambda message: None)
    _, precision_problem = usable_precision(config.train.precision, device)
    if precision_problem:
        say(f"warning: train.precision: {precision_problem}")

    vocabulary = CharVocabulary.english()
    train_utts, valid_utts = load_utterances(config, vocabulary, say)
    data = config.data
    train_utts = join_utterances(train_utts, data.join_fraction, data.join_max_utterances, data.join_max_gap,
                                 data.max_duration, config.train.seed)
    phone_labels = training_phone_labels(train_utts, config, out_dir, dist_info, say)  # early: needs espeak-ng
    rate = config.features.sample_rate  # as inference loads audio
    train_set = SpeechDataset(train_utts, vocabulary, cache_audio=config.data.cache_audio, sample_rate=rate)
    train_loader, train_sampler = make_loader(train_set, config, shuffle=True, device=device, dist_info=dist_info)
    valid_loader = None
    if valid_utts and dist_info.is_main:
        valid_loader, _ = make_loader(SpeechDataset(valid_utts, vocabulary, sample_rate=rate), config, shuffle=False,
                                      device=device)
    joins = sum(isinstance(item, JoinedUtterance) for item in train_utts)
    say(f"train: {len(train_utts)} utterances{f' ({joins} of them joins)' if joins else ''}, "
        f"{sum(u.duration for u in train_utts) / 3600:.2f} h, "
        f"{len(train_sampler)} batches/epoch on each of {dist_info.world_size} rank(s), "
        f"padding {100 * train_sampler.padding_fraction():.1f} % of frames")

    frontend = FeatureFrontend(config.features).to(device)
    model = AcousticModel(config.model, config.features.n_mels, len(vocabulary)).to(device)
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, device {device}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
    )
    # The schedule depends on the epochs alone (max_steps/max_minutes interrupt a run, and a
    # resumed run must follow the same learning-rate curve as an uninterrupted one), or on
    # the time budget once fit_schedule_to_budget has measured this machine.
    state = TrainState()
    epoch_steps = config.train.epochs * len(train_sampler)
    scheduler = make_scheduler(optimizer, config, total_steps=lambda: (
        config.optim.schedule == "budget" and state.schedule_steps) or epoch_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")

    last_path = out_dir / "last.pt"
    if last_path.exists():
        resume(last_path, config, frontend, model, optimizer, scheduler, scaler, device, state, say)
    elif dist_info.is_main:
        estimate_normalizer(frontend, train_set, config, device)
    if dist_info.is_main:  # after resume() accepted out_dir: a refused run leaves another run's files alone
        for stale in remove_stale_temporaries(out_dir):  # checkpoints, phones.json, ... of killed runs
            say(f"removed {stale}, left by a write interrupted before this run")
        write_metrics(out_dir / "metrics.jsonl", state.history)  # without work a kill undid: it is redone
    step_model: torch.nn.Module = model
    if dist_info.enabled:
        for buffer in (frontend.normalizer.mean, frontend.normalizer.std):
            torch.distributed.broadcast(buffer, src=0)
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Run(
        config, dist_info, device, vocabulary, frontend, model, step_model, optimizer, scheduler, scaler,
        train_loader, train_sampler, valid_loader, TensorBoard(out_dir / "tensorboard") if dist_info.is_main else None,
        out_dir, state, trained_before=state.train_seconds,
        phone_labels=phone_labels,
    )


def training_phone_labels(
    utterances: Sequence[TrainingItem], config: ExperimentConfig, out_dir: Path, dist_info: Distributed, say=log
) -> list[torch.Tensor] | None:
    """espeak-ng phone labels for each training utterance, or None when the phone loss is off.
    Rank 0 keeps espeak-ng's output in out_dir/phones.json for resumed runs."""
    if config.model.phone_ctc_weight <= 0:
        return None
    texts = [part.text for item in utterances for part in parts_of(item)]
    by_text = phonemize(texts, out_dir / "phones.json" if dist_info.is_main else None)
    labels = [torch.tensor([phone for part in parts_of(item) for phone in by_text[part.text]], dtype=torch.long)
              for item in utterances]
    phones, chars = sum(len(l) for l in labels), sum(len(t) for t in texts)
    say(f"phone CTC (weight {config.model.phone_ctc_weight}, layer {config.model.phone_ctc_layer}): "
        f"{len(by_text)} transcripts phonemised with espeak-ng, {phones / max(1, chars):.2f} phones per character")
    return labels


def resume(path, config, frontend, model, optimizer, scheduler, scaler, device, state: TrainState, say=log) -> None:
    """Load last.pt into the model, optimiser, schedule, RNGs and ``state`` (in place: the schedule reads it)."""
    saved = read_checkpoint(path, map_location=device)
    saved_config = to_dict(saved.config)
    check_resumable(path, saved_config, config)  # before the state dict's size mismatch would
    if saved_config != to_dict(config):
        say(f"note: {path} was written with different training settings; resuming with the new ones")
    if saved.train_state is None:
        raise CheckpointError(f"{path} holds no training state (a copy of best.pt?); it cannot be resumed: "
                              "remove it to train from scratch, or choose a new train.out_dir")
    model.load_state_dict(saved.model_state)
    frontend.normalizer.mean.copy_(saved.normalizer_mean)
    frontend.normalizer.std.copy_(saved.normalizer_std)
    train_state = saved.train_state
    optimizer.load_state_dict(train_state["optimizer"])
    scheduler.load_state_dict(train_state["scheduler"])
    scaler.load_state_dict(train_state["scaler"])
    restore_rng_states(train_state["rng"])
    for name, value in train_state["position"].items():
        setattr(state, name, value)
    say(f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step}")


def out_of_budget(run: Run) -> bool:
    """The step or time budget is spent (decided together by all ranks)."""
    if run.config.train.max_steps and run.state.step >= run.config.train.max_steps:
        return True
    if not run.config.train.max_minutes:
        return False
    return all_ranks_agree(run.train_seconds() / 60 >= run.config.train.max_minutes, run.dist, run.device)


def rank_step_seed(seed: int, rank: int, step: int) -> int:
    """A seed for one rank's step, distinct for every (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def train_one_epoch(run: Run) -> EpochStats:
    """Train on the rest of the current epoch, or until the budget runs out."""
    config, state = run.config, run.state
    run.train_sampler.set_epoch(state.epoch, state.batch_in_epoch)
    stats = EpochStats()
    window_audio, window_start = 0.0, time.monotonic()
    progress = tqdm(run.train_loader, desc=f"epoch {state.epoch + 1}/{config.train.epochs}", leave=False,
                    dynamic_ncols=True, disable=None if run.dist.is_main else True)
    waiting_since = time.monotonic()
    for batch in progress:
        adjust_threads(config.train.threads)  # the cores other processes leave free (asr/utils/threads.py)
        # train_step ends with loss.item(), which waits for the device: the time from there
        # to the next batch is time the device sat idle for want of data.
        stats.data_seconds += time.monotonic() - waiting_since
        # Every file of a rank's batch was unreadable (each one reported): all ranks skip this
        # step together, or the others would wait for that rank in the gradients' all-reduce.
        if all_ranks_agree(not batch.indices, run.dist, run.device):
            state.batch_in_epoch += run.dist.world_size
            waiting_since = time.monotonic()
            continue
        if run.dist.enabled and not run.dist.is_main:
            # Each rank draws its own dropout and SpecAugment. Rank 0's stream is saved in
            # last.pt; the others are reseeded per step, so a resumed run draws as an unbroken one.
            torch.manual_seed(rank_step_seed(config.train.seed, run.dist.rank, state.step))
        loss = train_step(batch, run.frontend, run.step_model, run.optimizer, run.scheduler, run.scaler, config,
                          run.device, run.phone_labels)
        state.step += 1
        state.batch_in_epoch += run.dist.world_size  # counted in global batches
        audio = batch.waveform_lengths.sum().item() / config.features.sample_rate * run.dist.world_size
        stats.loss_sum, stats.steps, stats.audio_seconds = stats.loss_sum + loss, stats.steps + 1, stats.audio_seconds + audio
        window_audio += audio
        if run.board is not None and state.step % config.train.log_every_steps == 0:
            speed = window_audio / max(1e-9, time.monotonic() - window_start)
            lr = run.scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{speed:.0f}")
            run.board.scalars({"train/loss": loss, "train/lr": lr, "train/audio_seconds_per_second": speed}, state.step)
            window_audio, window_start = 0.0, time.monotonic()
        stats.stopped = out_of_budget(run)
        every = config.train.checkpoint_every_steps
        if run.dist.is_main and (stats.stopped or (every and state.step % every == 0)):
            save_last(run, {})
        if stats.stopped:
            break
        waiting_since = time.monotonic()
    progress.close()
    run.train_sampler.set_epoch(state.epoch, state.batch_in_epoch)
    if len(run.train_sampler) == 0:  # nothing left of this epoch (also when stopped on its last batch)
        state.epoch += 1
        state.batch_in_epoch = 0
    return stats


def end_of_epoch(run: Run, stats: EpochStats) -> None:
    """Rank 0 validates, logs and writes checkpoints; the other ranks wait for it."""
    config, state = run.config, run.state
    state.train_seconds = run.train_seconds()
    if run.dist.is_main:
        metrics: dict[str, Any] = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": stats.mean_loss,  # mean over this session's batches of the epoch
            "train_minutes": state.train_seconds / 60,
            "audio_seconds_per_second": stats.audio_seconds_per_second,
            "data_wait_fraction": stats.data_wait_fraction,
        }
        if state.batch_in_epoch:  # stopped inside an epoch: its record will come again, complete, on resume
            metrics.update(partial=True, batch_in_epoch=state.batch_in_epoch)
        final = stats.stopped or state.epoch >= config.train.epochs
        if run.valid_loader is not None and (final or state.epoch % config.train.valid_every_epochs == 0):
            metrics.update(validate(run.valid_loader, run.frontend, run.model, GreedyDecoder(run.vocabulary),
                                    config, run.device))
            run.board.scalars({f"valid/{k[6:]}": metrics[k] for k in ("valid_loss", "valid_wer", "valid_cer")},
                              state.step)
            # A run stopped by max_minutes/max_steps inside an epoch reports that partial epoch.
            label = str(state.epoch) if state.batch_in_epoch == 0 else (
                f"{state.epoch + 1} (stopped after {state.batch_in_epoch} batches)")
            train_loss = "-" if metrics["train_loss"] is None else f"{metrics['train_loss']:.3f}"
            log(f"epoch {label}: train loss {train_loss}, valid loss "
                f"{metrics['valid_loss']:.3f}, WER {100 * metrics['valid_wer']:.2f} %, CER "
                f"{100 * metrics['valid_cer']:.2f} % ({metrics['train_minutes']:.1f} min, "
                f"{metrics['audio_seconds_per_second']:.0f} audio-s/s, waiting for data "
                f"{100 * metrics['data_wait_fraction']:.0f} % of the time)")
            state.history.append(json_safe(metrics))
            write_metrics(run.out_dir / "metrics.jsonl", state.history)
            if metrics["valid_cer"] < state.best_cer:
                state.best_cer = metrics["valid_cer"]
                save_checkpoint(run.out_dir / "best.pt", checkpoint_payload(run, metrics))
        elif run.valid_loader is None:
            save_checkpoint(run.out_dir / "best.pt", checkpoint_payload(run, metrics))
        fit_schedule_to_budget(run, stats)
        run.schedule_mark = time.monotonic()
        save_last(run, metrics)
        keep = config.train.keep_epoch_checkpoints
        if keep and state.batch_in_epoch == 0:
            save_checkpoint(run.out_dir / f"epoch-{state.epoch}.pt", checkpoint_payload(run, metrics))
            (run.out_dir / f"epoch-{state.epoch - keep}.pt").unlink(missing_ok=True)
    if run.dist.enabled:
        if config.optim.schedule == "budget":  # every rank's scheduler follows rank 0's measurement
            steps = torch.tensor([state.schedule_steps], device=run.device)
            torch.distributed.broadcast(steps, src=0)
            state.schedule_steps = int(steps.item())
        torch.distributed.barrier()


def fit_schedule_to_budget(run: Run, stats: EpochStats) -> None:
    """Fit the cosine decay to end as train.max_minutes runs out (optim.schedule: budget), or
    with train.epochs if the machine gets through those sooner.

    Measured once per session, over its second whole epoch (the first one also decodes and
    caches the audio): the wall time per step of that epoch's cycle (validation and
    checkpoints included) sets how many steps the rest of the budget holds. Saved in
    last.pt; a resumed run keeps that length until it has measured again, since it may run
    on another machine or with a new train.max_minutes.
    """
    config, state = run.config, run.state
    if config.optim.schedule != "budget" or run.schedule_fitted or run.schedule_mark is None:
        return
    if stats.stopped or state.batch_in_epoch != 0 or stats.steps == 0:
        return
    seconds_per_step = (time.monotonic() - run.schedule_mark) / stats.steps
    steps_left = (60 * config.train.max_minutes - run.train_seconds()) / seconds_per_step
    # A machine fast enough to finish train.epochs within the budget anneals by the epochs.
    state.schedule_steps = min(state.step + max(1, int(steps_left)), config.train.epochs * stats.steps)
    run.schedule_fitted = True
    log(f"schedule fitted to the {config.train.max_minutes:g}-minute budget: {seconds_per_step:.2f} s/step, "
        f"cosine decay ends at step {state.schedule_steps}")
    if state.schedule_steps <= config.optim.warmup_steps:
        log(f"warning: the budget holds only {state.schedule_steps} steps, no more than optim.warmup_steps="
            f"{config.optim.warmup_steps}: the learning rate will not decay; lower optim.warmup_steps")


@contextmanager
def disk_full_reported(out_dir: Path) -> Iterator[None]:
    """A full disk while writing checkpoints or logs becomes a DiskFullError naming the folder;
    torch hides the ENOSPC behind ``RuntimeError: ... unexpected pos``."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = no_space_left(err)
        if cause is None:
            raise
        where = f" ({cause.filename})" if cause.filename else ""
        raise DiskFullError(
            f"the disk is full: writing to {out_dir}{where} failed ({os.strerror(cause.errno)}); the checkpoints "
            "written before are intact: free some space and run the same command again to resume from last.pt"
        ) from err


def train(config: ExperimentConfig) -> TrainState:
    """Train (or resume) the run described by ``config``; returns the final state.

    Run directly it trains on one device; under ``torchrun`` every rank trains on its shard
    of each epoch's batches (DDP) and rank 0 alone validates and writes checkpoints and logs.
    """
    stopped = False
    with disk_full_reported(Path(config.train.out_dir)):
        run = build_run(config)
        run.model.train()
        while run.state.epoch < config.train.epochs and not stopped:
            stats = train_one_epoch(run)
            end_of_epoch(run, stats)
            stopped = stats.stopped
    if run.board is not None:
        run.board.close()
    if run.dist.enabled:
        torch.distributed.destroy_process_group()
    return run.state


# --------------------------------------------------------------------------- checkpoints


def checkpoint_payload(run: Run, metrics: dict[str, Any], train_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """What transcription needs: config, vocabulary, normalisation, weights (+ metrics and
    the training inputs' durations, which bound the windows long audio is cut into), and
    ``train_state`` for last.pt."""
    items = run.train_loader.dataset.utterances
    train_audio = train_audio_of([item.duration for item in items], sum(len(parts_of(item)) for item in items))
    return build_payload(run.config, run.vocabulary, run.frontend.normalizer.mean, run.frontend.normalizer.std,
                         run.model.state_dict(), metrics, train_audio, train_state)


def save_last(run: Run, metrics: dict[str, Any]) -> None:
    """last.pt: the model plus everything an exact resume needs."""
    run.state.train_seconds = run.train_seconds()
    save_checkpoint(run.out_dir / "last.pt", checkpoint_payload(run, metrics, train_state={
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "position": dict(vars(run.state)),
        "rng": rng_states(),
    }))


def main(argv: list[str] | None = None) -> int:
    """``python -m asr.training.loop CONFIG.yaml [key=value ...]`` (the same as ``asr train``)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        train(load_config(argv[0], argv[1:]))
    except AsrError as err:  # under torchrun every rank reports it; torchrun then ends the job
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
