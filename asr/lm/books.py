"""Book text as LM sentences: prose kept, headings and contents dropped, numbers spoken, held-out text excluded.

LibriSpeech's LM corpus is Project Gutenberg books normalised the way its transcripts are
written: upper-case words, no punctuation, numbers and abbreviations as they are read aloud.
This module turns a folder of plain-text books into such sentences (lower case, as asr's
transcripts are): paragraphs are joined across line breaks, paragraphs that are not prose
(chapter headings, tables of contents, all-capitals titles, lines without a sentence end)
are dropped, numbers, ordinals, years and regnal numerals ("Henry VIII") are spoken with
num2words, common abbreviations are expanded, and paragraphs split into sentences.

A user who evaluates on a test set must build the LM without that test set's sentences:
:class:`HeldOutText` holds every word 10-gram of some transcripts, and a book that contains
any of them is left out whole (an LM that saw the sentence would score its recognition
falsely well).
"""

from __future__ import annotations

import multiprocessing
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from num2words import num2words

from asr.data.manifest import read_manifest
from asr.data.text import ENGLISH, normalize_text, primary_language
from asr.lm.lexicon import LanguageModelError

HELD_OUT_RUN = 10  # words: a shared run this long means the book holds the sentence (book_text.py's rule too)
MIN_PROSE_WORDS = 4  # a shorter paragraph is a heading, a signature or a list item
LONG_PROSE_WORDS = 20  # a paragraph this long is prose even without a sentence end (verse, run-ons)
MAX_CAPITALS = 0.6  # a paragraph whose letters are mostly capitals is a title or a heading
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]_]*$")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]_]*\s+(?=[\"'\u201c\u2018(\[_]*[A-Z0-9])")
_HEADING = re.compile(r"^(chapter|book|part|volume|act|scene|section|contents|preface|introduction|index|appendix)\b",
                      re.IGNORECASE)
# Expansions as LibriSpeech's transcripts spell them ("MISTER", "MISSUS", "SAINT" before a name).
ABBREVIATIONS = {"Mr.": "Mister", "Mrs.": "Missus", "Dr.": "Doctor", "St.": "Saint", "Messrs.": "Messieurs",
                 "Capt.": "Captain", "Col.": "Colonel", "Gen.": "General", "Lieut.": "Lieutenant", "Rev.": "Reverend",
                 "Prof.": "Professor", "Sr.": "Senior", "Jr.": "Junior", "No.": "Number", "Vol.": "Volume"}
_ABBREVIATION = re.compile(r"\b(" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")(?=\s)")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th|d)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\b")
_REGNAL = re.compile(r"\b([A-Z][a-z]+) ([IVX]{2,6}|I)\b(?!')")
_ROMAN = {"I": 1, "V": 5, "X": 10}


@dataclass(frozen=True)
class BookStats:
    books: int  # books read
    excluded: tuple[str, ...]  # books left out for holding a held-out word run
    unreadable: tuple[str, ...]  # "path: reason" for books that could not be read
    sentences: int  # sentences written from the kept books
    words: int  # running words in them


def _roman(numeral: str) -> int | None:
    values = [_ROMAN[c] for c in numeral]
    total = sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))
    return total if 0 < total < 40 else None


def speak_numbers(text: str, language: str = ENGLISH) -> str:
    """Numbers as words: ordinals ("3rd"), years ("1844" -> eighteen forty-four), decimals,
    thousands with commas, regnal numerals after a name ("Henry VIII" -> Henry the eighth)."""
    lang = primary_language(language)

    def words(number: int | float, to: str = "cardinal") -> str:
        try:
            return num2words(number, lang=lang, to=to)
        except (NotImplementedError, OverflowError, ValueError):  # a language or form num2words lacks
            return num2words(number, lang="en", to=to) if lang == "en" else str(number)

    def regnal(match: re.Match) -> str:
        value = _roman(match.group(2))
        if value is None or (match.group(2) == "I" and lang != "en"):
            return match.group(0)
        if match.group(2) == "I" and match.group(1) not in {"George", "Henry", "Charles", "James", "William",
                                                          "Edward", "Richard", "Louis", "Napoleon", "Peter",
                                                          "Elizabeth", "Mary", "Frederick", "Alexander"}:
            return match.group(0)  # "Then I went": the pronoun
        return f"{match.group(1)} the {words(value, 'ordinal')}" if lang == "en" else match.group(0)

    text = _REGNAL.sub(regnal, text)
    text = _ORDINAL.sub(lambda m: words(int(m.group(1)), "ordinal"), text)
    text = _DECIMAL.sub(lambda m: f"{words(int(m.group(1)))} point {' '.join(words(int(d)) for d in m.group(2))}",
                        text)

    def number(match: re.Match) -> str:
        value = int(match.group(0).replace(",", ""))
        is_year = "," not in match.group(0) and 1000 <= value <= 2099 and len(match.group(0)) == 4
        return words(value, "year" if is_year else "cardinal")

    return _NUMBER.sub(number, text)


def _is_prose(paragraph: str) -> bool:
    words = paragraph.split()
    if len(words) < MIN_PROSE_WORDS or _HEADING.match(paragraph):
        return False
    letters = [c for c in paragraph if c.isalpha()]
    if letters and sum(c.isupper() for c in letters) / len(letters) > MAX_CAPITALS:
        return False
    return bool(_SENTENCE_END.search(paragraph)) or len(words) >= LONG_PROSE_WORDS


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, each joined onto one line (CRLF and indentation undone)."""
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        joined = " ".join(block.split())
        if joined:
            yield joined


def book_sentences(text: str, language: str = ENGLISH) -> Iterator[str]:
    """A book's prose as normalised sentences (one per item, words separated by single spaces)."""
    for paragraph in paragraphs(text):
        if not _is_prose(paragraph):
            continue
        paragraph = _ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(1)], paragraph)
        for sentence in _SENTENCE_SPLIT.split(paragraph):
            normalised = normalize_text(speak_numbers(sentence, language), language)
            if normalised:
                yield normalised


class HeldOutText:
    """Every word run of :data:`HELD_OUT_RUN` words in some transcripts (normalised as the books are)."""

    def __init__(self, transcripts: Iterable[str], language: str = ENGLISH, run: int = HELD_OUT_RUN) -> None:
        self.run = run
        self.grams: set[tuple[str, ...]] = set()
        for transcript in transcripts:
            words = normalize_text(transcript, language).split()
            self.grams.update(tuple(words[i:i + run]) for i in range(len(words) - run + 1))

    @classmethod
    def from_manifests(cls, manifests: Sequence[str | Path], language: str = ENGLISH) -> HeldOutText:
        return cls((u.text for m in manifests for u in read_manifest(m)), language)

    def __len__(self) -> int:
        return len(self.grams)

    def found_in(self, sentences: Iterable[str]) -> bool:
        """Whether any held-out run appears in ``sentences`` read as one stream of words
        (a transcript's sentence may span a book's sentence break)."""
        if not self.grams:
            return False
        window: deque[str] = deque(maxlen=self.run)
        for sentence in sentences:
            for word in sentence.split():
                window.append(word)
                if len(window) == self.run and tuple(window) in self.grams:
                    return True
        return False


def book_files(folder: str | Path) -> list[Path]:
    """The ``*.txt`` books under ``folder``, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LanguageModelError(f"{folder}: not a folder of books")
    books = sorted(folder.rglob("*.txt"))
    if not books:
        raise LanguageModelError(f"{folder}: no .txt books in it")
    return books


def read_book(path: Path, language: str = ENGLISH) -> list[str]:
    """A book's sentences; UTF-8, or Latin-1 for the older Gutenberg files that are not."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LanguageModelError(f"{path}: unreadable ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return list(book_sentences(text, language))


def _sentences_of(job: tuple[Path, str]) -> tuple[Path, list[str] | str]:
    path, language = job
    try:
        return path, read_book(path, language)
    except LanguageModelError as err:
        return path, str(err)


def book_corpus(folder: str | Path, language: str = ENGLISH, held_out: HeldOutText | None = None,
                workers: int = 1, stats: list[BookStats] | None = None) -> Iterator[str]:
    """The sentences of every book under ``folder``, in order, leaving out books that hold a
    held-out word run; ``stats`` (a list) receives the :class:`BookStats` when the books are done.
    Books are read in ``workers`` processes, a few at a time: memory stays bounded by them."""
    books = book_files(folder)
    excluded: list[str] = []
    unreadable: list[str] = []
    sentences = words = 0
    jobs = ((path, language) for path in books)
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # a clean child: no state or locks from the caller
        pool = context.Pool(workers)
        results = pool.imap(_sentences_of, jobs, chunksize=1)
    else:
        pool, results = None, map(_sentences_of, jobs)
    try:
        for path, book in results:
            if isinstance(book, str):
                unreadable.append(book)
            elif held_out is not None and held_out.found_in(book):
                excluded.append(str(path))
            else:
                for sentence in book:
                    sentences += 1
                    words += sentence.count(" ") + 1
                    yield sentence
    finally:
        if pool is not None:
            pool.terminate()
    if stats is not None:
        stats.append(BookStats(len(books), tuple(excluded), tuple(unreadable), sentences, words))
