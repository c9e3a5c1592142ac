"""Lexicons and ARPA vocabularies for beam search, and the LM errors a user can cause.

The LM itself is KenLM: :mod:`asr.lm.build` runs ``lmplz`` on normalised text and
flashlight-text's KenLM reads the result during decoding. This module reads what decoding
needs besides: the lexicon that maps each word to its character spelling (or phone spellings,
:mod:`asr.lm.pronunciations`), and an ARPA file's own words.

A character LM's "words" are the acoustic model's characters, with ``|`` for the space between
words (the wav2letter convention). It scores every emitted character during lexicon-free beam
search, so it can repair spelling without ever forcing a whole (possibly wrong) word.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr.data.text import ENGLISH, CharVocabulary, normalize_text
from asr.errors import AsrError

ARPA_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})
CHAR_LM_SPACE = "|"  # how a character LM spells the space between words


class LanguageModelError(AsrError, ValueError):
    """A language model, lexicon or KenLM tool that cannot be used; names the file and why."""


# --------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class Lexicon:
    """Words and their spellings as label ids (one or more per word), in insertion order."""

    spellings: dict[str, tuple[tuple[int, ...], ...]]
    skipped: tuple[str, ...] = field(default=())  # words dropped: characters outside the vocabulary

    def __len__(self) -> int:
        return len(self.spellings)

    def __contains__(self, word: str) -> bool:
        return word in self.spellings


def lexicon_from_words(words: Iterable[str], vocabulary: CharVocabulary, language: str = ENGLISH) -> Lexicon:
    """Spell each word with its characters after the acoustic model's text normalisation
    (``language``: its data.language).

    Words that normalise to nothing, to several words, or hold characters the acoustic model
    cannot emit are skipped (and listed in ``Lexicon.skipped``).
    """
    spellings: dict[str, list[tuple[int, ...]]] = {}
    skipped: list[str] = []
    for raw in words:
        word = normalize_text(raw, language)
        if not word or " " in word or vocabulary.unknown_characters(word):
            if raw.strip():
                skipped.append(raw)
            continue
        spellings.setdefault(word, [tuple(vocabulary.encode(word))])
    return Lexicon({w: tuple(s) for w, s in spellings.items()}, tuple(skipped))


def parse_lexicon(path: str | Path, what: str, spell: Callable[[str, list[str]], Sequence[tuple[int, ...]] | None],
                  empty_hint: str = "", word_of: Callable[[str], str] = normalize_text,
                  comment: str | None = None) -> Lexicon:
    """Read ``WORD FIELD...`` lines: ``spell(word_of(WORD), fields)`` gives the word's spellings
    as token ids, or None to skip the line (listed in ``Lexicon.skipped``); text after
    ``comment`` is ignored. A word keeps each distinct spelling once: the same one twice would
    count its word twice in the search."""
    path = Path(path)
    spellings: dict[str, list[tuple[int, ...]]] = {}
    skipped: list[str] = []
    try:
        for line in read_text_lines(path):  # a generator: reading errors come from the loop
            fields = (line.split(comment, 1)[0] if comment else line).split()
            if not fields:
                continue
            word = word_of(fields[0])
            spelled = spell(word, fields[1:]) if word and " " not in word else None
            if not spelled:
                skipped.append(fields[0])
                continue
            known = spellings.setdefault(word, [])
            known += [spelling for spelling in dict.fromkeys(spelled) if spelling not in known]
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read {what} ({err})") from err
    if not spellings:
        raise LanguageModelError(f"{path}: no usable words in {what}{empty_hint}")
    return Lexicon({w: tuple(s) for w, s in spellings.items()}, tuple(skipped))


def read_lexicon(path: str | Path, vocabulary: CharVocabulary, language: str = ENGLISH) -> Lexicon:
    """Read a lexicon file: ``WORD [SPELLING...]`` per line, or a plain word list, normalised by
    ``language``'s rules (the acoustic model's data.language).

    A line whose remaining fields are all characters of the vocabulary gives that spelling
    (``hello h e l l o``); otherwise (a bare word, or a pronunciation lexicon such as
    LibriSpeech's ``HELLO HH AH0 L OW1``) the word is spelled with its own characters, which is
    what a character CTC model emits.
    """
    def spell(word: str, fields: list[str]) -> list[tuple[int, ...]] | None:
        if vocabulary.unknown_characters(word):
            return None
        letters = [normalize_text(f, language) for f in fields]
        if letters and all(len(c) == 1 and not vocabulary.unknown_characters(c) for c in letters):
            return [tuple(vocabulary.encode("".join(letters)))]
        return [tuple(vocabulary.encode(word))]

    return parse_lexicon(path, "lexicon", spell, word_of=lambda field: normalize_text(field, language))


def arpa_vocabulary(path: str | Path) -> list[str]:
    """The words of an ARPA model (its unigrams), without <s>, </s> and <unk>."""
    path = Path(path)
    words: list[str] = []
    try:
        in_unigrams = False
        for line in read_text_lines(path):
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                fields = line.split("\t") if "\t" in line else line.split()
                if len(fields) >= 2 and fields[1] not in ARPA_SPECIAL_WORDS:
                    words.append(fields[1])
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read ARPA language model ({err})") from err
    if not words:
        raise LanguageModelError(f"{path}: not an ARPA file (no \\1-grams: section); a KenLM binary "
                                 "model needs --lexicon, as its word list cannot be read back")
    return words


def is_char_lm(arpa_words: Sequence[str]) -> bool:
    """Whether an ARPA vocabulary is a character LM's: single characters and the ``|`` space."""
    return CHAR_LM_SPACE in arpa_words and all(len(word) == 1 for word in arpa_words)


def char_lm_sentence(sentence: str) -> str:
    """A normalised sentence as a character LM's tokens: ``"the cat"`` -> ``"t h e | c a t"``."""
    return " ".join(CHAR_LM_SPACE if char == " " else char for char in sentence)


def read_text_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        yield from stream


# --------------------------------------------------------------------------- building an LM


