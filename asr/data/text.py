"""Transcript normalisation (LibriSpeech style) and the character vocabulary (blank = 0)."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

from asr.errors import AsrError

BLANK = "<blank>"
# Quote marks that mean an apostrophe inside words ("don’t").
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SPACES = re.compile(r"\s+")


class OutOfVocabularyError(AsrError, ValueError):
    """A transcript holds characters the vocabulary cannot spell."""

    def __init__(self, text: str, unknown: set[str]) -> None:
        shown = ", ".join(repr(c) for c in sorted(unknown))
        super().__init__(f"characters outside the vocabulary: {shown} in {text!r}")
        self.unknown = unknown


def normalize_text(text: str) -> str:
    """LibriSpeech-style normalisation: NFKC, lower case, punctuation stripped, one space.

    Apostrophes inside words are kept ("don't"); hyphens and other punctuation become
    spaces. Letters outside a-z (e.g. "é") are kept so that the vocabulary can report them.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    chars = []
    for char in text:
        if char == "'" or not unicodedata.category(char).startswith(("P", "S")):
            chars.append(char)
        else:
            chars.append(" ")
    text = _SPACES.sub(" ", "".join(chars)).strip()
    # Apostrophes that are quotation marks rather than part of a word are dropped.
    words = [word.strip("'") for word in text.split(" ")]
    return " ".join(word for word in words if word)


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

    @property
    def blank_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.tokens)

    def unknown_characters(self, text: str) -> set[str]:
        return {char for char in text if char not in self._ids or char == BLANK}

    def encode(self, text: str) -> list[int]:
        """Normalised text -> label ids; raises :class:`OutOfVocabularyError`."""
        unknown = self.unknown_characters(text)
        if unknown:
            raise OutOfVocabularyError(text, unknown)
        return [self._ids[char] for char in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Label ids (blanks already removed or not) -> text."""
        return "".join(self.tokens[i] for i in ids if i != self.blank_id)
