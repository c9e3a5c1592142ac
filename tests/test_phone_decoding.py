"""Phone decoding (asr/decoding/phone_lexicon.py, asr/lm/pronunciations.py) on hand-made phone posteriors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.decoding.beam import BeamSearchOptions
from asr.decoding.settings import DecodingSettings, load_decoding_settings
from asr.lm.lexicon import LanguageModelError, Lexicon
from asr.decoding.phone_lexicon import MAX_WORDS_PER_PRONUNCIATION, PhoneLexiconDecoder
from asr.data.phones import NUM_PHONE_LABELS, PHONE_IDS
from asr.lm.pronunciations import (arpabet_to_phones, cmudict_pronunciations, read_cmudict, read_pronunciations,
                                 write_pronunciations)
from tests.conftest import write_arpa

PRONUNCIATIONS = {"cat": ["k æ t"], "at": ["æ t"], "tack": ["t æ k"], "to": ["t uː"], "two": ["t uː"],
                  "too": ["t uː"], "a": ["ɐ", "e ɪ"]}


def lexicon(entries: dict[str, list[str]] = PRONUNCIATIONS) -> Lexicon:
    spellings = {}
    for word, variants in entries.items():
        kept = [tuple(PHONE_IDS[p] for p in v.split()) for v in variants if all(p in PHONE_IDS for p in v.split())]
        spellings[word] = tuple(kept)
    return Lexicon(spellings)


def posteriors(path: str, sure: float = 0.9) -> np.ndarray:
    """(T, P) log-probs whose best path is ``path``: phones separated by spaces, "_" for blank."""
    labels = [0 if symbol == "_" else PHONE_IDS[symbol] for symbol in path.split()]
    probs = np.full((len(labels), NUM_PHONE_LABELS), (1 - sure) / (NUM_PHONE_LABELS - 1), dtype=np.float32)
    probs[np.arange(len(labels)), labels] = sure
    return np.log(probs)


def decode(path: str, lm: str | None = None, **options) -> str:
    decoder = PhoneLexiconDecoder(lexicon(), BeamSearchOptions(beam_size=20, **options), lm=lm)
    return decoder.decode_matrix(posteriors(path))[0].text


def test_words_come_from_the_lexicon_and_need_no_boundary_between_them() -> None:
    assert decode("_ k k _ æ t _") == "cat"
    assert decode("k æ t _ æ t") == "cat at"
    assert decode("k æ t æ t") == "cat at"  # the next word may start on the step after the last phone
    assert decode("t æ k _ k æ t") == "tack cat"
    # A word ends on the first step of its last phone; a repeat of that phone is read as blank.
    assert decode("k æ t t _ æ t") == "cat at"


def test_phones_after_the_last_word_never_become_text() -> None:
    decoder = PhoneLexiconDecoder(lexicon(), BeamSearchOptions(beam_size=20))
    hypothesis = decoder.decode_matrix(posteriors("k æ t _ k æ"))[0]  # "cat", then half a word
    assert all(w.word in PRONUNCIATIONS for w in hypothesis.words) and hypothesis.text.startswith("cat")


def test_the_lm_chooses_among_homophones(tmp_path: Path) -> None:
    lm = write_arpa(tmp_path / "lm.arpa", {"to": -1.0, "two": -2.0, "too": -3.0, "cat": -2.0, "at": -2.0},
                    {"cat two": -0.1, "cat to": -3.0})
    assert decode("_ t uː _", lm=lm) == "to"
    assert decode("k æ t _ t uː", lm=lm) == "cat two"


def test_word_times_and_confidences_are_the_phones() -> None:
    decoder = PhoneLexiconDecoder(lexicon(), BeamSearchOptions(beam_size=20))
    hypothesis = decoder.decode_matrix(posteriors("_ _ k æ æ t _ _ _ æ t _", sure=0.8))[0]
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [("cat", 2, 6), ("at", 9, 11)]
    assert all(w.confidence == pytest.approx(0.8, abs=1e-4) for w in hypothesis.words)


def test_several_pronunciations_of_a_word_are_all_found() -> None:
    assert decode("_ ɐ _") == "a" and decode("_ e ɪ _") == "a"


def test_homophones_beyond_the_trie_limit_drop_the_least_likely(tmp_path: Path) -> None:
    names = [f"w{i}" for i in range(MAX_WORDS_PER_PRONUNCIATION + 2)]
    entries = {name: ["t uː"] for name in names}
    lm = write_arpa(tmp_path / "lm.arpa", {name: -1.0 - i for i, name in enumerate(names)}, {"w0 w1": -1.0})
    with pytest.warns(UserWarning, match=r"2 lexicon word\(s\) cannot be decoded: .*\(w6, w7\)"):
        decoder = PhoneLexiconDecoder(lexicon(entries), BeamSearchOptions(), lm=lm)
    assert decoder.dropped_homophones == names[-2:]
    assert decoder.decode_matrix(posteriors("t uː"))[0].text == "w0"


def test_the_matrix_must_hold_the_phone_labels() -> None:
    decoder = PhoneLexiconDecoder(lexicon(), BeamSearchOptions())
    with pytest.raises(ValueError, match="phone labels"):
        decoder.decode_matrix(np.zeros((3, 29), dtype=np.float32))
    assert decoder.decode_matrix(np.zeros((0, NUM_PHONE_LABELS), dtype=np.float32))[0].text == ""


def test_pronunciation_files_round_trip_and_skip_unknown_phones(tmp_path: Path) -> None:
    path = tmp_path / "lexicon.txt"
    write_pronunciations(path, lexicon())
    assert read_pronunciations(path).spellings == lexicon().spellings
    path.write_text("hello\th ə l oʊ\nhello\th ə l oʊ\nbad\tb æ d\nweird\tQ Q\n")  # oʊ is two phones here
    read = read_pronunciations(path)
    assert "weird" in read.skipped and read.spellings["bad"] == ((PHONE_IDS["b"], PHONE_IDS["æ"], PHONE_IDS["d"]),)
    (tmp_path / "empty.txt").write_text("x\tQ\n")
    with pytest.raises(LanguageModelError, match="no usable words in pronunciation lexicon"):
        read_pronunciations(tmp_path / "empty.txt")
    # A missing or undecodable file is a LanguageModelError too: decoding falls back to greedy on it.
    (tmp_path / "latin1.txt").write_bytes("café\tk a f e\n".encode("latin-1"))
    for name in ("missing.txt", "latin1.txt"):
        with pytest.raises(LanguageModelError, match=f"{name}: cannot read pronunciation lexicon"):
            read_pronunciations(tmp_path / name)


def test_n_best_hypotheses_are_each_lexicon_words() -> None:
    decoder = PhoneLexiconDecoder(lexicon(), BeamSearchOptions(beam_size=20, nbest=3))
    hypotheses = decoder.decode_matrix(posteriors("k æ t _ æ t", sure=0.6))
    assert len(hypotheses) > 1 and hypotheses[0].text == "cat at"
    assert all(w.word in PRONUNCIATIONS for h in hypotheses for w in h.words)


def phone_recognizer():
    from asr.config import ExperimentConfig, FeatureConfig, ModelConfig
    from asr.model.features import FeatureFrontend
    from asr.model.network import AcousticModel
    from asr.data.text import CharVocabulary
    from asr.inference.recognizer import SpeechRecognizer

    torch.manual_seed(0)
    vocabulary = CharVocabulary.english()
    model_config = ModelConfig(num_layers=2, hidden_size=16, dropout=0.0, phone_ctc_weight=0.5, phone_ctc_layer=1)
    config = ExperimentConfig(features=FeatureConfig(n_mels=20), model=model_config)
    model = AcousticModel(model_config, 20, len(vocabulary)).eval()
    with torch.no_grad():
        model.phone_output.bias[0] -= 3.0  # a random model mostly says blank: let it say phones
    return SpeechRecognizer(config, vocabulary, FeatureFrontend(config.features).eval(), model, torch.device("cpu"))


def test_a_recognizer_decodes_its_phone_head_into_lexicon_words(tmp_path: Path) -> None:
    from tests.conftest import tone_audio

    recognizer = phone_recognizer()
    write_pronunciations(tmp_path / "lexicon.txt", lexicon())
    settings = DecodingSettings("beam", None, str(tmp_path / "lexicon.txt"), BeamSearchOptions(beam_size=10), "phones")
    assert recognizer.use_decoding(settings) is None and recognizer.units == "phones"
    assert "over phones" in recognizer.decoding.describe()
    result = recognizer.transcribe_samples(tone_audio("bad cab"))
    assert result.ok and result.words and set(result.text.split()) <= set(PRONUNCIATIONS)
    assert all(0 <= w.start <= w.end <= result.duration for w in result.words)
    assert not recognizer.streams  # the phone head is not streamed


def test_phone_decoding_falls_back_to_greedy_without_a_phone_head_or_lexicon(tmp_path: Path) -> None:
    recognizer = phone_recognizer()
    recognizer.model.phone_output = None
    write_pronunciations(tmp_path / "lexicon.txt", lexicon())
    problem = recognizer.use_decoding(DecodingSettings("beam", None, str(tmp_path / "lexicon.txt"), units="phones"))
    assert "phone head" in problem and recognizer.units == "chars" and recognizer.decoding.method == "greedy"
    problem = phone_recognizer().use_decoding(DecodingSettings("beam", units="phones"))
    assert "pronunciation lexicon" in problem


def test_cmudict_maps_to_the_espeak_phones_with_weak_forms_and_flaps() -> None:
    def phones(arpabet: str) -> list[str]:
        return [" ".join(r) for r in arpabet_to_phones(arpabet.split())]

    assert phones("T AY M") == ["t a ɪ m"]  # diphthongs are two phones, as espeak-ng writes them
    assert phones("JH AH1 JH") == ["d ʒ ʌ d ʒ"]  # stress digits decide AH
    assert phones("HH AH0 L OW1") == ["h ə l o ʊ"]
    assert phones("DH AH") == ["ð ʌ", "ð ə"]  # no digits: a first-syllable AH gets both readings
    assert phones("AH") == ["ʌ", "ɐ"]  # "a": espeak-ng's weak form at the start of a word
    assert phones("W AO T ER") == ["w ɔː t ɚ", "w ɔː ɾ ɚ"]  # a final ER is weak; the flap kept beside t
    assert phones("B AA D IY") == ["b ɑː d i", "b ɑː d iː"]  # espeak-ng flaps t, never d
    assert arpabet_to_phones(["K", "QQ"]) is None
    # espeak-ng en-us's own reading (asr lm pronounce's) is among the readings of frequent words.
    espeak = {"HH AH L OW": "h ə l o ʊ", "AH DH ER": "ʌ ð ɚ", "AH B AW T": "ɐ b a ʊ t", "M AO R": "m oː ɹ",
              "L AO NG": "l ɔ ŋ", "HH ER IY": "h ɜː ɹ i", "P AA R T IY": "p ɑː ɹ ɾ i", "S IH T IY": "s ɪ ɾ i",
              "S T AA R T IH D": "s t ɑː ɹ ɾ ᵻ d", "P ER HH AE P S": "p ɚ h æ p s", "AH G R IY": "ɐ ɡ ɹ iː",
              "L IH T AH L": "l ɪ ɾ ə l", "M AH SH IY N": "m ə ʃ iː n"}
    for arpabet, ipa in espeak.items():
        assert ipa in phones(arpabet), (arpabet, phones(arpabet))


def test_cmudict_files_read_alternatives_and_fall_back_to_another_lexicon(tmp_path: Path) -> None:
    path = tmp_path / "cmudict.dict"
    path.write_text("cat K AE T\nread R IY D\nread(2) R EH D # past tense\nodd QQ\n;;; comment\n"
                    "HELLO\tHH AH0 L OW1\n")  # LibriSpeech's official lexicon: upper case, tab, stress digits
    dictionary = read_cmudict(path).spellings
    assert set(dictionary) == {"cat", "read", "hello"} and len(dictionary["read"]) == 2  # ɹ iː d, ɹ ɛ d
    assert dictionary["hello"] == (tuple(PHONE_IDS[p] for p in "h ə l o ʊ".split()),)
    espeak = lexicon({"cat": ["k æ t"], "dog": ["d ɑː ɡ"], "read": ["ɹ iː d"]})
    only = cmudict_pronunciations(["cat", "dog", "read", "zzz"], read_cmudict(path), espeak)
    assert only.spellings["dog"] == espeak.spellings["dog"]  # CMUdict lacks it: espeak-ng's
    assert only.spellings["read"] == tuple(dictionary["read"]) and only.skipped == ("zzz",)
    union = cmudict_pronunciations(["read"], read_cmudict(path), espeak, keep_fallback=True)
    assert set(union.spellings["read"]) == set(dictionary["read"]) | set(espeak.spellings["read"])
    (tmp_path / "empty.dict").write_text("# nothing\n")
    assert set(read_cmudict(path).skipped) == {"odd", ";;;"}
    with pytest.raises(LanguageModelError, match="empty.dict: no usable words in CMUdict"):
        read_cmudict(tmp_path / "empty.dict")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_cli_pronounces_an_lm_and_tunes_phone_decoding(tone_corpus, tmp_path: Path, capsys) -> None:
    """`asr lm pronounce` + `asr tune-lm --units phones` on a model with a phone head; the stored
    settings are then used by `asr transcribe`."""
    import json

    from asr.cli import main
    from asr.training.loop import train
    from tests.conftest import OVERFIT_TEXTS, tiny_config

    train(tiny_config(tmp_path / "run", tone_corpus, train={"epochs": 1, "max_steps": 2},
                      model={"phone_ctc_weight": 0.5, "phone_ctc_layer": 1}))
    checkpoint = tmp_path / "run" / "last.pt"
    words = sorted({w for text in OVERFIT_TEXTS for w in text.split()})
    lm = write_arpa(tmp_path / "lm.arpa", {w: -1.0 for w in words}, {f"{words[0]} {words[1]}": -0.5})
    assert main(["lm", "pronounce", lm, str(tmp_path / "lexicon.txt")]) == 0
    pronounced = read_pronunciations(tmp_path / "lexicon.txt")
    assert set(pronounced.spellings) == set(words) and (tmp_path / "lexicon.txt.espeak.json").is_file()
    cmudict = tmp_path / "cmudict.dict"
    cmudict.write_text(f"{words[0]} AH0 B AW1 T\n")  # one word from CMUdict, the others from espeak-ng
    assert main(["lm", "pronounce", lm, str(tmp_path / "both.txt"), "--source", "both", "--cmudict", str(cmudict)]) == 0
    both = read_pronunciations(tmp_path / "both.txt")
    assert set(both.spellings) == set(words) and both.spellings[words[0]][0] == tuple(
        PHONE_IDS[p] for p in "ɐ b a ʊ t".split()) and len(both.spellings[words[0]]) == 2
    assert "pronunciations by CMUdict" in capsys.readouterr().out
    assert main(["lm", "pronounce", lm, str(tmp_path / "x.txt"), "--cmudict", str(cmudict)]) != 0
    assert "--cmudict needs --source cmudict" in capsys.readouterr().err
    assert main(["tune-lm", str(checkpoint), str(tone_corpus["valid"]), "--lm", lm, "--lexicon",
                 str(tmp_path / "lexicon.txt"), "--units", "phones", "--lm-weights", "0,1", "--word-scores", "0",
                 "--beam", "8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "greedy:" not in out and "best:" in out
    # Both outputs on one grid: each tuned, the better stored (here in a file of its own).
    tune = ["tune-lm", str(checkpoint), str(tone_corpus["valid"]), "--lm", lm, "--lm-weights", "0,1",
            "--word-scores", "0", "--beam", "8", "--workers", "1", "--out", str(tmp_path / "both.yaml")]
    assert main([*tune, "--units", "chars,phones"]) == 2
    assert "needs a pronunciation lexicon" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*tune, "--units", "chars,words"])
    assert main([*tune, "--units", "chars,phones", "--phone-lexicon", str(tmp_path / "lexicon.txt"),
                 "--emissions-cache", str(tmp_path / "dev.emissions.pt")]) == 0
    out = capsys.readouterr().out
    assert out.index("== units chars") < out.index("greedy:") < out.index("== units phones")
    chosen = next(line for line in out.splitlines() if line.startswith("chosen: units")).split()[2]
    assert load_decoding_settings(tmp_path / "both.yaml").units == chosen
    # one emissions cache per output, beside each other
    assert (tmp_path / "dev.emissions.pt").is_file() and (tmp_path / "dev.emissions.phones.pt").is_file()
    audio = sorted((tone_corpus["root"] / "valid").glob("*.flac"))[0]
    assert main(["transcribe", str(checkpoint), str(audio), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "over phones" in captured.err
    record = json.loads(captured.out)
    assert set(record["text"].split()) <= set(words)
