"""Greedy (best path) CTC decoding: argmax per step, repeats merged, blanks dropped."""

from __future__ import annotations

import numpy as np
import torch

from asr.data.text import CharVocabulary
from asr.decoding.hypothesis import Hypothesis, hypothesis_from_path


class GreedyDecoder:
    """Best path decoding: argmax per step, merge repeats, drop blanks."""

    def __init__(self, vocabulary: CharVocabulary) -> None:
        self.vocabulary = vocabulary

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]:
        """The best path of one utterance's (T, V) log-probabilities (a one-element list, as
        :meth:`BeamSearchDecoder.decode_matrix` returns its n-best)."""
        path = log_probs.argmax(axis=1)  # (T,)
        score = float(np.take_along_axis(log_probs, path[:, None], axis=1).sum())
        return [hypothesis_from_path(path.tolist(), log_probs, self.vocabulary, score)]

    @torch.no_grad()
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        matrices = log_probs.float().cpu().numpy()
        return [self.decode_matrix(m[:length])[0] for m, length in zip(matrices, lengths.tolist())]
