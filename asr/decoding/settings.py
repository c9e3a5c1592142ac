"""How to decode, as stored beside a model: the frozen settings, their YAML file, and the decoder they build."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

from asr.config import ConfigError, from_dict, to_dict
from asr.data.phones import phone_inventory
from asr.data.text import CharVocabulary
from asr.decoding.beam import BeamSearchDecoder, BeamSearchOptions
from asr.decoding.greedy import GreedyDecoder
from asr.decoding.hypothesis import Decoder
from asr.decoding.phone_lexicon import PhoneLexiconDecoder
from asr.lm.lexicon import LanguageModelError, arpa_vocabulary, is_char_lm, read_lexicon
from asr.lm.pronunciations import read_pronunciations
from asr.utils.atomic import atomic_write


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
        try:
            return bool(self.lm) and not self.lexicon and is_char_lm(arpa_vocabulary(self.lm))
        except ValueError:  # unreadable or binary: reported when the decoder is built
            return False


def save_decoding_settings(path: str | Path, settings: DecodingSettings) -> None:
    with atomic_write(path) as out:
        out.write(yaml.safe_dump(to_dict(settings), sort_keys=False))


def load_decoding_settings(path: str | Path) -> DecodingSettings:
    """Read settings; relative LM and lexicon paths are relative to the settings file (a model
    folder's decoding.yaml names the files beside it)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read decoding settings ({err})") from err
    settings = from_dict(DecodingSettings, data or {}, where=str(path))
    files = (("lm", settings.lm), ("lexicon", settings.lexicon))
    beside = {name: str(Path(path).parent / value) for name, value in files if value and not Path(value).is_absolute()}
    return replace(settings, **beside)


def build_decoder(vocabulary: CharVocabulary, settings: DecodingSettings, language: str = "en") -> Decoder:
    """The decoder ``settings`` describe for a model of ``language`` (its data.language: the
    phone head's labels); raises LanguageModelError for unusable LM/lexicon files."""
    if settings.units == "phones":
        if settings.method != "beam" or not settings.lexicon:
            raise LanguageModelError("phone decoding is a beam search through a pronunciation lexicon: give --lexicon "
                                     "(`asr lm pronounce` writes one for an LM's words)")
        phones = phone_inventory(language)
        return PhoneLexiconDecoder(read_pronunciations(settings.lexicon, language), settings.beam, lm=settings.lm,
                                   phones=phones)
    if settings.method == "greedy":
        return GreedyDecoder(vocabulary)
    lexicon = read_lexicon(settings.lexicon, vocabulary, language) if settings.lexicon else None
    return BeamSearchDecoder(vocabulary, settings.beam, lm=settings.lm, lexicon=lexicon)
