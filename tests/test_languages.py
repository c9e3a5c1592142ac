"""Any language: text rules per language, the vocabulary from the data, data.language in the
config, and the phone inventory and espeak-ng voice of each language (training, decoding and
`asr lm` with them: tests/test_train_languages.py)."""

import re
import shutil
import string
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.config import ConfigError, DataConfig, ExperimentConfig, from_dict, to_dict
from asr.data.phones import (
    ENGLISH_PHONES,
    NUM_PHONE_LABELS,
    PHONE_IDS,
    PHONE_SYMBOLS,
    SHARED_PHONES,
    espeak_voice,
    phone_inventory,
    phonemize,
)
from asr.data.text import CharVocabulary, normalize_text, text_rules

# --------------------------------------------------------------------------- text rules


def legacy_english(text: str) -> str:
    """normalize_text as it was before languages (commit 529ec9b): English must stay exactly this."""
    text = unicodedata.normalize("NFKC", text).translate(
        str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})).lower()
    chars = [c if c == "'" or not unicodedata.category(c).startswith(("P", "S")) else " " for c in text]
    text = re.sub(r"\s+", " ", "".join(chars)).strip()
    return " ".join(word for word in (w.strip("'") for w in text.split(" ")) if word)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_english_rules_are_unchanged(text):
    assert normalize_text(text) == normalize_text(text, "en") == normalize_text(text, "en-GB") == legacy_english(text)


@pytest.mark.parametrize("language, raw, expected", [
    # English as ever: apostrophes inside words, format characters left for the vocabulary to refuse.
    ("en", "Don\u2019t stop \u2014 it's 5 o'clock, 'Sam'!", "don't stop it's 5 o'clock sam"),
    ("en", "co\u00adoperate", "co\u00adoperate"),
    # Spanish: accents and ñ kept, ¿¡ out, no apostrophes inside words, digits as written.
    ("es", "¿Qué tal, señor Muñoz? ¡Él está aquí! O'Donnell tiene 3 gatos.",
     "qué tal señor muñoz él está aquí o donnell tiene 3 gatos"),
    # German: ß stays ß (lower case, not case folding), umlauts kept, elided "geht's".
    ("de", "Die Straße ist schön – GRÜN, nicht grau. Wie geht’s? STRASSE",
     "die straße ist schön grün nicht grau wie geht's strasse"),
    # French: elision apostrophes kept, guillemets out, a decomposed é composed (NFKC).
    ("fr", "« Aujourd’hui, l’homme mange-t-il ? » Il a e\u0301te\u0301 là.",
     "aujourd'hui l'homme mange t il il a été là"),
    # Welsh: ŵ and ŷ kept, "mae'r" keeps its apostrophe, quotation marks go.
    ("cy", "Mae’r ddraig goch yn hedfan – ŵyr a ŷd! ‘Dyna’ fe", "mae'r ddraig goch yn hedfan ŵyr a ŷd dyna fe"),
    # Russian: Cyrillic lower-cased, ё kept, «» and the dash out, no apostrophes.
    ("ru", "Привет, Мир! Ёлка — это «ель». Don't", "привет мир ёлка это ель don t"),
    # Chinese: no spaces between words, so punctuation is deleted rather than made a space.
    ("zh", "你好，世界！我喜欢学习。", "你好世界我喜欢学习"),
    ("zh-CN", "“你好”，Python 3", "你好python 3"),
    # Turkish: I/ı and İ/i are letters of their own; suffixes after a name's apostrophe.
    ("tr", "İSTANBUL'da IŞIK ılık", "istanbul'da ışık ılık"),
    # Persian: the zero-width non-joiner is spelling and stays; the right-to-left mark goes.
    ("fa", "می\u200cخواهم\u200f، کتاب\u200cها", "می\u200cخواهم کتاب\u200cها"),
    # Arabic: vowel marks kept, the tatweel (a stretched line) goes.
    ("ar", "مرحبـــا؟ العَرَبِيَّة", "مرحبا العَرَبِيَّة"),
])
def test_normalisation_per_language(language, raw, expected):
    assert normalize_text(raw, language) == expected


@pytest.mark.parametrize("language", ["es", "de", "fr", "cy", "ru", "zh", "tr", "fa", "ja"])
@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_every_language_normalises_idempotently(language, text):
    normal = normalize_text(text, language)
    assert normalize_text(normal, language) == normal  # references and hypotheses meet in one form
    assert normal == normal.strip() and "  " not in normal
    assert not any(unicodedata.category(c).startswith(("P", "S")) for c in normal.replace("'", ""))


def test_rules_follow_the_language_code_not_its_region():
    assert text_rules("pt-BR") == text_rules("pt") and text_rules("sv_SE") == text_rules("sv")
    assert text_rules("fr").apostrophes and not text_rules("es").apostrophes
    assert not text_rules("ja").spaced and text_rules("sw").apostrophes  # Swahili: "ng'ombe"
    assert text_rules("xx") == text_rules("es")  # unlisted languages: the common rules


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_from_english_counts_is_the_english_vocabulary():
    counts = {char: 5 for char in " '" + string.ascii_lowercase}
    assert CharVocabulary.from_counts(counts, 2).tokens == CharVocabulary.english().tokens


def test_vocabulary_from_counts_drops_rare_characters_and_always_has_a_space():
    vocabulary = CharVocabulary.from_counts({"ñ": 3, "a": 9, "é": 2, "ë": 1, "你": 4}, min_count=2)
    assert vocabulary.tokens == ["<blank>", " ", "a", "é", "ñ", "你"]
    assert vocabulary.unknown_characters("zoë") == {"z", "o", "ë"}


# --------------------------------------------------------------------------- config


def test_language_and_vocabulary_settings():
    assert DataConfig().language == "en" and not DataConfig().vocabulary_from_data
    assert DataConfig(language="es").vocabulary_from_data  # auto: from the data for any other language
    assert DataConfig(language="en", vocabulary="from_data").vocabulary_from_data
    assert DataConfig(language="zh-CN").vocabulary_from_data
    with pytest.raises(ConfigError, match="data.language=es needs data.vocabulary=from_data"):
        DataConfig(language="es", vocabulary="english")
    for bad in ("", "spanish!", "e", "es/ES"):
        with pytest.raises(ConfigError, match="data.language must be an ISO 639"):
            DataConfig(language=bad)
    with pytest.raises(ConfigError, match="min_token_count"):
        DataConfig(min_token_count=0)


def test_a_config_saved_before_languages_reads_as_english():
    saved = to_dict(ExperimentConfig())
    for key in ("language", "vocabulary", "min_token_count"):
        del saved["data"][key]
    config = from_dict(ExperimentConfig, saved)
    assert config.data.language == "en" and not config.data.vocabulary_from_data


# --------------------------------------------------------------------------- phones


def test_espeak_voices_of_language_codes():
    assert espeak_voice("en") == espeak_voice("en-GB") == "en-us"  # the English inventory's own voice
    assert [espeak_voice(code) for code in ("es", "de", "fr", "cy", "ru")] == ["es", "de", "fr", "cy", "ru"]
    assert espeak_voice("zh-CN") == espeak_voice("zh") == "cmn" and espeak_voice("zh-HK") == "yue"
    assert espeak_voice("pt-BR") == "pt-br" and espeak_voice("pt") == "pt" and espeak_voice("sv-SE") == "sv"


def test_english_keeps_its_phones_and_other_languages_share_one_inventory():
    assert phone_inventory("en") is ENGLISH_PHONES and len(ENGLISH_PHONES) == NUM_PHONE_LABELS
    assert phone_inventory("es") is phone_inventory("ru") is SHARED_PHONES
    assert SHARED_PHONES.symbols[: len(PHONE_SYMBOLS)] == PHONE_SYMBOLS  # English phones keep their ids
    assert len(set(SHARED_PHONES.symbols)) == len(SHARED_PHONES.symbols) == len(SHARED_PHONES) - 1
    # Frozen: every non-English phone head has this many outputs; another size is a checkpoint layout change.
    assert len(SHARED_PHONES) == 167
    # English: long vowels one phone, other marks dropped, as before.
    assert ENGLISH_PHONES.phones("hˈɑːt pʲɛ̃") == ["h", "ɑː", "t", "p", "ɛ"]


@pytest.mark.parametrize("ipa, phones", [
    ("el nˈiɲo", ["e", "l", "n", "i", "ɲ", "o"]),  # es: stress dropped
    ("œ̃ bˈɔ̃", ["œ", "\u0303", "b", "ɔ", "\u0303"]),  # fr: the nasal mark a label after its vowel
    ("prʲivʲˈet", ["p", "r", "ʲ", "i", "v", "ʲ", "e", "t"]),  # ru: palatalisation
    ("ʃtɾˈɑːsə", ["ʃ", "t", "ɾ", "ɑ", "ː", "s", "ə"]),  # de: length a label of its own
    ("kˌo̞nnitɕˈihä", ["k", "o", "\u031e", "n", "n", "i", "t", "ɕ", "i", "h", "a", "\u0308"]),  # ja: ä is a + ̈
    ("t̪ˈo1j", ["t", "\u032a", "o", "1", "j"]),  # vi: tone numbers
    ("vjˈø (en)wˈɪski(fr) o", ["v", "j", "ø", "w", "ɪ", "s", "k", "i", "o"]),  # a switch of voice is no phone
    ("s.ˈi.5 t͡s", ["s", "i", "5", "t", "s"]),  # syllable breaks and tie bars neither
])
def test_the_shared_inventory_splits_espeak_ipa_into_its_symbols(ipa, phones):
    assert SHARED_PHONES.phones(ipa) == phones
    assert SHARED_PHONES.phone_ids(ipa) == [SHARED_PHONES.symbols.index(p) + 1 for p in phones]


def test_phonemize_speaks_the_language_with_its_voice(tmp_path, monkeypatch):
    from asr.data import phones

    voices = []

    def fake_espeak(lines, voice):
        voices.append(voice)
        return ["ˈaɲo" if line == "año" else "hˈɛloʊ" for line in lines]

    monkeypatch.setattr(phones, "_espeak", fake_espeak)
    labels = phonemize(["año"], tmp_path / "es.json", language="es")
    assert voices == ["es"] and labels["año"] == [SHARED_PHONES.ids[p] for p in ("a", "ɲ", "o")]
    assert phonemize(["hello"], language="en")["hello"] == [PHONE_IDS[p] for p in ("h", "ɛ", "l", "o", "ʊ")]
    assert voices == ["es", "en-us"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
@pytest.mark.parametrize("language, text, expected", [
    ("es", "niño", "ɲ"), ("de", "schön", "ø"), ("fr", "bon", "\u0303"), ("cy", "ddraig", "ð"), ("ru", "мир", "ʲ"),
])
def test_espeak_speaks_each_language_into_the_shared_inventory(language, text, expected):
    ids = phonemize([text], language=language)[text]
    assert ids and all(0 < i < len(SHARED_PHONES) for i in ids)
    assert SHARED_PHONES.ids[expected] in ids


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_a_language_espeak_has_no_voice_for_is_refused_with_a_way_out():
    from asr.data.phones import PhonemizerError

    with pytest.raises(PhonemizerError, match="voice qq.*phone_ctc_weight=0"):
        phonemize(["hello"], language="qq")
