"""Phone transcripts from espeak-ng, the targets of the auxiliary phone CTC loss in training.

A character model has to learn English spelling from the few hours of speech it is given.
espeak-ng's pronunciation dictionary and letter-to-sound rules turn each transcript into
phones, so a lower recurrent layer can be taught the sounds with a target that does not
depend on spelling, and the layers above map sounds to letters (hierarchical multitask
CTC: Fernandez et al. 2007, Sanabria & Metze 2018). Training only: a trained model
transcribes without espeak-ng. espeak-ng speaks data.language (:func:`espeak_voice`); English
has its own phone set, every other language one IPA inventory they share (:func:`phone_inventory`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.config import primary_language
from asr.errors import AsrError
from asr.utils.atomic import atomic_write

ESPEAK_VOICE = "en-us"
# espeak-ng's en-us IPA, one token per phone (a long vowel keeps its length mark), ordered
# by frequency over the 49 k most frequent English words of wordfreq; the handful of rarer
# symbols it can emit (nasalisation, palatalisation, ç, ɬ) are dropped. Id 0 is the blank.
PHONE_SYMBOLS: tuple[str, ...] = (
    "ɪ", "n", "s", "ɹ", "t", "ə", "l", "d", "k", "ɛ", "m", "z", "p", "æ", "ʊ", "ɑː", "ɚ", "b",
    "e", "i", "a", "iː", "ʃ", "f", "o", "ᵻ", "ŋ", "v", "ɡ", "ʌ", "uː", "ɾ", "ʒ", "w", "h", "ɜː",
    "j", "ɔː", "ɐ", "oː", "θ", "ɔ", "ð", "ʔ", "x", "r", "ɑ",
)
PHONE_IDS = {phone: index + 1 for index, phone in enumerate(PHONE_SYMBOLS)}
NUM_PHONE_LABELS = len(PHONE_SYMBOLS) + 1  # with the blank
# Every other language has one IPA inventory, shared, so that a phone is the same label in every
# language (and in a model fine-tuned from another language's): the English symbols first, with
# their ids, then the rest of the IPA chart's letters, the modifier letters and diacritics as
# labels of their own (a length, palatalisation or nasal mark follows its symbol), the tone
# letters, and the digits espeak-ng writes tones with (cmn, yue, vi). Every non-English phone
# head has this many outputs: changing the list is a checkpoint layout change.
_IPA_CHART = (
    "iyɨʉɯuɪʏʊeøɘɵɤoəɛœɜɞʌɔæɐaɶɑɒɚᵻɝ"  # vowels
    "pbtdʈɖcɟkɡqɢʔmɱnɳɲŋɴʙrʀⱱɾɽɸβfvθðszʃʒʂʐçʝxɣχʁħʕhɦɬɮʋɹɻjɰlɭʎʟʍwɥʜʢʡɕʑɺɧɫʘǀǃǂǁɓɗʄɠʛ"  # consonants
    "ːˑʰʱʲʷˠˤⁿˡʼ˞"  # length, aspiration, palatalisation, labialisation, ..., ejective, rhotic hook
    "˥˦˧˨˩0123456789"  # tone letters and espeak-ng's tone numbers
    # combining: nasal, centralised, extra-short, voiceless (2), voiced, breathy, creaky, dental, apical,
    # laminal, advanced, retracted, raised, lowered, ATR, RTR, more and less rounded, non-syllabic,
    # velarised, no audible release
    "\u0303\u0308\u0306\u030a\u0325\u032c\u0324\u0330\u032a\u033a\u033b\u031f\u0320\u031d\u031e\u0318\u0319"
    "\u0339\u031c\u032f\u0334\u031a"
)
SHARED_PHONE_SYMBOLS: tuple[str, ...] = PHONE_SYMBOLS + tuple(s for s in _IPA_CHART if s not in PHONE_SYMBOLS)
_MARKS = str.maketrans("", "", "ˈˌ\u0329")  # primary and secondary stress, syllabic mark
# Also syllable breaks and tie bars, which are no sounds, and the "(en)" espeak-ng writes where it
# switches to another language's voice for a word.
_SHARED_MARKS = str.maketrans({"ˈ": None, "ˌ": None, "\u0329": None, ".": None, "\u0361": None, "\u035c": None,
                               "g": "ɡ"})
_SWITCH = re.compile(r"\([a-z]{2,3}(-[a-z0-9]+)*\)")
_PHONE = re.compile(r"\S\u02d0?")  # one symbol, with its length mark if it has one
_CHUNK = 500  # transcripts per espeak-ng call
# espeak-ng voices whose names are not the language's ISO 639-1 code (espeak-ng --voices).
ESPEAK_VOICES = {"en": ESPEAK_VOICE, "zh": "cmn", "zh-hk": "yue", "nn": "nb", "no": "nb", "pt-br": "pt-br",
                 "es-419": "es-419", "fr-be": "fr-be", "fr-ch": "fr-ch"}


def espeak_voice(language: str) -> str:
    """espeak-ng's voice for a language code or tag (data.language): English is always en-us,
    the voice its phone inventory was made from; a tag espeak-ng has a voice for keeps its
    region (pt-BR); else its language code, which most voices are named by (es, de, cy, ru)."""
    tag = language.strip().lower().replace("_", "-")
    return ESPEAK_VOICES.get(tag) or ESPEAK_VOICES.get(primary_language(tag)) or primary_language(tag)


@dataclass(frozen=True)
class PhoneInventory:
    """The phone head's labels for one language: id 0 the blank, then ``symbols``."""

    symbols: tuple[str, ...]
    shared: bool  # the all-languages inventory (each IPA character a label) or English's own

    @property
    def ids(self) -> dict[str, int]:
        return PHONE_IDS if not self.shared else _SHARED_IDS

    def __len__(self) -> int:
        return len(self.symbols) + 1

    def phones(self, ipa: str) -> list[str]:
        """espeak-ng's IPA -> the inventory's phones; stress, word boundaries and symbols outside it dropped."""
        if not self.shared:
            return [p for p in _PHONE.findall(ipa.translate(_MARKS)) if p in PHONE_IDS]
        phones = []
        for char in _SWITCH.sub("", ipa).translate(_SHARED_MARKS):
            # A letter with a diacritic in one character ("ä") is the letter and the diacritic.
            parts = (char,) if char in _SHARED_IDS else unicodedata.normalize("NFD", char)
            phones += [part for part in parts if part in _SHARED_IDS]
        return phones

    def phone_ids(self, ipa: str) -> list[int]:
        return [self.ids[phone] for phone in self.phones(ipa)]


_SHARED_IDS = {phone: index + 1 for index, phone in enumerate(SHARED_PHONE_SYMBOLS)}
ENGLISH_PHONES = PhoneInventory(PHONE_SYMBOLS, shared=False)
SHARED_PHONES = PhoneInventory(SHARED_PHONE_SYMBOLS, shared=True)


def phone_inventory(language: str = "en") -> PhoneInventory:
    """The phone head's labels for data.language: English's own, or the inventory all others share."""
    return ENGLISH_PHONES if primary_language(language) == "en" else SHARED_PHONES


class PhonemizerError(AsrError):
    """espeak-ng is missing or failed."""


def _espeak(lines: Sequence[str], voice: str) -> list[str]:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise PhonemizerError(
            "model.phone_ctc_weight > 0 needs espeak-ng to phonemise the training transcripts: "
            "apt-get install espeak-ng (or bash scripts/ensure_espeak.sh)"
        )
    result = subprocess.run(
        [binary, "-q", "--ipa", "-v", voice], input="\n".join(lines) + "\n",
        capture_output=True, text=True, encoding="utf-8",
    )
    if result.returncode != 0:
        hint = "" if voice == ESPEAK_VOICE else (
            f" (voice {voice}, from data.language; `espeak-ng --voices` lists those installed: without one, train "
            "with model.phone_ctc_weight=0)")
        raise PhonemizerError(f"espeak-ng failed (exit {result.returncode}): {result.stderr.strip()}{hint}")
    return result.stdout.splitlines()


def espeak_ipa(texts: Sequence[str], voice: str = ESPEAK_VOICE) -> list[str]:
    """The IPA of each transcript: one espeak-ng call per chunk of lines, or per line where
    espeak-ng split or merged lines (it reads a line as one clause, but that is not promised)."""
    ipa: list[str] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start : start + _CHUNK])
        lines = _espeak(chunk, voice)
        if len(lines) != len(chunk):
            lines = [" ".join(_espeak([text], voice)) for text in chunk]
        ipa += [line.strip() for line in lines]
    return ipa


def phone_ids(ipa: str) -> list[int]:
    """English IPA -> phone label ids (1..NUM_PHONE_LABELS-1): stress and word boundaries dropped."""
    return ENGLISH_PHONES.phone_ids(ipa)


def phonemize(texts: Sequence[str], cache: str | Path | None = None, language: str = "en") -> dict[str, list[int]]:
    """Phone label ids (of :func:`phone_inventory`) for every distinct transcript, spoken by
    ``language``'s espeak-ng voice. ``cache`` (JSON, text -> IPA) keeps the espeak-ng output
    between runs, so a resumed run does not call it again."""
    known: dict[str, str] = {}
    cache = Path(cache) if cache is not None else None
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            known = None
            reason = str(err)
        else:
            reason = "not a mapping of transcripts to IPA"
        if not isinstance(known, dict) or not all(isinstance(v, str) for v in known.values()):
            # Only a cache: a damaged one costs an espeak-ng run, never the training run.
            warnings.warn(f"{cache}: unusable phone cache ({reason}); phonemising again", stacklevel=2)
            known = {}
    missing = sorted(set(texts) - set(known))
    if missing:
        known.update(zip(missing, espeak_ipa(missing, espeak_voice(language))))
        if cache is not None:
            with atomic_write(cache) as out:
                out.write(json.dumps(known, ensure_ascii=False, indent=0))
    inventory = phone_inventory(language)
    return {text: inventory.phone_ids(known[text]) for text in set(texts)}
