"""The general English LM: CMU Sphinx's trie model written as ARPA (asr/lm/sphinx.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from asr.lm.lexicon import LanguageModelError
from asr.lm.sphinx import MAGIC, convert_sphinx_lm, find_sphinx_lm


def test_what_is_not_a_sphinx_trie_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "x.lm.bin"
    other.write_bytes(b"Darpa Trigram LM\0" + bytes(100))
    with pytest.raises(LanguageModelError, match="x.lm.bin: not a Sphinx trie"):
        convert_sphinx_lm(other, tmp_path / "out.arpa")
    with pytest.raises(LanguageModelError, match="cannot read"):
        convert_sphinx_lm(tmp_path / "missing.bin", tmp_path / "out.arpa")
    assert not (tmp_path / "out.arpa").exists()


def test_a_truncated_trie_is_refused(tmp_path: Path) -> None:
    source = find_sphinx_lm()
    if source is None:
        pytest.skip("pocketsphinx's en-us.lm.bin not installed (pip install pocketsphinx)")
    cut = tmp_path / "cut.lm.bin"
    cut.write_bytes(source.read_bytes()[: len(MAGIC) + 1_000_000])
    with pytest.raises(LanguageModelError, match="cut.lm.bin: damaged"):
        convert_sphinx_lm(cut, tmp_path / "out.arpa")
    assert not list(tmp_path.glob("*.arpa"))


@pytest.mark.slow
def test_the_arpa_holds_every_ngram_with_sphinx_scores(tmp_path: Path) -> None:
    """All 72,547 words, the 2,051,541 bigrams the trie really holds (its header claims 6 more)
    and 1,669,625 trigrams; sampled n-grams score as pocketsphinx scores them."""
    pocketsphinx = pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    source = find_sphinx_lm()
    arpa = tmp_path / "en-us.arpa"
    assert convert_sphinx_lm(source, arpa) == (72547, 2051541, 1669625)
    sections: dict[int, list[str]] = {}
    order = 0
    with open(arpa, encoding="utf-8") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith("\\") and line.endswith("-grams:"):
                order = int(line[1])
                sections[order] = []
            elif line == "\\end\\":
                order = -1
            elif order > 0 and line:
                sections[order].append(line)
    assert order == -1 and [len(sections[n]) for n in (1, 2, 3)] == [72547 + 1, 2051541, 1669625]
    assert sections[1][0] == "-100.0000\t<unk>\t0.0000"  # the score KenLM gives a missing <unk>, without its warning
    sections[1] = sections[1][1:]
    model = pocketsphinx.NGramModel(pocketsphinx.Config(), pocketsphinx.LogMath(), str(source))
    rng = random.Random(0)
    for n in (1, 2, 3):
        for line in rng.sample(sections[n], 200):
            fields = line.split("\t")
            words = fields[1].split(" ")
            # pocketsphinx takes the word first, then its history nearest first, in log base 1.0001
            expected = model.prob(list(reversed(words))) * math.log10(1.0001)
            assert float(fields[0]) == pytest.approx(expected, abs=2e-4), line
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    KenLM(str(arpa), Dictionary(["<unk>", "the"]))  # and it loads in flashlight's KenLM, as decoding does
