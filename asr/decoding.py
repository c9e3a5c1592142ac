"""CTC decoding. A decoder is a callable ``(log_probs (B, T, V), lengths (B,)) -> list[Hypothesis]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from asr.text import CharVocabulary


@dataclass(frozen=True)
class Hypothesis:
    text: str  # decoded transcript
    token_ids: list[int]  # label ids after collapsing repeats and removing blanks
    frames: list[int]  # output step at which each token in token_ids starts
    score: float  # log-probability of the decoded path (greedy: the best path's score)


class Decoder(Protocol):
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]: ...


class GreedyDecoder:
    """Best path decoding: argmax per step, merge repeats, drop blanks. Batched on device."""

    def __init__(self, vocabulary: CharVocabulary) -> None:
        self.vocabulary = vocabulary

    @torch.no_grad()
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        best_scores, best_ids = log_probs.max(dim=-1)  # (B, T), (B, T)
        steps = torch.arange(log_probs.shape[1], device=log_probs.device)[None, :]  # (1, T)
        valid = steps < lengths.to(log_probs.device)[:, None]  # (B, T)
        previous = torch.nn.functional.pad(best_ids[:, :-1], (1, 0), value=-1)  # (B, T) id one step earlier
        emit = valid & (best_ids != previous) & (best_ids != self.vocabulary.blank_id)  # (B, T)
        path_scores = (best_scores * valid).sum(dim=1)  # (B,)
        hypotheses = []
        for row_ids, row_emit, score in zip(best_ids.cpu(), emit.cpu(), path_scores.cpu().tolist()):
            frames = row_emit.nonzero().squeeze(1).tolist()
            ids = row_ids[row_emit].tolist()
            hypotheses.append(Hypothesis(self.vocabulary.decode(ids), ids, frames, score))
        return hypotheses
