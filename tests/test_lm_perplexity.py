"""`asr lm perplexity` (KenLM's query) and `asr lm text` (books normalised once, for several builds)."""

from __future__ import annotations

import json

import pytest

from asr.cli import main
from asr.lm.build import find_kenlm_tool
from asr.lm.lexicon import LanguageModelError
from asr.lm.perplexity import measure_perplexity, parse_query_summary

# Unigrams in log10: a = 10^-0.30103 (1/2), b = 1/4, </s> = 10^-0.5, <unk> = 1/10, no backoff
# penalty; KenLM reads bigram models and up, so one bigram ("b a") that "a b c" never uses.
SMALL_ARPA = """\\data\\
ngram 1=5
ngram 2=1

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-0.5\t</s>\t0
-0.30103\ta\t0
-0.60206\tb\t0

\\2-grams:
-0.1\tb a

\\end\\
"""


def has_query() -> bool:
    try:
        find_kenlm_tool("query")
        return True
    except LanguageModelError:
        return False


def manifest(path, *texts):
    path.write_text("".join(json.dumps({"audio": f"{i}.flac", "duration": 1.0, "text": t}) + "\n"
                            for i, t in enumerate(texts)))
    return path


def test_query_summary_is_read():
    output = ("Perplexity including OOVs:\t3.98\nPerplexity excluding OOVs:\t2.94\nOOVs:\t1\nTokens:\t4\n")
    result = parse_query_summary(output, sentences=1)
    assert (result.including_oov, result.excluding_oov, result.oov_words, result.tokens) == (3.98, 2.94, 1, 4)
    assert result.oov_rate == pytest.approx(1 / 3)  # the sentence end is not a word
    with pytest.raises(LanguageModelError, match="no Perplexity including OOVs"):
        parse_query_summary("Name:\tquery\n", sentences=1)


def test_a_missing_lm_is_named(tmp_path):
    with pytest.raises(LanguageModelError, match="nowhere.arpa: no such LM file"):
        measure_perplexity(tmp_path / "nowhere.arpa", [manifest(tmp_path / "dev.jsonl", "a")])


@pytest.mark.skipif(not has_query(), reason="KenLM's query not built (bash scripts/build_kenlm.sh)")
def test_perplexity_of_a_hand_made_lm(tmp_path, capsys):
    lm = tmp_path / "unigram.arpa"
    lm.write_text(SMALL_ARPA)
    dev = manifest(tmp_path / "dev.jsonl", "A, B... C!")  # normalised to "a b c": c is unknown
    result = measure_perplexity(lm, [dev])
    assert result.including_oov == pytest.approx(10 ** ((0.30103 + 0.60206 + 1.0 + 0.5) / 4), rel=1e-3)
    assert result.excluding_oov == pytest.approx(10 ** ((0.30103 + 0.60206 + 0.5) / 3), rel=1e-3)
    assert (result.oov_words, result.tokens, result.sentences) == (1, 4, 1)
    assert main(["lm", "perplexity", str(lm), str(dev)]) == 0
    printed = capsys.readouterr().out
    assert f"perplexity {result.including_oov:.1f}" in printed and "out-of-vocabulary 33.33 % (1 of 3 words" in printed


def test_lm_text_writes_the_sentences_once_without_held_out_books(tmp_path, capsys):
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text("CHAPTER I.\n\nMr. Smith paid 3 pounds in 1844, as he said.\n")
    (books / "b.txt").write_text("One two three four five six seven eight nine ten, said the dog.\n")
    test = manifest(tmp_path / "test.jsonl", "one two three four five six seven eight nine ten")
    out = tmp_path / "books.txt"
    assert main(["lm", "text", str(books), str(out), "--exclude", str(test), "--workers", "1"]) == 0
    assert out.read_text() == "mister smith paid three pounds in eighteen forty four as he said\n"
    printed = capsys.readouterr().out
    assert "1 sentences of 2 books, 12 words" in printed and "left out 1 document(s)" in printed and "b.txt" in printed
    assert not list(tmp_path.glob(".books.txt*"))  # no temporary left behind
