"""Pronunciation lexicons: words as sequences of the phone head's phones (asr/phones.py).

Phone decoding (asr/phone_decoding.py) reads the phone CTC output through such a lexicon:
every word an LM knows, spelled in the phones the model was trained on. They come from
espeak-ng, the training phones' own source (each word phonemised on its own, cached), and are
written as text, one pronunciation per line (``word<TAB>phone phone ...``, IPA symbols of
:data:`asr.phones.PHONE_SYMBOLS`); a word may have several lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from asr.lm import LanguageModelError, Lexicon, _read_text_lines, arpa_vocabulary, parse_lexicon
from asr.phones import PHONE_IDS, PHONE_SYMBOLS, phonemize
from asr.text import normalize_text


def words_of(path: str | Path) -> list[str]:
    """The words of an ARPA LM (its unigrams), or of a word list / lexicon (each line's first field)."""
    path = Path(path)
    try:
        lines = _read_text_lines(path)
        head = [line for _, line in zip(range(50), lines)]
        if any(line.strip() == "\\data\\" for line in head):
            return arpa_vocabulary(path)
        return [line.split()[0] for line in [*head, *lines] if line.split()]
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read words ({err})") from err


def espeak_pronunciations(words: Iterable[str], cache: str | Path | None = None) -> Lexicon:
    """Each normalised word's espeak-ng pronunciation (``cache``: JSON of word -> IPA, kept
    between runs). Words that normalise to several or none, or get no phones, are skipped."""
    kept, skipped = [], []
    for raw in words:
        word = normalize_text(raw)
        (kept if word and " " not in word else skipped).append(word or raw)
    phones = phonemize(sorted(set(kept)), cache)
    spellings = {}
    for word in dict.fromkeys(kept):  # first-seen order: an LM's order, most useful first
        if phones[word]:
            spellings[word] = (tuple(phones[word]),)
        else:
            skipped.append(word)
    if not spellings:
        raise LanguageModelError("no word got a pronunciation from espeak-ng")
    return Lexicon(spellings, tuple(skipped))


def write_pronunciations(path: str | Path, lexicon: Lexicon) -> None:
    """One ``word<TAB>phones`` line per pronunciation, written atomically."""
    from asr.atomic import atomic_write

    with atomic_write(path) as out:
        for word, spellings in lexicon.spellings.items():
            for spelling in spellings:
                out.write(f"{word}\t{' '.join(PHONE_SYMBOLS[i - 1] for i in spelling)}\n")


def read_pronunciations(path: str | Path) -> Lexicon:
    """Read a pronunciation lexicon (:func:`write_pronunciations`'s format; any whitespace
    between fields). Lines with a phone outside the phone set are skipped and listed."""
    def spell(word: str, phones: list[str]) -> tuple[int, ...] | None:
        if not phones or any(p not in PHONE_IDS for p in phones):
            return None
        return tuple(PHONE_IDS[p] for p in phones)

    return parse_lexicon(path, "pronunciation lexicon", spell,
                         " (expected 'word<TAB>phones' lines in the phone set of asr/phones.py; `asr lm pronounce` "
                         "writes one)")
