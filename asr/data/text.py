"""Transcript normalisation per language and the character vocabulary (blank = 0).

English keeps the LibriSpeech-style rules the project started with (its results and checkpoints
depend on them). Every other language gets the same rules with what the language needs
(:func:`text_rules`): apostrophes only where it writes them inside words, no spaces put in for
punctuation where it writes no spaces between words, I/ı and İ/i as the two letters they are in
Turkish. Digits stay as written: spelling numbers out needs each language's number grammar,
so a corpus that writes digits trains digit tokens (or, when rare, drops those utterances).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from asr.config import primary_language
from asr.errors import AsrError

BLANK = "<blank>"
ENGLISH = "en"
# Quote marks that mean an apostrophe inside words ("don’t").
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SPACES = re.compile(r"\s+")
# Text that normalisation returns unchanged, as `asr prepare` writes it: the quick way past it.
_PLAIN_WITH_APOSTROPHES = re.compile(r"[a-z0-9]+(?:'+[a-z0-9]+)*(?: [a-z0-9]+(?:'+[a-z0-9]+)*)*")
_PLAIN = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)*")
# Written but never spoken: the zero-width joiners (U+200C/U+200D) are spelling in Persian and the
# Indic scripts and stay; other format characters (soft hyphen, direction marks, BOM) and the
# Arabic tatweel (a stretched line) go.
_KEPT_FORMAT = frozenset("\u200c\u200d")
_UNSPOKEN = frozenset("\u0640")


@dataclass(frozen=True)
class TextRules:
    """What normalisation keeps of one language's transcripts."""

    apostrophes: bool = False  # apostrophes inside words are spelling ("don't", "l'homme", "mae'r"); else a space
    spaced: bool = True  # words are separated by spaces; False: punctuation is deleted rather than made a space
    dotted_i: bool = False  # I/ı and İ/i are pairs of their own (Turkish, Azerbaijani), not I/i
    format_characters: bool = False  # keep format characters as they are (English's rules always did)


# Languages that write apostrophes inside words (elision, glottal stops, clitics); ISO 639 codes.
APOSTROPHE_LANGUAGES = frozenset({
    "af", "be", "br", "ca", "cy", "de", "fr", "ga", "gd", "gn", "it", "lb", "lg", "mt", "nl", "oc", "rw", "sw",
    "tr", "uk", "uz",
})
# Scripts written without spaces between words: Chinese, Japanese, Thai, Lao, Burmese, Khmer, Tibetan, Dzongkha.
UNSPACED_LANGUAGES = frozenset({"zh", "cmn", "yue", "ja", "th", "lo", "my", "km", "bo", "dz"})
DOTTED_I_LANGUAGES = frozenset({"tr", "az"})
_DOTTED_I = str.maketrans({"I": "ı", "İ": "i"})
ENGLISH_RULES = TextRules(apostrophes=True, format_characters=True)


def _unspoken(char: str, category: str) -> bool:
    return char in _UNSPOKEN or (category in ("Cc", "Cf") and char not in _KEPT_FORMAT)


def text_rules(language: str = ENGLISH) -> TextRules:
    """The normalisation rules of ``language`` (an ISO 639 code or a tag such as "pt-BR");
    a language with no entry here gets the common rules (spaced, no apostrophes)."""
    code = primary_language(language)
    if code == ENGLISH:
        return ENGLISH_RULES
    return TextRules(apostrophes=code in APOSTROPHE_LANGUAGES, spaced=code not in UNSPACED_LANGUAGES,
                     dotted_i=code in DOTTED_I_LANGUAGES)


class OutOfVocabularyError(AsrError, ValueError):
    """A transcript holds characters the vocabulary cannot spell."""

    def __init__(self, text: str, unknown: set[str]) -> None:
        shown = ", ".join(repr(c) for c in sorted(unknown))
        super().__init__(f"characters outside the vocabulary: {shown} in {text!r}")
        self.unknown = unknown


def normalize_text(text: str, language: str = ENGLISH) -> str:
    """Normalise a transcript with ``language``'s rules (:func:`text_rules`): NFKC, lower case,
    punctuation and symbols stripped, one space between words.

    NFKC turns compatibility forms (ligatures, full-width letters) into plain letters and
    composes letters with their diacritics; letters of every script are kept, so that the
    vocabulary can spell or report them. Where the language writes apostrophes inside words
    they stay ("don't"), and apostrophes at a word's edge, quotation marks, are dropped;
    hyphens and other punctuation become spaces, or nothing in a script without spaces.
    """
    rules = text_rules(language)
    if (_PLAIN_WITH_APOSTROPHES if rules.apostrophes else _PLAIN).fullmatch(text):
        return text
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    if rules.dotted_i:
        text = text.translate(_DOTTED_I)
    text = text.lower()
    gap = " " if rules.spaced else ""
    chars = []
    for char in text:
        category = unicodedata.category(char)
        if char == "'":
            chars.append(char if rules.apostrophes else gap)
        elif category.startswith(("P", "S")):
            chars.append(gap)
        elif rules.format_characters or char.isspace() or not _unspoken(char, category):
            chars.append(char)
    text = _SPACES.sub(" ", "".join(chars)).strip()
    # Apostrophes that are quotation marks rather than part of a word are dropped.
    words = [word.strip("'") for word in text.split(" ")]
    text = " ".join(word for word in words if word)
    # English as it always was; elsewhere a deleted mark may have let a letter meet its accent.
    return text if rules is ENGLISH_RULES else unicodedata.normalize("NFKC", text)


class CharVocabulary:
    """Characters to CTC label ids; id 0 is the CTC blank."""

    def __init__(self, characters: Sequence[str]) -> None:
        if len(set(characters)) != len(characters) or BLANK in characters:
            raise ValueError("vocabulary characters must be unique and must not contain the blank")
        self.tokens: list[str] = [BLANK, *characters]
        self._ids = {token: index for index, token in enumerate(self.tokens)}

    @classmethod
    def english(cls) -> CharVocabulary:
        """Space, apostrophe and a-z: everything a normalised LibriSpeech transcript holds."""
        return cls([" ", "'", *string.ascii_lowercase])

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 1) -> CharVocabulary:
        """The characters seen at least ``min_count`` times: the space first (the decoders split
        words at it, even in a script that writes none), the rest in code-point order, so that
        English transcripts give :meth:`english`'s order."""
        kept = sorted(char for char, count in counts.items() if count >= min_count and char != " ")
        return cls([" ", *kept])

    @property
    def blank_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.tokens)

    def unknown_characters(self, text: str) -> set[str]:
        return {char for char in set(text) if char not in self._ids or char == BLANK}  # set(): C-speed over long text

    def encode(self, text: str) -> list[int]:
        """Normalised text -> label ids; raises :class:`OutOfVocabularyError`."""
        unknown = self.unknown_characters(text)
        if unknown:
            raise OutOfVocabularyError(text, unknown)
        return [self._ids[char] for char in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Label ids (blanks already removed or not) -> text."""
        return "".join(self.tokens[i] for i in ids if i != self.blank_id)
