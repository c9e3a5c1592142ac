"""CTC beam search through flashlight-text: lexicon-constrained with a KenLM word LM,
lexicon-constrained without an LM, or lexicon-free over characters (optionally with a
character LM). Word spans (start and end output step, confidence) come from the CTC frame
path, as for :class:`asr.decoding.greedy.GreedyDecoder`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flashlight.lib.text.decoder import (
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    LexiconFreeDecoder,
    LexiconFreeDecoderOptions,
    SmearingMode,
    Trie,
    ZeroLM,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from asr.data.text import CharVocabulary
from asr.decoding.hypothesis import Hypothesis, hypothesis_from_path
from asr.lm.lexicon import CHAR_LM_SPACE, LanguageModelError, Lexicon, arpa_vocabulary, is_char_lm, lexicon_from_words


@dataclass(frozen=True)
class BeamSearchOptions:
    beam_size: int = 50  # hypotheses kept after each step
    beam_size_token: int = 0  # labels tried per step, best first; 0 = the whole vocabulary
    beam_threshold: float = 25.0  # drop hypotheses scoring this much below the step's best
    lm_weight: float = 1.0  # weight of the word LM's log10 probability (0 = lexicon only)
    word_score: float = 0.0  # added per word (with a char LM: per space): > 0 favours more words, < 0 fewer
    unk_score: float = -math.inf  # score of a word spelled outside the lexicon; -inf forbids them
    sil_score: float = 0.0  # added per space step between words
    log_add: bool = True  # merge equal hypotheses by log-sum-exp (sum over CTC paths) instead of max
    nbest: int = 1  # hypotheses per utterance from decode_nbest


def load_kenlm(path: str, words: Sequence[str]):
    """flashlight's KenLM over ``words`` (index = word id); a LanguageModelError naming the file if KenLM cannot read it."""
    try:
        return KenLM(path, Dictionary(list(words)))
    except RuntimeError as err:
        raise LanguageModelError(f"{path}: KenLM cannot read this language model ({_first_line(err)})") from err


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


class BeamSearchDecoder:
    """flashlight-text CTC beam search, with the same call signature as :class:`GreedyDecoder`.

    - ``lm`` (ARPA or KenLM binary) and a lexicon: words from the lexicon only, scored by the LM;
      without a lexicon the ARPA file's own vocabulary is the lexicon (spelling = characters).
    - a character LM (an ARPA file whose words are characters and ``|``, see asr.lm.lexicon) and no
      lexicon: lexicon-free search over characters, each scored by the LM; ``word_score`` is
      added at every space.
    - a lexicon and no LM: words from the lexicon, no LM score (``lm_weight`` is ignored).
    - neither: lexicon-free beam search over characters.

    The flashlight objects are built on first use and not pickled, so a decoder can be sent
    to worker processes (:class:`ParallelDecoder`).
    """

    def __init__(
        self,
        vocabulary: CharVocabulary,
        options: BeamSearchOptions = BeamSearchOptions(),
        lm: str | Path | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        self.vocabulary = vocabulary
        self.options = options
        self.lm = str(lm) if lm is not None else None
        if self.lm is not None and not Path(self.lm).is_file():
            raise LanguageModelError(f"{self.lm}: language model file not found")
        self.char_lm = False
        if self.lm is not None and lexicon is None:
            arpa_words = arpa_vocabulary(self.lm)
            self.char_lm = is_char_lm(arpa_words)
            if not self.char_lm:
                lexicon = lexicon_from_words(arpa_words, vocabulary)
        self.lexicon = lexicon
        self._engine = None  # (flashlight decoder, word list) once built
        # (LM, trie, word list), built once, shared with with_options() copies; a char LM has no trie or words.
        self._shared = None
        if self.lm is not None:
            self._build()  # fail now, with the file's name, rather than at the first utterance

    @property
    def uses_lm(self) -> bool:
        return self.lm is not None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_engine": None, "_shared": None}

    def with_options(self, options: BeamSearchOptions) -> BeamSearchDecoder:
        """The same LM and lexicon (loaded once, shared) with other search options."""
        other = copy.copy(self)  # copy goes through __getstate__, which drops the flashlight objects ...
        other.options, other._engine, other._shared = options, None, self._shared  # ... so share them again
        return other

    def _resources(self):
        """(LM, trie, word list) for lexicon decoding: the slow part, shared by with_options()."""
        if self._shared is None:
            assert self.lexicon is not None
            words = ["<unk>", *(w for w in self.lexicon.spellings if w != "<unk>")]
            lm = load_kenlm(self.lm, words) if self.lm is not None else ZeroLM()
            start = lm.start(False)
            unigrams = {index: lm.score(start, index)[1] for index in range(1, len(words))}
            trie = self._trie(words, unigrams)
            trie.smear(SmearingMode.MAX)
            self._shared = (lm, trie, words)
        return self._shared

    def _trie(self, words: list[str], unigrams: dict[int, float]) -> Trie:
        """The lexicon's spellings, each word's unigram score smeared over its prefixes (look-ahead)."""
        space = self.vocabulary.tokens.index(" ")
        trie = Trie(len(self.vocabulary), space)
        for index, word in enumerate(words[1:], start=1):
            for spelling in self.lexicon.spellings[word]:
                # Every word ends with the space the acoustic model was trained to emit between
                # words: without it the search splits one misheard word into several short
                # lexicon words. decode_matrix appends a space step for the last word.
                trie.insert([*spelling, space], index, unigrams[index])
        return trie

    def _char_lm(self):
        """The character LM, its words mapped onto the acoustic model's labels (shared, loaded once)."""
        if self._shared is None:
            # Label i is LM word tokens[i]; the blank is never scored, so its name is irrelevant.
            tokens = [CHAR_LM_SPACE if t == " " else t for t in self.vocabulary.tokens]
            self._shared = (load_kenlm(self.lm, tokens), None, None)
        return self._shared[0]

    def _lexicon_search(self) -> tuple[int, int, float, float]:
        """(labels per step, the label words end on, unknown-word score, score per word-end step)."""
        o = self.options
        return len(self.vocabulary), self.vocabulary.tokens.index(" "), o.unk_score, o.sil_score

    def _build(self):
        if self._engine is not None:
            return self._engine
        o = self.options
        if self.lexicon is None:
            space = self.vocabulary.tokens.index(" ")
            lm, lm_weight, space_score = ZeroLM(), 0.0, o.sil_score
            if self.char_lm:
                lm, lm_weight, space_score = self._char_lm(), o.lm_weight, o.sil_score + o.word_score
            options = LexiconFreeDecoderOptions(o.beam_size, o.beam_size_token or len(self.vocabulary),
                                                o.beam_threshold, lm_weight, space_score, o.log_add, CriterionType.CTC)
            self._engine = (LexiconFreeDecoder(options, lm, space, self.vocabulary.blank_id, []), None)
            return self._engine
        lm, trie, words = self._resources()
        labels, word_end, unk_score, sil_score = self._lexicon_search()
        lm_weight = o.lm_weight if self.lm is not None else 0.0
        options = LexiconDecoderOptions(o.beam_size, o.beam_size_token or labels, o.beam_threshold, lm_weight,
                                        o.word_score, unk_score, sil_score, o.log_add, CriterionType.CTC)
        decoder = LexiconDecoder(options, trie, lm, word_end, self.vocabulary.blank_id, 0, [], False)
        self._engine = (decoder, words)
        return self._engine

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]:
        """n-best hypotheses (best first) for one utterance's (T, V) log-probabilities."""
        steps, labels = log_probs.shape
        if steps == 0:
            return [Hypothesis("", [], [], 0.0)]
        decoder, words = self._build()
        emissions = np.ascontiguousarray(log_probs, dtype=np.float32)
        if words is not None:
            # A final step that is surely a space, so that the last word can end like the others.
            space = np.full((1, labels), -1e4, dtype=np.float32)
            space[0, self.vocabulary.tokens.index(" ")] = 0.0
            emissions = np.concatenate([emissions, space])
        results = decoder.decode(emissions.ctypes.data, len(emissions), labels)
        hypotheses = []
        for result in results[: self.options.nbest]:
            path = list(result.tokens)[1 : steps + 1]  # flashlight pads the path with a step at each end
            word_ends = None
            if words is not None:
                # Index 0 is <unk>: a word spelled outside the lexicon (unk_score > -inf).
                word_ends = [(min(step - 1, steps - 1), words[w] if w > 0 else None)
                             for step, w in enumerate(result.words) if w >= 0]
            hypotheses.append(hypothesis_from_path(path, emissions[:steps], self.vocabulary, result.score, word_ends,
                                                   result.lmScore if self.uses_lm else 0.0))
        return hypotheses or [Hypothesis("", [], [], -math.inf)]

    def decode_nbest(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        matrices = log_probs.detach().float().cpu().numpy()
        return [self.decode_matrix(m[:length]) for m, length in zip(matrices, lengths.tolist())]

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        return [nbest[0] for nbest in self.decode_nbest(log_probs, lengths)]
