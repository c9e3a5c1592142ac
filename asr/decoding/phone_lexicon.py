"""Phone decoding: the phone CTC head read through a pronunciation lexicon and a word LM.

With a few hours of audio a character model cannot learn English spelling, and its errors
are spellings of the right sounds. The classic low-data systems (EESEN, Kaldi) put that
knowledge in a pronunciation lexicon and a word LM built from far more text than the audio
has; this is that for asr's phone head (the auxiliary espeak-ng phone CTC of training):
flashlight-text's lexicon decoder over the phone posteriors, each word spelled in phones
(asr/lm/pronunciations.py), scored by a KenLM word LM.

The phone set has no word-boundary label: a word ends on its last phone and the next may
start on the following step. flashlight's decoder still needs a silence label, so the
emissions get one extra column of (practically) minus infinity that stands for it: passing
the blank as silence would let every blank between words count twice under log-add.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
from flashlight.lib.text.decoder import Trie

from asr.data.phones import ENGLISH_PHONES, PhoneInventory
from asr.decoding.beam import BeamSearchDecoder, BeamSearchOptions
from asr.decoding.hypothesis import Hypothesis, hypothesis_from_path
from asr.lm.lexicon import Lexicon

NEVER = -1e30  # its log-probability: finite, so that merged scores never become NaN
MAX_WORDS_PER_PRONUNCIATION = 6  # flashlight's trie keeps at most this many words on one node (kTrieMaxLabel)


class PhoneLabels:
    """The phone head's labels, in the shape :func:`asr.decoding.hypothesis.hypothesis_from_path` reads
    a vocabulary: blank 0, the phones, and the silence column as its "space"."""

    blank_id = 0

    def __init__(self, phones: PhoneInventory = ENGLISH_PHONES) -> None:
        self.tokens = ("", *phones.symbols, " ")

    def __len__(self) -> int:
        return len(self.tokens)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i != self.blank_id)


class PhoneLexiconDecoder(BeamSearchDecoder):
    """Beam search over phone posteriors (T, len(phones)): words from ``lexicon`` (phone
    spellings, :func:`asr.lm.pronunciations.read_pronunciations`), scored by the KenLM word LM
    ``lm`` (None: the lexicon alone). The call signature and outputs are the character
    decoder's: text, word spans in output steps, confidences (mean phone posterior). ``phones``:
    the model's phone labels (:func:`asr.data.phones.phone_inventory` of its language)."""

    def __init__(self, lexicon: Lexicon, options: BeamSearchOptions = BeamSearchOptions(),
                 lm: str | Path | None = None, phones: PhoneInventory = ENGLISH_PHONES) -> None:
        self.dropped_homophones: list[str] = []  # words beyond MAX_WORDS_PER_PRONUNCIATION on one pronunciation
        self.num_labels = len(phones)  # the head's outputs; the silence column is the one after them
        super().__init__(PhoneLabels(phones), options, lm=lm, lexicon=lexicon)  # type: ignore[arg-type]

    def _trie(self, words: list[str], unigrams: dict[int, float]) -> Trie:
        """Phone spellings without a word-end label; homophones share a trie node, which holds a
        handful of words: the likeliest keep it."""
        by_spelling: dict[tuple[int, ...], list[int]] = {}
        for index in sorted(unigrams, key=lambda i: -unigrams[i]):
            for spelling in self.lexicon.spellings[words[index]]:
                by_spelling.setdefault(spelling, []).append(index)
        trie = Trie(self.num_labels + 1, self.num_labels)
        for spelling, indices in by_spelling.items():
            for index in indices[:MAX_WORDS_PER_PRONUNCIATION]:
                trie.insert(list(spelling), index, unigrams[index])  # smeared over the prefixes: look-ahead only
            self.dropped_homophones += [words[i] for i in indices[MAX_WORDS_PER_PRONUNCIATION:]]
        if self.dropped_homophones:  # rare words as a rule, but a user looking for one should know
            dropped = self.dropped_homophones
            warnings.warn(f"{len(dropped)} lexicon word(s) cannot be decoded: each shares its pronunciation with "
                          f"{MAX_WORDS_PER_PRONUNCIATION} likelier words ({', '.join(dropped[:5])}"
                          f"{', ...' if len(dropped) > 5 else ''})", stacklevel=5)
        return trie

    def _lexicon_search(self) -> tuple[int, int, float, float]:
        """Phones plus the silence column; no word outside the lexicon, no score for the silence step."""
        return self.num_labels + 1, self.num_labels, -math.inf, 0.0

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]:
        """n-best hypotheses (best first) for one utterance's (T, phone labels) phone log-probs."""
        steps, labels = log_probs.shape
        if labels != self.num_labels:
            raise ValueError(f"phone decoding reads {self.num_labels} phone labels per step, not {labels}")
        if steps == 0:
            return [Hypothesis("", [], [], 0.0)]
        decoder, words = self._build()
        emissions = np.full((steps, labels + 1), NEVER, dtype=np.float32)  # (T, P + 1): the silence column
        emissions[:, :labels] = log_probs
        results = decoder.decode(emissions.ctypes.data, steps, labels + 1)
        hypotheses = []
        for result in results[: self.options.nbest]:
            path = list(result.tokens)[1: steps + 1]  # flashlight pads the path with a step at each end
            # result.words[i] > 0: a word ended on step i - 1, the first step of its last phone (0 is
            # <unk>, which is in no pronunciation; -1 is no word).
            word_ends = [(min(step - 1, steps - 1), words[w]) for step, w in enumerate(result.words) if w > 0]
            hypothesis = hypothesis_from_path(path, log_probs, self.vocabulary, result.score,  # type: ignore[arg-type]
                                              word_ends, result.lmScore if self.uses_lm else 0.0)
            kept = tuple(w for w in hypothesis.words if w.word in self.lexicon)  # not phones left after the last word
            hypotheses.append(replace(hypothesis, text=" ".join(w.word for w in kept), words=kept))
        return hypotheses or [Hypothesis("", [], [], -math.inf)]
