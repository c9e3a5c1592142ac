"""CTC decoding. A decoder is a callable ``(log_probs (B, T, V), lengths (B,)) -> list[Hypothesis]``.

:class:`GreedyDecoder` takes the best label per step. :class:`BeamSearchDecoder` runs
flashlight-text's beam search: lexicon-constrained with a KenLM word LM, lexicon-constrained
without an LM, or lexicon-free over characters. Both report word spans (start and end output
step, confidence) read from the CTC frame path.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import yaml

from asr.lm.lexicon import Lexicon
from asr.data.text import CharVocabulary


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: int  # first output step of the word's first character
    end: int  # one past the last output step of its last character
    confidence: float  # mean posterior of the path's label over the word's non-blank steps, in [0, 1]


@dataclass(frozen=True)
class Hypothesis:
    text: str  # decoded transcript
    token_ids: list[int]  # label ids after collapsing repeats and removing blanks
    frames: list[int]  # output step at which each token in token_ids starts
    score: float  # greedy: log-probability of the best path; beam: the search's total score
    words: tuple[WordSpan, ...] = ()  # one per word of ``text``, in order
    lm_score: float = 0.0  # beam search with an LM: the LM part of ``score`` (log10, unweighted)


class Decoder(Protocol):
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]: ...

    def decode_matrix(self, log_probs: np.ndarray) -> list[Hypothesis]: ...


# --------------------------------------------------------------------------- paths -> words


def hypothesis_from_path(
    path: Sequence[int],
    log_probs: np.ndarray,
    vocabulary: CharVocabulary,
    score: float,
    word_ends: Sequence[tuple[int, str | None]] | None = None,
    lm_score: float = 0.0,
) -> Hypothesis:
    """Build a hypothesis from a CTC frame path (one label per output step).

    ``log_probs`` is the utterance's (T, V) matrix, for word confidences. Words are split at
    the space label, or, for lexicon decoding, at ``word_ends`` = (step, word) pairs, since
    lexicon words may follow each other without a space step (word None: spell it out).
    """
    blank, space = vocabulary.blank_id, vocabulary.tokens.index(" ")
    token_ids: list[int] = []
    frames: list[int] = []
    segments: list[tuple[int, int, int]] = []  # (label, first step, one past last step)
    previous = blank
    for step, label in enumerate(path):
        if label != previous and label != blank:
            token_ids.append(label)
            frames.append(step)
            segments.append((label, step, step + 1))
        elif label == previous and label != blank:
            label_, first, _ = segments[-1]
            segments[-1] = (label_, first, step + 1)
        previous = label

    # Group character segments into words.
    groups: list[tuple[str | None, list[tuple[int, int, int]]]] = []
    if word_ends is None:
        current: list[tuple[int, int, int]] = []
        for segment in segments + [(space, len(path), len(path))]:
            if segment[0] == space:
                if current:
                    groups.append((None, current))
                current = []
            else:
                current.append(segment)
    else:
        ends = iter(sorted(word_ends, key=lambda end: end[0]))
        end_step, end_word = next(ends, (math.inf, None))
        current = []
        for segment in segments:
            if segment[0] != space:
                current.append(segment)
            if segment[2] > end_step:  # this segment reaches the step where the word ended
                if current:
                    groups.append((end_word, current))
                current = []
                end_step, end_word = next(ends, (math.inf, None))
        if current:  # characters after the last completed word (should not happen): keep them
            groups.append((None, current))

    words = []
    for word, group in groups:
        if word is None:
            word = vocabulary.decode(label for label, _, _ in group)
        start, end = group[0][1], group[-1][2]
        steps = [step for label, first, last in group for step in range(first, last)]
        labels = [label for label, first, last in group for _ in range(first, last)]
        confidence = float(np.exp(log_probs[steps, labels]).mean()) if steps else 0.0
        words.append(WordSpan(word, start, end, confidence))
    text = " ".join(w.word for w in words)
    return Hypothesis(text, token_ids, frames, score, tuple(words), lm_score)


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


# --------------------------------------------------------------------------- beam search


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


@dataclass(frozen=True)
class DecodingSettings:
    """How to decode: stored by ``asr tune-lm`` beside a checkpoint, read by transcribe/evaluate."""

    method: Literal["greedy", "beam"] = "greedy"  # best path, or flashlight beam search
    lm: str | None = None  # KenLM word LM (ARPA or binary) or character LM (ARPA); None = no LM
    lexicon: str | None = None  # lexicon or word list; None = the ARPA's words (or lexicon-free)
    beam: BeamSearchOptions = BeamSearchOptions()  # beam search options
    # chars: the character output. phones: the phone head (models trained with a phone CTC
    # loss) through ``lexicon``, a pronunciation lexicon (`asr lm pronounce`), and the word LM.
    units: Literal["chars", "phones"] = "chars"

    def describe(self, relative_to: str | Path | None = None) -> str:
        """One line for logs and model cards; ``relative_to``: name the LM and lexicon files
        relative to this folder (a model folder's own files by their names alone)."""
        if self.method == "greedy":
            return "greedy"

        def shown(file: str) -> str:
            if relative_to is None:
                return file
            try:
                return Path(file).resolve().relative_to(Path(relative_to).resolve()).as_posix()
            except ValueError:  # outside the folder: its own name is all that helps a reader elsewhere
                return Path(file).name

        b = self.beam
        parts = [f"beam {b.beam_size}" + (" over phones" if self.units == "phones" else "")]
        if self.lm:
            parts.append(f"LM {shown(self.lm)} (weight {b.lm_weight:g}, word score {b.word_score:g})")
        if self.lexicon:
            parts.append(f"lexicon {shown(self.lexicon)}")
        elif not self.lm or self.uses_char_lm():
            parts.append("lexicon-free")
        return ", ".join(parts)

    def uses_char_lm(self) -> bool:
        from asr.lm.lexicon import arpa_vocabulary, is_char_lm

        try:
            return bool(self.lm) and not self.lexicon and is_char_lm(arpa_vocabulary(self.lm))
        except ValueError:  # unreadable or binary: reported when the decoder is built
            return False


def save_decoding_settings(path: str | Path, settings: DecodingSettings) -> None:
    from asr.utils.atomic import atomic_write
    from asr.config import to_dict

    with atomic_write(path) as out:
        out.write(yaml.safe_dump(to_dict(settings), sort_keys=False))


def load_decoding_settings(path: str | Path) -> DecodingSettings:
    """Read settings; relative LM and lexicon paths are relative to the settings file (a model
    folder's decoding.yaml names the files beside it)."""
    from dataclasses import replace

    from asr.config import ConfigError, from_dict

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read decoding settings ({err})") from err
    settings = from_dict(DecodingSettings, data or {}, where=str(path))
    files = (("lm", settings.lm), ("lexicon", settings.lexicon))
    beside = {name: str(Path(path).parent / value) for name, value in files if value and not Path(value).is_absolute()}
    return replace(settings, **beside)


def build_decoder(vocabulary: CharVocabulary, settings: DecodingSettings) -> Decoder:
    """The decoder ``settings`` describe; raises LanguageModelError for unusable LM/lexicon files."""
    if settings.units == "phones":
        from asr.lm.lexicon import LanguageModelError
        from asr.decoding.phone_lexicon import PhoneLexiconDecoder
        from asr.lm.pronunciations import read_pronunciations

        if settings.method != "beam" or not settings.lexicon:
            raise LanguageModelError("phone decoding is a beam search through a pronunciation lexicon: give --lexicon "
                                     "(`asr lm pronounce` writes one for an LM's words)")
        return PhoneLexiconDecoder(read_pronunciations(settings.lexicon), settings.beam, lm=settings.lm)
    if settings.method == "greedy":
        return GreedyDecoder(vocabulary)
    from asr.lm.lexicon import read_lexicon

    lexicon = read_lexicon(settings.lexicon, vocabulary) if settings.lexicon else None
    return BeamSearchDecoder(vocabulary, settings.beam, lm=settings.lm, lexicon=lexicon)


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
        from asr.lm.lexicon import LanguageModelError, arpa_vocabulary, is_char_lm, lexicon_from_words

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
        if self._shared is not None:
            return self._shared
        from flashlight.lib.text.decoder import SmearingMode, Trie, ZeroLM
        from flashlight.lib.text.dictionary import Dictionary

        from asr.lm.lexicon import LanguageModelError

        assert self.lexicon is not None
        words = ["<unk>", *(w for w in self.lexicon.spellings if w != "<unk>")]
        word_dict = Dictionary(words)
        if self.lm is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM

            try:
                lm = KenLM(self.lm, word_dict)
            except RuntimeError as err:
                raise LanguageModelError(f"{self.lm}: KenLM cannot read this language model ({_first_line(err)})") from err
        else:
            lm = ZeroLM()
        space = self.vocabulary.tokens.index(" ")
        trie = Trie(len(self.vocabulary), space)
        start = lm.start(False)
        for index, word in enumerate(words[1:], start=1):
            _, unigram = lm.score(start, index)  # the word's LM score, smeared over its prefixes
            for spelling in self.lexicon.spellings[word]:
                # Every word ends with the space the acoustic model was trained to emit between
                # words: without it the search splits one misheard word into several short
                # lexicon words. decode_matrix appends a space step for the last word.
                trie.insert([*spelling, space], index, unigram)
        trie.smear(SmearingMode.MAX)
        self._shared = (lm, trie, words)
        return self._shared

    def _char_lm(self):
        """The character LM, its words mapped onto the acoustic model's labels (shared, loaded once)."""
        if self._shared is None:
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary

            from asr.lm.lexicon import CHAR_LM_SPACE, LanguageModelError

            # Label i is LM word tokens[i]; the blank is never scored, so its name is irrelevant.
            tokens = [CHAR_LM_SPACE if t == " " else t for t in self.vocabulary.tokens]
            try:
                self._shared = (KenLM(self.lm, Dictionary(tokens)), None, None)
            except RuntimeError as err:
                raise LanguageModelError(f"{self.lm}: KenLM cannot read this language model ({_first_line(err)})") from err
        return self._shared[0]

    def _build(self):
        if self._engine is not None:
            return self._engine
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoder,
            LexiconDecoderOptions,
            LexiconFreeDecoder,
            LexiconFreeDecoderOptions,
            ZeroLM,
        )

        o = self.options
        space = self.vocabulary.tokens.index(" ")
        beam_size_token = o.beam_size_token or len(self.vocabulary)
        if self.lexicon is None:
            lm, lm_weight, space_score = ZeroLM(), 0.0, o.sil_score
            if self.char_lm:
                lm, lm_weight, space_score = self._char_lm(), o.lm_weight, o.sil_score + o.word_score
            options = LexiconFreeDecoderOptions(o.beam_size, beam_size_token, o.beam_threshold, lm_weight,
                                                space_score, o.log_add, CriterionType.CTC)
            decoder = LexiconFreeDecoder(options, lm, space, self.vocabulary.blank_id, [])
            self._engine = (decoder, None)
            return self._engine
        lm, trie, words = self._resources()
        lm_weight = o.lm_weight if self.lm is not None else 0.0
        options = LexiconDecoderOptions(o.beam_size, beam_size_token, o.beam_threshold, lm_weight, o.word_score,
                                        o.unk_score, o.sil_score, o.log_add, CriterionType.CTC)
        decoder = LexiconDecoder(options, trie, lm, space, self.vocabulary.blank_id, 0, [], False)
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


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


# --------------------------------------------------------------------------- parallel decoding

_worker_decoder: Decoder | None = None


def _init_worker(decoder: Decoder) -> None:
    global _worker_decoder
    _worker_decoder = decoder


def _decode_in_worker(log_probs: np.ndarray) -> list[Hypothesis]:
    assert _worker_decoder is not None
    return _worker_decoder.decode_matrix(log_probs)


class ParallelDecoder:
    """Beam search over many utterances in worker processes, one utterance per core.

    The acoustic model used every core for the emissions before, so the two phases do not
    compete. Workers are forked: they run only NumPy and flashlight code (no torch ops, whose
    OpenMP pool is not fork-safe), and inherit the parent's decoder, so the LM is loaded once
    and shared copy-on-write. Use as a context manager; with ``workers <= 1`` everything runs
    in this process (any :class:`Decoder`).
    """

    def __init__(self, decoder: Decoder, workers: int) -> None:
        self.decoder = decoder
        self.workers = workers
        self._pool = None

    def __enter__(self) -> ParallelDecoder:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def decode(self, matrices: Sequence[np.ndarray]) -> list[list[Hypothesis]]:
        """n-best lists for (T, V) log-probability matrices, in input order."""
        if self.workers <= 1 or len(matrices) <= 1:
            return [self.decoder.decode_matrix(m) for m in matrices]
        if self._pool is None:
            context = multiprocessing.get_context("fork")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.decoder,))
        # Longest first, so that no worker starts a long utterance when the others are done.
        order = sorted(range(len(matrices)), key=lambda i: -len(matrices[i]))
        decoded = self._pool.map(_decode_in_worker, [matrices[i] for i in order], chunksize=2)
        results: list[list[Hypothesis]] = [[] for _ in matrices]
        for index, hypotheses in zip(order, decoded):
            results[index] = hypotheses
        return results


def decode_in_parallel(decoder: BeamSearchDecoder, matrices: Sequence[np.ndarray], workers: int) -> list[list[Hypothesis]]:
    """One-shot :class:`ParallelDecoder`."""
    with ParallelDecoder(decoder, workers) as parallel:
        return parallel.decode(matrices)
