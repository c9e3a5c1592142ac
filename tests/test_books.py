"""Book text for LMs (asr/lm/books.py) on hand-made books: prose kept, numbers spoken, held-out text excluded."""

from __future__ import annotations

import json

import pytest

from asr.lm.books import HeldOutText, book_corpus, book_sentences, speak_numbers
from asr.lm.lexicon import LanguageModelError

BOOK = """The Project's Title\r
\r
CONTENTS\r
\r
CHAPTER I. The Beginning ........ 5\r
CHAPTER II. The End ........ 40\r
\r
\r
CHAPTER I.\r
\r
THE BEGINNING\r
\r
In the year 1844, Mr. Brown left London\r
for the 3rd time. "Why?" asked Mrs. Brown;\r
he did not answer her.\r
\r
    Henry VIII had 6 wives, and I know it well enough.\r
\r
FINIS\r
"""


def test_prose_is_kept_and_spoken_as_read():
    assert list(book_sentences(BOOK)) == [
        "in the year eighteen forty four mister brown left london for the third time",
        "why asked missus brown he did not answer her",
        "henry the eighth had six wives and i know it well enough",
    ]


@pytest.mark.parametrize(("written", "spoken"), [
    ("1,250 men", "one thousand, two hundred and fifty men"),
    ("in 1066", "in ten sixty-six"),
    ("page 12", "page twelve"),
    ("the 21st", "the twenty-first"),
    ("3.5 miles", "three point five miles"),
    ("Louis XIV", "Louis the fourteenth"),
    ("then I went", "then I went"),
])
def test_numbers_are_spoken(written, spoken):
    assert speak_numbers(written) == spoken


def test_numbers_in_another_language():
    assert speak_numbers("tengo 3 gatos", "es") == "tengo tres gatos"


def test_a_book_holding_a_held_out_run_is_left_out(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    secret = "the quick brown fox jumps over the lazy dog and runs away"
    (books / "a.txt").write_text("It was a fine morning in the town, as they say.\n\nThe quick brown fox\njumps over "
                                 "the lazy dog and runs away from the farm, they said.\n")
    (books / "b.txt").write_text("Nothing here is held out, though the fox jumps over the lazy dog again.\n")
    (books / "c.txt").write_bytes("Caf\xe9 au lait was what he drank each morning, always.\n".encode("latin-1"))
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio": "x.flac", "text": secret, "duration": 1.0}) + "\n")
    held_out = HeldOutText.from_manifests([manifest])
    assert len(held_out) == 3  # 12 words: three 10-word runs
    stats = []
    sentences = list(book_corpus(books, held_out=held_out, stats=stats))
    assert sentences == ["nothing here is held out though the fox jumps over the lazy dog again",
                         "café au lait was what he drank each morning always"]
    assert [p.endswith("a.txt") for p in stats[0].excluded] == [True]
    assert (stats[0].books, stats[0].sentences, stats[0].words) == (3, 2, 24)
    assert list(book_corpus(books, held_out=held_out, workers=2)) == sentences  # same in worker processes


def test_a_run_across_sentences_counts():
    held_out = HeldOutText(["one two three four five six seven eight nine ten"])
    assert held_out.found_in(["one two three four five", "six seven eight nine ten eleven"])
    assert not held_out.found_in(["one two three four five six seven eight nine"])


def test_a_folder_without_books_is_an_error(tmp_path):
    with pytest.raises(LanguageModelError, match="no .txt books"):
        list(book_corpus(tmp_path))


def test_lm_build_reads_books_leaves_out_held_out_text_and_limits_the_vocabulary(tmp_path, monkeypatch, capsys):
    """`asr lm build BOOKS --exclude --vocab-size --oov`, with a stand-in lmplz recording what it is given."""
    import stat

    from asr.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lmplz = bin_dir / "lmplz"
    lmplz.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/corpus\n"
                     "printf '\\\\data\\\\\\nngram 1=1\\n\\n\\\\1-grams:\\n-1\\t<unk>\\t0\\n\\n\\\\end\\\\\\n'\n")
    lmplz.chmod(lmplz.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ASR_KENLM_BIN", str(bin_dir))
    books = tmp_path / "books"
    (books / "sub").mkdir(parents=True)
    (books / "a.txt").write_text("The cat sat on the mat and the cat was glad of it.\n")
    (books / "sub" / "b.txt").write_text("One two three four five six seven eight nine ten, said the dog.\n")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"audio": "t.flac", "duration": 1, "text": "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT "
                                "NINE TEN"}) + "\n")
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"audio": "d.flac", "duration": 1, "text": "the cat and the bird"}) + "\n")
    out = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(books), str(out), "--exclude", str(test), "--vocab-size", "2",
                 "--oov", str(dev), "--workers", "1"]) == 0
    assert (tmp_path / "corpus").read_text() == "the cat sat on the mat and the cat was glad of it\n"
    args = (tmp_path / "args").read_text().split()
    vocabulary = args[args.index("--limit_vocab_file") + 1]
    printed = capsys.readouterr().out
    assert "from 1 sentences of 2 books, 13 words, 10 distinct, 2 kept" in printed
    assert "left out 1 document(s)" in printed and "b.txt" in printed
    assert "2 words 40.00 %" in printed and "all 10 words 20.00 %" in printed  # 2: "and", "bird" out; all: "bird"
    assert not __import__("pathlib").Path(vocabulary).exists()  # the temporary folder is gone


def test_a_binary_word_lm_gets_its_word_list_beside_it(tmp_path, monkeypatch):
    import stat

    from asr.lm.build import build_lm, words_file

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("lmplz", "cat > /dev/null\nprintf 'arpa'\n"), ("build_binary", 'cp "$1" "$2"\n')):
        (bin_dir / name).write_text("#!/bin/sh\n" + script)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("ASR_KENLM_BIN", str(bin_dir))
    text = tmp_path / "text.txt"
    text.write_text("the cat the dog\nthe cat\n")
    out = tmp_path / "lm.bin"
    report = build_lm([text], 3, out, vocab_size=2)
    assert out.read_text() == "arpa" and report.kept_words == 2
    assert words_file(out).read_text() == "the\ncat\n"  # the --vocab-size most frequent, for --lexicon


def test_a_quantised_binary_is_a_trie_and_needs_a_binary_output(tmp_path, monkeypatch):
    import stat

    from asr.lm.build import build_lm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # build_binary records its arguments; the last two are the ARPA and the output.
    recorder = f'echo "$@" > {tmp_path}/args\neval last=\\${{$#}}\ncp /dev/null "$last"\n'
    for name, script in (("lmplz", "cat > /dev/null\nprintf 'arpa'\n"), ("build_binary", recorder)):
        (bin_dir / name).write_text("#!/bin/sh\n" + script)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("ASR_KENLM_BIN", str(bin_dir))
    text = tmp_path / "text.txt"
    text.write_text("the cat the dog\n")
    build_lm([text], 3, tmp_path / "lm.bin", quantize_bits=8)
    assert (tmp_path / "args").read_text().split()[:7] == ["-q", "8", "-b", "8", "-a", "22", "trie"]
    build_lm([text], 3, tmp_path / "plain.bin")
    assert "trie" not in (tmp_path / "args").read_text()  # the default: KenLM's probing hash, fastest to query
    with pytest.raises(LanguageModelError, match="lm.arpa: quantising needs a .bin output"):
        build_lm([text], 3, tmp_path / "lm.arpa", quantize_bits=8)
    with pytest.raises(LanguageModelError, match="2 to 25 bits, not 1"):
        build_lm([text], 3, tmp_path / "lm.bin", quantize_bits=1)
