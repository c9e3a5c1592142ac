import math

import torch

from asr.decoding.greedy import GreedyDecoder
from asr.data.text import CharVocabulary

VOCAB = CharVocabulary([" ", "a", "b"])  # ids: 0 blank, 1 space, 2 a, 3 b


def posteriors(best_ids: list[int], num_labels: int = 4, confidence: float = 0.9) -> torch.Tensor:
    """(T, V) log-probabilities whose argmax per frame is ``best_ids``."""
    rest = (1 - confidence) / (num_labels - 1)
    probs = torch.full((len(best_ids), num_labels), rest)
    probs[torch.arange(len(best_ids)), torch.tensor(best_ids)] = confidence
    return probs.log()


def test_greedy_collapses_repeats_and_drops_blanks():
    # a a _ a b b _ space b  ->  "aab b"
    frames = posteriors([2, 2, 0, 2, 3, 3, 0, 1, 3])
    (hyp,) = GreedyDecoder(VOCAB)(frames[None], torch.tensor([9]))
    assert hyp.text == "aab b"
    assert hyp.token_ids == [2, 2, 3, 1, 3]
    assert hyp.frames == [0, 3, 4, 7, 8]
    assert math.isclose(hyp.score, 9 * math.log(0.9), rel_tol=1e-5)


def test_greedy_batch_respects_lengths():
    long = posteriors([2, 0, 3, 0, 2, 2])
    short = posteriors([3, 3, 0, 0, 2, 2])  # only the first 3 frames are valid: "b"
    batch = torch.stack([long, short])  # (B, T, V)
    hyps = GreedyDecoder(VOCAB)(batch, torch.tensor([6, 3]))
    assert [h.text for h in hyps] == ["aba", "b"]
    assert hyps[1].frames == [0]


def test_greedy_all_blank_is_empty():
    (hyp,) = GreedyDecoder(VOCAB)(posteriors([0, 0, 0])[None], torch.tensor([3]))
    assert hyp.text == "" and hyp.token_ids == [] and hyp.frames == []
