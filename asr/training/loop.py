"""Training: a readable loop built from small functions.

    asr train CONFIG.yaml [section.key=value ...]
    torchrun --nproc_per_node N -m asr train CONFIG.yaml [section.key=value ...]   (data-parallel)

Writes ``last.pt`` (resumable: optimiser, scheduler, position and RNG states) and ``best.pt``
(lowest validation CER) into ``train.out_dir``, a ``metrics.jsonl`` line per validation, and
TensorBoard scalars when tensorboard is installed. Re-running the same command resumes
from ``last.pt`` and reaches the same weights as an uninterrupted run.

The loop reads top to bottom: :func:`train` builds the run (:func:`build_run`), then trains
an epoch (:func:`train_one_epoch`) and validates and checkpoints it (:func:`end_of_epoch`)
until the epochs or the step or time budget run out. The step and validation are in
``steps.py``, torchrun's set-up in ``distributed.py``, last.pt in ``resume.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from asr.config import ConfigError, ExperimentConfig
from asr.data.phones import phone_inventory
from asr.decoding.greedy import GreedyDecoder
from asr.errors import DiskFullError, no_space_left
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.storage.checkpoint import save_checkpoint
from asr.training.distributed import (
    all_ranks_agree,
    barrier,
    broadcast_int,
    cleanup_distributed,
    data_parallel,
    rank_step_seed,
    setup_distributed,
)
from asr.training.init import frozen_parameters, read_init_model, start_from
from asr.training.loaders import build_data, estimate_normalizer
from asr.training.logs import TensorBoard, log, write_metrics
from asr.training.resume import checkpoint_payload, read_last, resume, save_last, seed_everything
from asr.training.run import EpochStats, Run, TrainState
from asr.training.schedule import fit_schedule_to_budget, make_scheduler
from asr.training.steps import train_step, validate
from asr.utils.atomic import json_safe, remove_stale_temporaries
from asr.utils.precision import usable_precision
from asr.utils.threads import adjust_threads


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
    cleanup_distributed(run.dist)
    return run.state


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
    # After seeding: on the CPU, bf16's one-time probe (a tiny LSTM) draws from torch's RNG.
    _, precision_problem = usable_precision(config.train.precision, device)
    if precision_problem:
        say(f"warning: train.precision: {precision_problem}")

    last_path = out_dir / "last.pt"
    saved = read_last(last_path, config, device)  # refused before any work when it holds another model
    # A new run may start from a trained model; one that resumes continues from last.pt alone.
    source = read_init_model(config) if saved is None and config.train.init_from else None
    # A resumed run keeps its vocabulary (the data may have changed); a new one takes data.vocabulary's.
    data = build_data(config, saved.vocabulary if saved else None, out_dir, dist_info, device, say)
    vocabulary = data.vocabulary
    frontend = FeatureFrontend(config.features).to(device)
    model = AcousticModel(config.model, config.features.n_mels, len(vocabulary),
                          len(phone_inventory(config.data.language))).to(device)
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, device {device}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
    )
    # The schedule depends on the epochs alone (max_steps/max_minutes interrupt a run, and a
    # resumed run must follow the same learning-rate curve as an uninterrupted one), or on
    # the time budget once fit_schedule_to_budget has measured this machine.
    state = TrainState()
    epoch_steps = config.train.epochs * len(data.train_sampler)
    scheduler = make_scheduler(optimizer, config, total_steps=lambda: (
        config.optim.schedule == "budget" and state.schedule_steps) or epoch_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")

    if saved is not None:
        resume(last_path, saved, config, frontend, model, optimizer, scheduler, scaler, state, say)
    elif source is not None:  # on every rank: all start from the same weights
        start_from(model, frontend, source, vocabulary, config, say)
    keeps_statistics = source is not None and config.train.init_normalization == "keep"
    if saved is None and not keeps_statistics and dist_info.is_main:
        estimate_normalizer(frontend, data.train_loader.dataset, config, device)
    if dist_info.is_main:  # after resume() accepted out_dir: a refused run leaves another run's files alone
        for stale in remove_stale_temporaries(out_dir):  # checkpoints, phones.json, ... of killed runs
            say(f"removed {stale}, left by a write interrupted before this run")
        write_metrics(out_dir / "metrics.jsonl", state.history)  # without work a kill undid: it is redone
    step_model = data_parallel(model, frontend, dist_info, device)
    return Run(
        config, dist_info, device, vocabulary, frontend, model, step_model, optimizer, scheduler, scaler,
        data.train_loader, data.train_sampler, data.valid_loader,
        TensorBoard(out_dir / "tensorboard") if dist_info.is_main else None,
        out_dir, state, trained_before=state.train_seconds,
        phone_labels=data.phone_labels, frozen=frozen_parameters(model, config.train.freeze_layers),
    )


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
        frozen = run.frozen if state.step < config.train.freeze_steps else ()
        loss = train_step(batch, run.frontend, run.step_model, run.optimizer, run.scheduler, run.scaler, config,
                          run.device, run.phone_labels, frozen)
        state.step += 1
        state.batch_in_epoch += run.dist.world_size  # counted in global batches
        audio = batch.waveform_lengths.sum().item() / config.features.sample_rate * run.dist.world_size
        stats.loss_sum += loss
        stats.steps += 1
        stats.audio_seconds += audio
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


def out_of_budget(run: Run) -> bool:
    """The step or time budget is spent (decided together by all ranks)."""
    if run.config.train.max_steps and run.state.step >= run.config.train.max_steps:
        return True
    if not run.config.train.max_minutes:
        return False
    return all_ranks_agree(run.train_seconds() / 60 >= run.config.train.max_minutes, run.dist, run.device)


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
            validate_and_log(run, metrics)
        elif run.valid_loader is None:
            save_checkpoint(run.out_dir / "best.pt", checkpoint_payload(run, metrics))
        fit_schedule_to_budget(run, stats)
        run.schedule_mark = time.monotonic()
        save_last(run, metrics)
        keep = config.train.keep_epoch_checkpoints
        if keep and state.batch_in_epoch == 0:
            save_checkpoint(run.out_dir / f"epoch-{state.epoch}.pt", checkpoint_payload(run, metrics))
            (run.out_dir / f"epoch-{state.epoch - keep}.pt").unlink(missing_ok=True)
    if run.dist.enabled and config.optim.schedule == "budget":  # every rank's scheduler follows rank 0's measurement
        state.schedule_steps = broadcast_int(state.schedule_steps, run.dist, run.device)
    barrier(run.dist)


def validate_and_log(run: Run, metrics: dict[str, Any]) -> None:
    """Rank 0: validate, add the figures to ``metrics``, log them, and keep best.pt if the CER is the lowest yet."""
    config, state = run.config, run.state
    metrics.update(validate(run.valid_loader, run.frontend, run.model, GreedyDecoder(run.vocabulary), config,
                            run.device))
    run.board.scalars({f"valid/{k[6:]}": metrics[k] for k in ("valid_loss", "valid_wer", "valid_cer")}, state.step)
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
