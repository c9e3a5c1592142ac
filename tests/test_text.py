import pytest

from asr.data.text import CharVocabulary, OutOfVocabularyError, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HELLO, World!", "hello world"),
        ("Don\u2019t stop \u2014 go-kart", "don't stop go kart"),
        ("'quoted' text's", "quoted text's"),
        ("\uff26\uff35\uff2c\uff2c width", "full width"),  # NFKC folds full-width letters
        ("  many\t spaces \n", "many spaces"),
        ("A.B.C.", "a b c"),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_vocabulary_round_trip():
    vocab = CharVocabulary.english()
    text = "it's a test of the vocabulary"
    ids = vocab.encode(text)
    assert vocab.blank_id == 0 and 0 not in ids
    assert len(vocab) == 29
    assert vocab.decode(ids) == text


def test_unknown_characters_are_reported_not_dropped():
    vocab = CharVocabulary.english()
    text = normalize_text("Café No. 5")
    assert text == "café no 5"
    with pytest.raises(OutOfVocabularyError) as err:
        vocab.encode(text)
    assert err.value.unknown == {"é", "5"}
    assert "'é'" in str(err.value)
