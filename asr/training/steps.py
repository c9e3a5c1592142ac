"""Training's steps: the CTC loss, one optimiser step, and validation (loss, WER, CER)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from asr.config import ExperimentConfig
from asr.data.dataset import Batch
from asr.decoding.greedy import GreedyDecoder
from asr.model.features import FeatureFrontend, spec_augment, vtlp_filter_banks
from asr.model.network import AcousticModel
from asr.scoring.metrics import error_counts
from asr.utils.precision import autocast


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
    frozen: Sequence[torch.nn.Parameter] = (),  # parameters this step leaves as they are (train.freeze_layers)
) -> float:
    """One optimiser step; returns the character CTC loss (without the auxiliary phone loss)."""
    warped_banks = vtlp_filter_banks(frontend.log_mel, len(batch.waveform_lengths), config.specaugment)
    features, lengths = frontend(
        batch.waveforms.to(device, non_blocking=True), batch.waveform_lengths.to(device), warped_banks
    )
    features = spec_augment(features, lengths, config.specaugment)
    phone_weight = config.model.phone_ctc_weight
    with autocast(config.train.precision, device):
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
    for parameter in frozen:  # AdamW skips a parameter without a gradient: no update, no weight decay
        parameter.grad = None
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
        with autocast(config.train.precision, device):
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
