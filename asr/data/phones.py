"""Phone transcripts from espeak-ng, the targets of the auxiliary phone CTC loss in training.

A character model has to learn English spelling from the few hours of speech it is given.
espeak-ng's pronunciation dictionary and letter-to-sound rules turn each transcript into
phones, so a lower recurrent layer can be taught the sounds with a target that does not
depend on spelling, and the layers above map sounds to letters (hierarchical multitask
CTC: Fernandez et al. 2007, Sanabria & Metze 2018). Training only: a trained model
transcribes without espeak-ng.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

from asr.errors import AsrError

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
_MARKS = str.maketrans("", "", "ˈˌ\u0329")  # primary and secondary stress, syllabic mark
_PHONE = re.compile(r"\S\u02d0?")  # one symbol, with its length mark if it has one
_CHUNK = 500  # transcripts per espeak-ng call


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
        raise PhonemizerError(f"espeak-ng failed (exit {result.returncode}): {result.stderr.strip()}")
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
    """IPA -> phone label ids (1..NUM_PHONE_LABELS-1): stress and word boundaries dropped."""
    return [PHONE_IDS[p] for p in _PHONE.findall(ipa.translate(_MARKS)) if p in PHONE_IDS]


def phonemize(texts: Sequence[str], cache: str | Path | None = None, voice: str = ESPEAK_VOICE) -> dict[str, list[int]]:
    """Phone label ids for every distinct transcript. ``cache`` (JSON, text -> IPA) keeps the
    espeak-ng output between runs, so a resumed run does not call it again."""
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
        known.update(zip(missing, espeak_ipa(missing, voice)))
        if cache is not None:
            from asr.utils.atomic import atomic_write

            with atomic_write(cache) as out:
                out.write(json.dumps(known, ensure_ascii=False, indent=0))
    return {text: phone_ids(known[text]) for text in set(texts)}
