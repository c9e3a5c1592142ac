"""Pronunciation lexicons: words as sequences of the phone head's phones (asr/data/phones.py).

Phone decoding (asr/decoding/phone_lexicon.py) reads the phone CTC output through such a lexicon:
every word an LM knows, spelled in the phones the model was trained on. They come from
espeak-ng, the training phones' own source (each word phonemised on its own, cached, in the
voice of the model's language), and are written as text, one pronunciation per line
(``word<TAB>phone phone ...``, IPA symbols of the language's
:func:`asr.data.phones.phone_inventory`); a word may have several lines.

CMUdict (the copy inside the pocketsphinx wheel, BSD-2-clause) is the alternative: its
ARPAbet mapped to the same phones, several pronunciations per word kept. espeak-ng
pronounces a word alone in its strong form ("a" as "eɪ", "to" as "tuː") while the training
targets came from whole sentences ("ɐ", "tə"); CMUdict lists the weak forms too.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path

from asr.data.phones import PHONE_IDS, phone_inventory, phonemize
from asr.data.text import ENGLISH, normalize_text
from asr.lm.lexicon import LanguageModelError, Lexicon, arpa_vocabulary, parse_lexicon, read_text_lines
from asr.lm.sphinx import find_en_us_file
from asr.utils.atomic import atomic_write


def words_of(path: str | Path) -> list[str]:
    """The words of an ARPA LM (its unigrams), or of a word list / lexicon (each line's first field)."""
    path = Path(path)
    try:
        lines = read_text_lines(path)
        head = [line for _, line in zip(range(50), lines)]
        if any(line.strip() == "\\data\\" for line in head):
            return arpa_vocabulary(path)
        return [line.split()[0] for line in [*head, *lines] if line.split()]
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read words ({err})") from err


def espeak_pronunciations(words: Iterable[str], cache: str | Path | None = None, language: str = ENGLISH) -> Lexicon:
    """Each word's espeak-ng pronunciation in ``language`` (normalised by its rules; ``cache``:
    JSON of word -> IPA, kept between runs). Words that normalise to several or none, or get no
    phones, are skipped."""
    kept, skipped = [], []
    for raw in words:
        word = normalize_text(raw, language)
        (kept if word and " " not in word else skipped).append(word or raw)
    phones = phonemize(sorted(set(kept)), cache, language)
    spellings = {}
    for word in dict.fromkeys(kept):  # first-seen order: an LM's order, most useful first
        if phones[word]:
            spellings[word] = (tuple(phones[word]),)
        else:
            skipped.append(word)
    if not spellings:
        raise LanguageModelError("no word got a pronunciation from espeak-ng")
    return Lexicon(spellings, tuple(skipped))


def write_pronunciations(path: str | Path, lexicon: Lexicon, language: str = ENGLISH) -> None:
    """One ``word<TAB>phones`` line per pronunciation (phones of ``language``'s inventory), written atomically."""
    symbols = phone_inventory(language).symbols
    with atomic_write(path) as out:
        for word, spellings in lexicon.spellings.items():
            for spelling in spellings:
                out.write(f"{word}\t{' '.join(symbols[i - 1] for i in spelling)}\n")


def read_pronunciations(path: str | Path, language: str = ENGLISH) -> Lexicon:
    """Read a pronunciation lexicon (:func:`write_pronunciations`'s format; any whitespace
    between fields) for a model of ``language``. Lines with a phone outside its phone set are
    skipped and listed."""
    ids = phone_inventory(language).ids

    def spell(word: str, phones: list[str]) -> list[tuple[int, ...]] | None:
        if not phones or any(p not in ids for p in phones):
            return None
        return [tuple(ids[p] for p in phones)]

    return parse_lexicon(path, "pronunciation lexicon", spell,
                         " (expected 'word<TAB>phones' lines in the phone set of asr/data/phones.py for the model's "
                         "language; `asr lm pronounce` writes one)", word_of=lambda field: normalize_text(field, language))


# CMUdict's ARPAbet in espeak-ng's en-us phones (asr/data/phones.py): diphthongs and affricates are
# two phones there, as espeak-ng writes them ("aɪ" -> a ɪ, "dʒ" -> d ʒ).
ARPABET_PHONES: dict[str, tuple[str, ...]] = {
    "AA": ("ɑː",), "AE": ("æ",), "AO": ("ɔː",), "AW": ("a", "ʊ"), "AY": ("a", "ɪ"), "EH": ("ɛ",), "EY": ("e", "ɪ"),
    "IH": ("ɪ",), "OW": ("o", "ʊ"), "OY": ("ɔ", "ɪ"), "UH": ("ʊ",), "UW": ("uː",),
    "B": ("b",), "CH": ("t", "ʃ"), "D": ("d",), "DH": ("ð",), "F": ("f",), "G": ("ɡ",), "HH": ("h",),
    "JH": ("d", "ʒ"), "K": ("k",), "L": ("l",), "M": ("m",), "N": ("n",), "NG": ("ŋ",), "P": ("p",), "R": ("ɹ",),
    "S": ("s",), "SH": ("ʃ",), "T": ("t",), "TH": ("θ",), "V": ("v",), "W": ("w",), "Y": ("j",), "Z": ("z",),
    "ZH": ("ʒ",),
}
# Vowels whose espeak-ng phone depends on stress: (stressed, weak).
STRESS_VOWELS: dict[str, tuple[str, str]] = {"AH": ("ʌ", "ə"), "ER": ("ɜː", "ɚ"), "IY": ("iː", "i")}
VOWELS = frozenset({"AA", "AE", "AO", "AW", "AY", "EH", "EY", "IH", "OW", "OY", "UH", "UW", *STRESS_VOWELS})
VOWEL_PHONES = frozenset({"ɪ", "ə", "ɛ", "æ", "ʊ", "ɑː", "ɚ", "e", "i", "a", "iː", "o", "ᵻ", "ʌ", "uː", "ɜː", "ɔː",
                          "ɐ", "oː", "ɔ", "ɑ"})
WEAK_PHONES = frozenset({"ə", "ɚ", "i", "ɪ", "ᵻ"})  # vowels before which espeak-ng's en-us flaps t
MAX_READINGS = 8  # per CMUdict line: every extra reading is a homophone the search must also consider
_ALTERNATIVE = re.compile(r"\(\d+\)$")  # "read(2)": CMUdict's second pronunciation of "read"


def find_cmudict() -> Path | None:
    """CMUdict as CMU Sphinx's en-us model ships it (pocketsphinx package or Debian)."""
    return find_en_us_file("cmudict-en-us.dict")


def arpabet_to_phones(arpabet: list[str]) -> list[tuple[str, ...]] | None:
    """espeak-ng phone sequences for one CMUdict pronunciation (``["HH", "AH0", "L", "OW1"]``),
    or None if it holds a symbol outside ARPAbet.

    Where espeak-ng's vowel depends on stress, digits decide; pocketsphinx's copy has none,
    and then an uncertain vowel gets both readings: a first-syllable AH ("other" ʌ, "hello"
    ə; "ɐ" at the start of a word, as espeak-ng writes "about"), a word-final IY ("city" i,
    "agree" iː), a non-final ER ("person" ɜː, "perhaps" ɚ). espeak-ng's habits follow: ɜː ɹ
    before a vowel ("hurry"), ᵻ in a final -ed/-es, ɔ before ŋ and either ɔː or oː before ɹ,
    and a flapped t between a vowel (or ɹ) and a weak vowel ("water", "party"), both kept.
    """
    bare = [symbol.rstrip("012") for symbol in arpabet]
    if not bare or any(symbol not in ARPABET_PHONES and symbol not in STRESS_VOWELS for symbol in bare):
        return None
    vowels = [i for i, symbol in enumerate(bare) if symbol in VOWELS]
    has_digits = any(symbol != plain for symbol, plain in zip(arpabet, bare))
    after = lambda i: bare[i + 1] if i + 1 < len(bare) else ""  # noqa: E731

    def stress(i: int) -> tuple[bool, ...]:  # the readings of the stress-dependent vowel at i
        if has_digits:
            return (arpabet[i].endswith(("1", "2")),)
        if bare[i] == "AH":
            return (True, False) if i == vowels[0] else (False,)
        if len(vowels) == 1:
            return (True,)
        if bare[i] == "IY":
            return (False, True) if i == vowels[-1] and all(s in ("Z", "D") for s in bare[i + 1:]) else (True,)
        return (False,) if i == vowels[-1] else (True, False)  # ER

    choices: list[list[tuple[str, ...]]] = []
    for i, symbol in enumerate(bare):
        if symbol in STRESS_VOWELS:
            options = []
            for stressed in stress(i):
                phone = STRESS_VOWELS[symbol][0 if stressed else 1]
                phone = "ɐ" if phone == "ə" and i == 0 else phone
                options.append(("ɜː", "ɹ") if phone == "ɜː" and after(i) in VOWELS else (phone,))
            choices.append(list(dict.fromkeys(options)))
        elif symbol == "IH" and len(vowels) > 1 and i == vowels[-1] and bare[i + 1:] in (["D"], ["Z"]):
            choices.append([("ᵻ",)])
        elif symbol == "AO" and after(i) == "NG":
            choices.append([("ɔ",)])
        elif symbol == "AO" and after(i) == "R":
            choices.append([("ɔː",), ("oː",)])
        else:
            choices.append([ARPABET_PHONES[symbol]])
    readings = [tuple(p for part in parts for p in part)
                for parts in itertools.islice(itertools.product(*choices), MAX_READINGS)]
    # espeak-ng's en-us flaps t between a vowel (or ɹ) and a weak vowel ("water": w ɔː ɾ ɚ): keep both.
    flapped = [tuple("ɾ" if phone == "t" and 0 < j < len(r) - 1 and (r[j - 1] in VOWEL_PHONES or r[j - 1] == "ɹ")
                     and r[j + 1] in WEAK_PHONES else phone for j, phone in enumerate(r)) for r in readings]
    return list(dict.fromkeys(readings + flapped))[:MAX_READINGS]


def read_cmudict(path: str | Path) -> Lexicon:
    """Every word of a CMUdict file (``word PH PH ...``, ``word(2) ...`` for alternatives, ``#``
    comments; LibriSpeech's official lexicon is one too) with its readings in phone ids."""
    def spell(word: str, arpabet: list[str]) -> list[tuple[int, ...]] | None:
        readings = arpabet_to_phones(arpabet)
        return [tuple(PHONE_IDS[p] for p in reading) for reading in readings] if readings else None

    return parse_lexicon(path, "CMUdict", spell, " (expected 'word PH PH ...' lines of ARPAbet)",
                         word_of=lambda field: normalize_text(_ALTERNATIVE.sub("", field)), comment="#")


def cmudict_pronunciations(words: Iterable[str], cmudict: Lexicon, fallback: Lexicon | None = None,
                           keep_fallback: bool = False) -> Lexicon:
    """The words' readings in ``cmudict`` (:func:`read_cmudict`); a word it lacks takes
    ``fallback``'s (espeak-ng's), and with ``keep_fallback`` every word keeps those too."""
    spellings: dict[str, tuple[tuple[int, ...], ...]] = {}
    skipped = []
    for raw in dict.fromkeys(words):
        word = normalize_text(raw)
        own = list(cmudict.spellings.get(word, ()))
        other = list(fallback.spellings.get(word, ())) if fallback is not None else []
        chosen = own + [s for s in other if s not in own] if keep_fallback or not own else own
        if chosen and word not in spellings:
            spellings[word] = tuple(chosen)
        elif not chosen:
            skipped.append(raw)
    if not spellings:
        raise LanguageModelError(f"none of the {len(skipped)} words has a pronunciation in CMUdict or espeak-ng")
    return Lexicon(spellings, tuple(skipped))


def pronounce_words(words: list[str], source: str = "espeak", cmudict_file: str | Path | None = None,
                    cache: str | Path | None = None, language: str = ENGLISH) -> tuple[Lexicon, str]:
    """Pronunciations of ``words`` (``asr lm pronounce``) and a line saying where they came from.

    ``source``: espeak (espeak-ng for every word, in ``language``'s voice), cmudict (CMUdict,
    espeak-ng for the words it lacks) or both (every reading of either); ``cmudict_file``:
    pocketsphinx's copy by default. CMUdict is English: other languages take espeak-ng alone.
    """
    if cmudict_file and source == "espeak":
        raise LanguageModelError("--cmudict needs --source cmudict or --source both")
    if source != "espeak" and phone_inventory(language).shared:
        raise LanguageModelError(f"CMUdict pronounces English; for language {language} use --source espeak")
    cmudict_path = Path(cmudict_file) if cmudict_file else (find_cmudict() if source != "espeak" else None)
    if source != "espeak" and cmudict_path is None:
        raise LanguageModelError("CMUdict not found: pip install pocketsphinx (its cmudict-en-us.dict), or name the "
                                 "file with --cmudict")
    cmudict = read_cmudict(cmudict_path) if cmudict_path else None  # a bad file fails now, not after espeak-ng
    # espeak-ng pronounces every word, or with --source cmudict only those CMUdict lacks.
    to_espeak = [w for w in words if cmudict is None or source == "both" or normalize_text(w) not in cmudict.spellings]
    try:
        espeak = espeak_pronunciations(to_espeak, cache, language) if to_espeak else None
    except LanguageModelError:
        if cmudict is None:
            raise
        espeak = None  # none of CMUdict's missing words is pronounceable: CMUdict alone
    if cmudict is None:
        return espeak, "espeak-ng" if language == ENGLISH else f"espeak-ng ({language})"
    lexicon = cmudict_pronunciations(words, cmudict, espeak, keep_fallback=source == "both")
    licence = "; BSD-2-clause, Carnegie Mellon University" if cmudict_path == find_cmudict() else ""
    described = f"CMUdict ({cmudict_path}{licence})" + (
        " and espeak-ng" if source == "both" else ", espeak-ng for the words it lacks")
    return lexicon, described
