"""Measure combining the character and phone outputs (issue 22): n-best rescoring.

For each utterance of a dev manifest, the n-best word sequences of two beam searches with
the same word LM are pooled: the character output's (``--units chars``) and the phone
head's through the pronunciation lexicon (``--units phones``). Each candidate W is then
scored by both outputs at once::

    chars_weight * ln P_ctc(spelling of W | character output)
  + phones_weight * max over W's pronunciations of ln P_ctc(pronunciation | phone head)
  + lm_weight * log10 P_LM(W) + word_score * |W|

and the best candidate is kept. The weights are searched on a grid; each dev speaker is
scored at the weights best on the others (no speaker is scored at weights chosen on its
own audio), and pooled, beside each decoder alone scored the same way.

    python scripts/joint_rescore.py MODEL DEV.jsonl --lm en-us.arpa --lexicon en-us.phones.txt

It prints one table (WER / CER % held out by speaker). A measurement, not a decoding mode:
it goes into the library only if it beats the character decoder.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from asr.data.audio import AudioError, read_audio
from asr.decoding.beam import BeamSearchOptions
from asr.decoding.settings import DecodingSettings, build_decoder
from asr.scoring.evaluate import normalized_references
from asr.lm.lexicon import arpa_vocabulary
from asr.data.manifest import read_manifest_lines
from asr.decoding.phone_lexicon import PhoneLexiconDecoder
from asr.lm.pronunciations import read_pronunciations
from asr.inference.recognizer import load_model
from asr.scoring.tune import TuningRow, held_out_score, tuning_row


@dataclass
class Candidate:
    text: str
    char_logp: float  # ln P_ctc of its spelling under the character output (-inf: cannot be spelled)
    phone_logp: float  # ln P_ctc of its likeliest pronunciation under the phone head (-inf: a word without one)
    lm: float  # the LM's log10 probability of the word sequence, </s> included
    words: int


def ctc_log_likelihood(log_probs: torch.Tensor, targets: list[list[int]]) -> float:
    """The largest ln P(target | log_probs (T, V)) over ``targets``, each summed over its CTC
    alignments; -inf when none fits."""
    if not targets:
        return -math.inf
    if not any(targets):
        return float(log_probs[:, 0].sum())
    targets = [t for t in targets if t]
    batch = len(targets)
    padded = torch.zeros(batch, max(len(t) for t in targets), dtype=torch.long)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = torch.tensor(target)
    inputs = log_probs.unsqueeze(1).expand(-1, batch, -1)  # (T, N, V): the same frames for every target
    losses = F.ctc_loss(inputs, padded, torch.full((batch,), log_probs.shape[0]), torch.tensor([len(t) for t in targets]),
                        blank=0, reduction="none", zero_infinity=False)
    return -float(losses.min())


def pronunciations(words: list[str], lexicon, cap: int = 64) -> list[list[int]]:
    """Phone-id sequences of ``words``: every combination of their readings up to ``cap``
    (then each word's first reading); [] when a word has none."""
    readings = [lexicon.spellings.get(w, ()) for w in words]
    if not all(readings):
        return []
    if math.prod(len(r) for r in readings) > cap:
        readings = [r[:1] for r in readings]
    return [[p for spelling in combination for p in spelling] for combination in itertools.product(*readings)]


def total(candidate: Candidate, weights: tuple[float, float, float, float]) -> float:
    """The rescoring score; a zero weight drops its term (0 x -inf would be NaN)."""
    char_weight, phone_weight, lm_weight, word_score = weights
    value = lm_weight * candidate.lm + word_score * candidate.words
    if char_weight:
        value += char_weight * candidate.char_logp
    if phone_weight:
        value += phone_weight * candidate.phone_logp
    return -math.inf if math.isnan(value) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("manifest")
    parser.add_argument("--lm", required=True)
    parser.add_argument("--lexicon", required=True, help="pronunciation lexicon (asr lm pronounce)")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--nbest", type=int, default=50, help="hypotheses kept from each search (then deduplicated)")
    parser.add_argument("--char-lm-weight", type=float, default=1.0, help="the character search's LM weight")
    parser.add_argument("--char-word-score", type=float, default=-1.0)
    parser.add_argument("--phone-lm-weight", type=float, default=1.0, help="the phone search's LM weight")
    parser.add_argument("--phone-word-score", type=float, default=0.0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    recognizer = load_model(args.model, decoding=DecodingSettings())
    if recognizer.model.phone_output is None:
        raise SystemExit(f"{args.model}: no phone head (model.phone_ctc_weight > 0) to combine with")
    vocabulary = recognizer.vocabulary
    reading = read_manifest_lines(args.manifest)
    references = normalized_references(reading.utterances, vocabulary)
    utterances, refs, waveforms = [], [], []
    for index, reference in zip(references.kept, references.texts):
        utterance = reading.utterances[index]
        try:
            waveforms.append(torch.from_numpy(read_audio(utterance.audio, recognizer.sample_rate).samples))
        except AudioError as err:
            print(f"skipped {args.manifest}:{reading.line_numbers[index]}: {err}")
            continue
        utterances.append(utterance)
        refs.append(reference)
    char_matrices = recognizer.emission_matrices(waveforms)  # whole utterances: candidates are scored on all of it
    recognizer.units = "phones"
    phone_matrices = recognizer.emission_matrices(waveforms)

    lexicon = read_pronunciations(args.lexicon)
    char_decoder = build_decoder(vocabulary, DecodingSettings("beam", args.lm, None, BeamSearchOptions(
        beam_size=args.beam, lm_weight=args.char_lm_weight, word_score=args.char_word_score, nbest=args.nbest)))
    phone_decoder = PhoneLexiconDecoder(lexicon, BeamSearchOptions(
        beam_size=args.beam, lm_weight=args.phone_lm_weight, word_score=args.phone_word_score, nbest=args.nbest),
        lm=args.lm)
    # The LM's own score of each candidate text (a search's lm_score can disagree with its text
    # when a phone hypothesis ends inside a word).
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    lm_words = ["<unk>", *arpa_vocabulary(args.lm)]
    lm_index = {w: i for i, w in enumerate(lm_words)}
    lm = KenLM(args.lm, Dictionary(lm_words))

    def lm_score(words: list[str]) -> float:
        state, total_score = lm.start(False), 0.0
        for word in words:
            state, score = lm.score(state, lm_index.get(word, 0))
            total_score += score
        return total_score + lm.finish(state)[1]

    pools: list[list[Candidate]] = []
    tops: list[dict[str, str]] = []  # per utterance: each search's own best text
    for chars, phones in zip(char_matrices, phone_matrices):
        if isinstance(chars, str) or isinstance(phones, str):
            raise SystemExit(f"recognition failed: {chars if isinstance(chars, str) else phones}")
        char_lp, phone_lp = torch.from_numpy(chars), torch.from_numpy(phones)
        found: dict[str, list[list[int]]] = {}  # text -> phone paths the phone search took for it
        tops.append({})
        for source, decoder, matrix in (("chars", char_decoder, chars), ("phones", phone_decoder, phones)):
            for hypothesis in decoder.decode_matrix(matrix):
                tops[-1].setdefault(source, hypothesis.text)
                paths = found.setdefault(hypothesis.text, [])
                if source == "phones" and hypothesis.token_ids not in paths:
                    paths.append(list(hypothesis.token_ids))
        pool = []
        for text, paths in found.items():
            words = text.split()
            try:
                char_logp = ctc_log_likelihood(char_lp, [vocabulary.encode(text)])
            except ValueError:  # a character the character output lacks
                char_logp = -math.inf
            phone_logp = ctc_log_likelihood(phone_lp, pronunciations(words, lexicon) + paths)
            pool.append(Candidate(text, char_logp, phone_logp, lm_score(words), len(words)))
        pools.append(pool)
    sizes = [len(p) for p in pools]
    print(f"{len(pools)} utterances; candidates per utterance: median {int(np.median(sizes))}, max {max(sizes)}")

    speakers = [u.speaker for u in utterances]

    def row(texts: list[str]) -> TuningRow:
        return tuning_row(speakers, refs, texts)

    lm_weights, word_scores = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), (-2.0, -1.0, 0.0, 1.0, 2.0)
    grids = {
        "pooled n-best, character output + LM": list(itertools.product((1.0,), (0.0,), lm_weights, word_scores)),
        "pooled n-best, phone head + LM": list(itertools.product((0.0,), (1.0,), lm_weights, word_scores)),
        "pooled n-best, both outputs + LM": list(itertools.product((1.0,), (0.25, 0.5, 1.0, 2.0), lm_weights,
                                                                   word_scores)),
    }
    print("| decoding | WER % | CER % | weights (chars, phones, LM, words) |")
    print("|---|---:|---:|---|")
    for source, name in (("chars", "character search"), ("phones", "phone search")):
        scored = row([top[source] for top in tops])
        print(f"| {name}, its best hypothesis (weights given, not held out) | {100 * scored.words.rate:.2f} | "
              f"{100 * scored.chars.rate:.2f} | the search's |")
    for name, grid in grids.items():
        rows = {}
        for weights in grid:
            rows[weights] = row([max(pool, key=lambda c: total(c, weights)).text for pool in pools])  # noqa: B023
        weights_of = {id(r): w for w, r in rows.items()}
        held = held_out_score(list(rows.values()))
        if held is None:
            raise SystemExit("held-out scoring needs two or more known speakers in the manifest")
        shown = "; ".join(f"{s}: {', '.join(f'{x:g}' for x in weights_of[id(r)])}" for s, r in held.choices.items())
        print(f"| {name}, held out by speaker | {100 * held.words.rate:.2f} | {100 * held.chars.rate:.2f} | {shown} |")


if __name__ == "__main__":
    main()
