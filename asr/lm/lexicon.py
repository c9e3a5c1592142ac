"""Word and character language models and lexicons for beam search.

The LM itself is KenLM: ``lmplz`` estimates an ARPA n-gram model from normalised text and
flashlight-text's KenLM reads it during decoding. This module prepares the text (with the
acoustic model's normalisation, so LM words and decoded words are spelled alike), runs the
KenLM tools, and builds the lexicon that maps each word to its character spelling.

A character LM's "words" are the acoustic model's characters, with ``|`` for the space between
words (the wav2letter convention). It scores every emitted character during lexicon-free beam
search, so it can repair spelling without ever forcing a whole (possibly wrong) word.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asr.utils.atomic import atomic_path, atomic_write
from asr.errors import AsrError
from asr.data.text import CharVocabulary, normalize_text

# Where scripts/build_kenlm.sh installs lmplz and build_binary.
KENLM_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asr" / "kenlm" / "bin"
ARPA_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})
CHAR_LM_SPACE = "|"  # how a character LM spells the space between words
# flashlight-text's bundled KenLM is compiled with KENLM_MAX_ORDER=6 and rejects longer n-grams.
MAX_LM_ORDER = 6


class LanguageModelError(AsrError, ValueError):
    """A language model, lexicon or KenLM tool that cannot be used; names the file and why."""


# --------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class Lexicon:
    """Words and their spellings as label ids (one or more per word), in insertion order."""

    spellings: dict[str, tuple[tuple[int, ...], ...]]
    skipped: tuple[str, ...] = field(default=())  # words dropped: characters outside the vocabulary

    def __len__(self) -> int:
        return len(self.spellings)

    def __contains__(self, word: str) -> bool:
        return word in self.spellings


def lexicon_from_words(words: Iterable[str], vocabulary: CharVocabulary) -> Lexicon:
    """Spell each word with its characters after the acoustic model's text normalisation.

    Words that normalise to nothing, to several words, or hold characters the acoustic model
    cannot emit are skipped (and listed in ``Lexicon.skipped``).
    """
    spellings: dict[str, list[tuple[int, ...]]] = {}
    skipped: list[str] = []
    for raw in words:
        word = normalize_text(raw)
        if not word or " " in word or vocabulary.unknown_characters(word):
            if raw.strip():
                skipped.append(raw)
            continue
        spellings.setdefault(word, [tuple(vocabulary.encode(word))])
    return Lexicon({w: tuple(s) for w, s in spellings.items()}, tuple(skipped))


def parse_lexicon(path: str | Path, what: str, spell: Callable[[str, list[str]], Sequence[tuple[int, ...]] | None],
                  empty_hint: str = "", word_of: Callable[[str], str] = normalize_text,
                  comment: str | None = None) -> Lexicon:
    """Read ``WORD FIELD...`` lines: ``spell(word_of(WORD), fields)`` gives the word's spellings
    as token ids, or None to skip the line (listed in ``Lexicon.skipped``); text after
    ``comment`` is ignored. A word keeps each distinct spelling once: the same one twice would
    count its word twice in the search."""
    path = Path(path)
    spellings: dict[str, list[tuple[int, ...]]] = {}
    skipped: list[str] = []
    try:
        for line in _read_text_lines(path):  # a generator: reading errors come from the loop
            fields = (line.split(comment, 1)[0] if comment else line).split()
            if not fields:
                continue
            word = word_of(fields[0])
            spelled = spell(word, fields[1:]) if word and " " not in word else None
            if not spelled:
                skipped.append(fields[0])
                continue
            known = spellings.setdefault(word, [])
            known += [spelling for spelling in dict.fromkeys(spelled) if spelling not in known]
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read {what} ({err})") from err
    if not spellings:
        raise LanguageModelError(f"{path}: no usable words in {what}{empty_hint}")
    return Lexicon({w: tuple(s) for w, s in spellings.items()}, tuple(skipped))


def read_lexicon(path: str | Path, vocabulary: CharVocabulary) -> Lexicon:
    """Read a lexicon file: ``WORD [SPELLING...]`` per line, or a plain word list.

    A line whose remaining fields are all characters of the vocabulary gives that spelling
    (``hello h e l l o``); otherwise (a bare word, or a pronunciation lexicon such as
    LibriSpeech's ``HELLO HH AH0 L OW1``) the word is spelled with its own characters, which is
    what a character CTC model emits.
    """
    def spell(word: str, fields: list[str]) -> list[tuple[int, ...]] | None:
        if vocabulary.unknown_characters(word):
            return None
        letters = [normalize_text(f) for f in fields]
        if letters and all(len(c) == 1 and not vocabulary.unknown_characters(c) for c in letters):
            return [tuple(vocabulary.encode("".join(letters)))]
        return [tuple(vocabulary.encode(word))]

    return parse_lexicon(path, "lexicon", spell)


def arpa_vocabulary(path: str | Path) -> list[str]:
    """The words of an ARPA model (its unigrams), without <s>, </s> and <unk>."""
    path = Path(path)
    words: list[str] = []
    try:
        in_unigrams = False
        for line in _read_text_lines(path):
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                fields = line.split("\t") if "\t" in line else line.split()
                if len(fields) >= 2 and fields[1] not in ARPA_SPECIAL_WORDS:
                    words.append(fields[1])
    except (OSError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{path}: cannot read ARPA language model ({err})") from err
    if not words:
        raise LanguageModelError(f"{path}: not an ARPA file (no \\1-grams: section); a KenLM binary "
                                 "model needs --lexicon, as its word list cannot be read back")
    return words


def is_char_lm(arpa_words: Sequence[str]) -> bool:
    """Whether an ARPA vocabulary is a character LM's: single characters and the ``|`` space."""
    return CHAR_LM_SPACE in arpa_words and all(len(word) == 1 for word in arpa_words)


def char_lm_sentence(sentence: str) -> str:
    """A normalised sentence as a character LM's tokens: ``"the cat"`` -> ``"t h e | c a t"``."""
    return " ".join(CHAR_LM_SPACE if char == " " else char for char in sentence)


def sample_unigram_sentences(
    counts: dict[str, float], num_words: int, words_per_sentence: int = 10, seed: int = 0
) -> Iterator[str]:
    """Pseudo-sentences of words drawn by count: spelling statistics for a character LM.

    A word list with frequencies (e.g. wordfreq's) says how often each spelling occurs but has
    no running text; sampling it gives lmplz text whose character n-grams follow those counts.
    """
    words = list(counts)
    cumulative = list(itertools.accumulate(counts[w] for w in words))
    rng = random.Random(seed)
    for _ in range(max(num_words // words_per_sentence, 1)):
        yield " ".join(rng.choices(words, cum_weights=cumulative, k=words_per_sentence))


def _read_text_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        yield from stream


# --------------------------------------------------------------------------- building an LM


def find_kenlm_tool(name: str) -> Path:
    """``lmplz`` or ``build_binary`` from $ASR_KENLM_BIN, PATH or the build script's cache."""
    candidates = []
    if os.environ.get("ASR_KENLM_BIN"):
        candidates.append(Path(os.environ["ASR_KENLM_BIN"]) / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(KENLM_CACHE / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LanguageModelError(f"KenLM's {name} not found (looked in $ASR_KENLM_BIN, PATH and {KENLM_CACHE}); "
                             "build it once with: bash scripts/build_kenlm.sh")


def corpus_sentences(sources: Sequence[str | Path], vocabulary: CharVocabulary) -> Iterator[str]:
    """Normalised sentences from text files (one sentence per line) or JSONL manifests.

    Words the acoustic model cannot spell are dropped from their sentence, so the LM holds no
    word the decoder could never produce.
    """
    for source in sources:
        path = Path(source)
        try:
            for line in _read_text_lines(path):
                if path.suffix == ".jsonl":
                    if not line.strip():
                        continue
                    line = json.loads(line)["text"]
                words = [w for w in normalize_text(line).split() if not vocabulary.unknown_characters(w)]
                if words:
                    yield " ".join(words)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as err:
            raise LanguageModelError(f"{path}: cannot read LM training text ({err})") from err


@dataclass(frozen=True)
class LmBuildReport:
    path: Path  # the model written
    sentences: int  # normalised sentences given to lmplz (text and, for a char LM, sampled words)
    words: int  # running words in them
    vocabulary: int  # distinct words


def build_lm(
    sources: Sequence[str | Path],
    order: int,
    out: str | Path,
    vocabulary: CharVocabulary | None = None,
    prune: Sequence[int] = (),
    memory: str = "20%",
    unigram_counts: dict[str, float] | None = None,
    unit: Literal["word", "char"] = "word",
    sampled_words: int = 1_000_000,
) -> LmBuildReport:
    """Estimate a modified Kneser-Ney n-gram model with KenLM's lmplz.

    ``out`` ending in ``.bin`` (or ``.binary``) also runs ``build_binary``: smaller and faster
    to load, but its word list cannot be read back, so decode it with a lexicon. The model is
    written to a temporary name and renamed, so a failed build never leaves a partial model.
    ``unigram_counts``: for a word LM, words unseen in the text get probabilities from these
    counts (:func:`add_unigrams`); for a character LM (``unit="char"``), ``sampled_words``
    words drawn by count are added to the text (:func:`sample_unigram_sentences`).
    """
    if not 1 <= order <= MAX_LM_ORDER:
        raise LanguageModelError(f"LM order {order}: flashlight-text's KenLM reads orders 1 to {MAX_LM_ORDER}")
    if unit == "char" and out_is_binary(out):
        raise LanguageModelError(f"{out}: write a character LM as ARPA; the decoder recognises it by its vocabulary")
    vocabulary = vocabulary or CharVocabulary.english()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lmplz = find_kenlm_tool("lmplz")
    build_binary = find_kenlm_tool("build_binary") if out_is_binary(out) else None
    spellable = {w: c for w, c in (unigram_counts or {}).items() if c > 0 and not vocabulary.unknown_characters(w)}
    sentences_in = corpus_sentences(sources, vocabulary)
    if unit == "char" and spellable:
        sentences_in = itertools.chain(sentences_in, sample_unigram_sentences(spellable, sampled_words))
    # Named like asr.utils.atomic's temporaries, so that a killed build's leftovers are recognised.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        sentences = words = 0
        distinct: set[str] = set()
        with open(corpus, "w", encoding="utf-8") as stream:
            for sentence in sentences_in:
                stream.write((char_lm_sentence(sentence) if unit == "char" else sentence) + "\n")
                tokens = sentence.split()
                sentences += 1
                words += len(tokens)
                distinct.update(tokens)
        if not sentences:
            raise LanguageModelError(f"no usable text in {', '.join(map(str, sources))}")
        arpa = Path(tmp) / "model.arpa"
        # --discount_fallback: small corpora (a few thousand sentences) otherwise make lmplz
        # abort on degenerate count-of-counts; large corpora never use the fallback.
        command = [str(lmplz), "-o", str(order), "-S", memory, "-T", tmp, "--discount_fallback"]
        if prune:
            command += ["--prune", *map(str, prune)]
        _run_tool(command, stdin=corpus, stdout=arpa)
        if unit == "word" and spellable:
            add_unigrams(arpa, spellable)
        with atomic_path(out) as result:
            if build_binary:
                _run_tool([str(build_binary), str(arpa), str(result)])
            else:
                os.replace(arpa, result)
    return LmBuildReport(out, sentences, words, len(distinct))


def out_is_binary(path: str | Path) -> bool:
    return Path(path).suffix in (".bin", ".binary")


def add_unigrams(arpa: str | Path, counts: dict[str, float], unk_share: float = 0.1) -> int:
    """Give words the n-gram model never saw a unigram probability from external counts.

    A small corpus leaves most of a large vocabulary unseen, and every unseen word gets the
    same <unk> probability. This spreads that mass instead: a new word w gets
    p(<unk>) * (1 - unk_share) * count(w) / (sum of new words' counts), and <unk> keeps
    ``unk_share`` of it, so the model stays normalised. The new unigrams have no higher-order
    n-grams (backoff weight 1). Rewrites the ARPA file atomically; returns the words added.
    """
    arpa = Path(arpa)
    lines = arpa.read_text(encoding="utf-8").split("\n")
    start = lines.index("\\1-grams:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("\\"))
    known = {}
    for i in range(start + 1, end):
        fields = lines[i].split("\t")
        if len(fields) >= 2:
            known[fields[1]] = i
    if "<unk>" not in known:
        raise LanguageModelError(f"{arpa}: no <unk> unigram to share out")
    unk_fields = lines[known["<unk>"]].split("\t")
    unk_log10 = float(unk_fields[0])
    new = {w: c for w, c in counts.items() if w not in known and c > 0}
    if not new:
        return 0
    total = sum(new.values())
    share = math.log10(1 - unk_share)
    added = [f"{unk_log10 + share + math.log10(c / total):.6f}\t{w}\t0" for w, c in new.items()]
    unk_fields[0] = f"{unk_log10 + math.log10(unk_share):.6f}"
    lines[known["<unk>"]] = "\t".join(unk_fields)
    while end > start + 1 and not lines[end - 1].strip():  # insert before the section's blank line
        end -= 1
    lines[end:end] = added
    header = next(i for i, line in enumerate(lines) if line.startswith("ngram 1="))
    lines[header] = f"ngram 1={int(lines[header].split('=')[1]) + len(added)}"
    with atomic_write(arpa) as out:
        out.write("\n".join(lines))
    return len(added)


def read_word_counts(path: str | Path) -> dict[str, float]:
    """``word count`` per line (e.g. from scripts/make_wordlist.py), words normalised."""
    counts: dict[str, float] = {}
    try:
        for line in _read_text_lines(Path(path)):
            fields = line.split()
            if len(fields) >= 2:
                word = normalize_text(fields[0])
                if word and " " not in word:
                    counts[word] = counts.get(word, 0.0) + float(fields[1])
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LanguageModelError(f"{path}: cannot read word counts ({err})") from err
    return counts


def _run_tool(command: list[str], stdin: Path | None = None, stdout: Path | None = None) -> None:
    with open(stdin or os.devnull, "rb") as source, open(stdout or os.devnull, "wb") as sink:
        completed = subprocess.run(command, stdin=source, stdout=sink, stderr=subprocess.PIPE)
    if completed.returncode != 0:
        tail = completed.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise LanguageModelError(f"{Path(command[0]).name} failed (exit {completed.returncode}): " + " | ".join(tail))
