"""Word and character n-gram LMs built with KenLM's lmplz from text (normalised to the model's characters), and the word counts that extend them."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asr.data.text import ENGLISH, CharVocabulary, normalize_text
from asr.data.manifest import read_manifest
from asr.lm.books import BookStats, HeldOutText, book_corpus
from asr.lm.lexicon import LanguageModelError, char_lm_sentence, read_text_lines
from asr.utils.atomic import atomic_path, atomic_write

# Where scripts/build_kenlm.sh installs lmplz, build_binary and query.
KENLM_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asr" / "kenlm" / "bin"
# flashlight-text's bundled KenLM is compiled with KENLM_MAX_ORDER=6 and rejects longer n-grams.
MAX_LM_ORDER = 6


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


def find_kenlm_tool(name: str) -> Path:
    """``lmplz``, ``build_binary`` or ``query`` from $ASR_KENLM_BIN, PATH or the build script's cache."""
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


@dataclass
class CorpusTally:
    """What :func:`corpus_sentences` left out, filled in as it goes."""

    excluded: list[str] = field(default_factory=list)  # documents dropped for a held-out word run
    books: list[BookStats] = field(default_factory=list)  # one per folder of books read


def corpus_sentences(sources: Sequence[str | Path], vocabulary: CharVocabulary | None,
                     language: str = ENGLISH, held_out: HeldOutText | None = None, workers: int = 1,
                     tally: CorpusTally | None = None) -> Iterator[str]:
    """Sentences from text files (one sentence per line), JSONL manifests or folders of books
    (:mod:`asr.lm.books`), normalised by ``language``'s rules (the acoustic model's data.language).

    Words the acoustic model cannot spell are dropped from their sentence, so the LM holds no
    word the decoder could never produce (``vocabulary`` None: no model to ask, all are kept).
    ``held_out``: a book holding one of its word runs is left out whole, as is a line of a
    text file or manifest (each line there is a document of its own).
    """
    tally = tally if tally is not None else CorpusTally()
    for source in sources:
        path = Path(source)
        lines = book_corpus(path, language, held_out, workers, tally.books) if path.is_dir() else \
            _text_lines(path, language, held_out, tally)
        for line in lines:
            if vocabulary is None or not vocabulary.unknown_characters(line):  # the usual case, checked at once
                if line:
                    yield line
                continue
            words = [w for w in line.split() if not vocabulary.unknown_characters(w)]
            if words:
                yield " ".join(words)
        for stats in tally.books[-1:] if path.is_dir() else ():
            tally.excluded.extend(stats.excluded)


def _text_lines(path: Path, language: str, held_out: HeldOutText | None, tally: CorpusTally) -> Iterator[str]:
    try:
        for number, line in enumerate(read_text_lines(path), start=1):
            if path.suffix == ".jsonl":
                if not line.strip():
                    continue
                line = json.loads(line)["text"]
            # Without its line end, text that is already normalised (`asr lm text`) takes
            # normalize_text's fast path: reading 300 M words back is then minutes, not a quarter hour.
            normalised = normalize_text(line.rstrip("\r\n"), language)
            if held_out is not None and held_out.found_in([normalised]):
                tally.excluded.append(f"{path}:{number}")
                continue
            yield normalised
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as err:
        raise LanguageModelError(f"{path}: cannot read LM training text ({err})") from err


def oov_rates(counts: Counter[str], manifests: Sequence[str | Path], sizes: Sequence[int | None],
              language: str = ENGLISH) -> dict[int | None, float]:
    """Share of the running words of ``manifests``' transcripts outside the ``size`` most
    frequent words of ``counts`` (None: all of them), per size."""
    words = [w for m in manifests for u in read_manifest(m) for w in normalize_text(u.text, language).split()]
    if not words:
        raise LanguageModelError(f"no words in {', '.join(map(str, manifests))} to measure out-of-vocabulary words on")
    ranked = [w for w, _ in counts.most_common()]
    return {size: sum(w not in kept for w in words) / len(words)
            for size in sizes for kept in [set(ranked[:size] if size else ranked)]}


@dataclass(frozen=True)
class LmTextReport:
    path: Path  # the text written: one normalised sentence a line
    sentences: int
    words: int  # running words
    books: int  # books read from folders
    excluded: tuple[str, ...]  # documents left out for holding a held-out word run


def write_lm_text(sources: Sequence[str | Path], out: str | Path, vocabulary: CharVocabulary | None = None,
                  language: str = ENGLISH, held_out: HeldOutText | None = None, workers: int = 1) -> LmTextReport:
    """The sentences :func:`build_lm` gives lmplz, written once to ``out`` (atomically): reading
    and normalising a folder of books is the slow part of a build, and several LMs (orders,
    prunings, vocabulary sizes) are then built from this file, which needs no more exclusion."""
    vocabulary = _default_vocabulary(vocabulary, language)
    tally = CorpusTally()
    sentences = words = 0
    with atomic_write(out) as stream:
        for sentence in corpus_sentences(sources, vocabulary, language, held_out, workers, tally):
            stream.write(sentence + "\n")
            sentences += 1
            words += sentence.count(" ") + 1
        if not sentences:
            raise LanguageModelError(f"no usable text in {', '.join(map(str, sources))}")
    return LmTextReport(Path(out), sentences, words, sum(s.books for s in tally.books), tuple(tally.excluded))


@dataclass(frozen=True)
class LmBuildReport:
    path: Path  # the model written
    sentences: int  # normalised sentences given to lmplz (text and, for a char LM, sampled words)
    words: int  # running words in them
    vocabulary: int  # distinct words
    kept_words: int = 0  # the words the LM may use: all distinct words, or the --vocab-size most frequent
    excluded: tuple[str, ...] = ()  # documents (books, lines) left out for holding a held-out word run
    books: int = 0  # books read from folders


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
    language: str = ENGLISH,
    held_out: HeldOutText | None = None,
    vocab_size: int | None = None,
    workers: int = 1,
    counts: Counter[str] | None = None,
    quantize_bits: int | None = None,
) -> LmBuildReport:
    """Estimate a modified Kneser-Ney n-gram model with KenLM's lmplz.

    ``out`` ending in ``.bin`` (or ``.binary``) also runs ``build_binary``: smaller and faster
    to load, but its word list cannot be read back, so decode it with a lexicon. The model is
    written to a temporary name and renamed, so a failed build never leaves a partial model.
    ``unigram_counts``: for a word LM, words unseen in the text get probabilities from these
    counts (:func:`add_unigrams`); for a character LM (``unit="char"``), ``sampled_words``
    words drawn by count are added to the text (:func:`sample_unigram_sentences`).
    ``language``: the text's normalisation rules (the model's data.language); ``vocabulary``
    (the model's characters) defaults to English's for English and to none (every word kept)
    for another language. ``held_out``: documents holding its word runs are left out
    (:func:`corpus_sentences`). ``vocab_size``: a word LM keeps only the most frequent words
    (lmplz ``--limit_vocab_file``; the rest are <unk>). ``counts`` (a Counter) receives the
    corpus' word counts, e.g. for :func:`oov_rates`. Folders of books are read in ``workers``
    processes. ``quantize_bits`` (binary ``out`` only): KenLM's trie, probabilities, backoffs and
    pointers (-a 22) compressed: a fraction of the size and of each decoding process' memory.
    """
    _check_build_request(order, out, unit, quantize_bits)
    vocabulary = _default_vocabulary(vocabulary, language)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lmplz = find_kenlm_tool("lmplz")
    build_binary = find_kenlm_tool("build_binary") if out_is_binary(out) else None
    spellable = {w: c for w, c in (unigram_counts or {}).items()
                 if c > 0 and (vocabulary is None or not vocabulary.unknown_characters(w))}
    tally = CorpusTally()
    sentences_in = corpus_sentences(sources, vocabulary, language, held_out, workers, tally)
    if unit == "char" and spellable:
        sentences_in = itertools.chain(sentences_in, sample_unigram_sentences(spellable, sampled_words))
    # Named like asr.utils.atomic's temporaries, so that a killed build's leftovers are recognised.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        counts = counts if counts is not None else Counter()
        sentences = _write_corpus(sentences_in, corpus, unit, counts)
        if not sentences:
            raise LanguageModelError(f"no usable text in {', '.join(map(str, sources))}")
        arpa = Path(tmp) / "model.arpa"
        # --discount_fallback: small corpora (a few thousand sentences) otherwise make lmplz
        # abort on degenerate count-of-counts; large corpora never use the fallback.
        command = [str(lmplz), "-o", str(order), "-S", memory, "-T", tmp, "--discount_fallback"]
        if prune:
            command += ["--prune", *map(str, prune)]
        kept_words = len(counts)
        if vocab_size and unit == "word" and vocab_size < len(counts):
            limit = Path(tmp) / "vocabulary.txt"
            limit.write_text("\n".join(w for w, _ in counts.most_common(vocab_size)) + "\n", encoding="utf-8")
            command += ["--limit_vocab_file", str(limit)]
            kept_words = vocab_size
        _run_tool(command, stdin=corpus, stdout=arpa)
        if unit == "word" and spellable:
            add_unigrams(arpa, spellable)
        with atomic_path(out) as result:
            if build_binary:
                layout = ["-q", str(quantize_bits), "-b", str(quantize_bits), "-a", "22", "trie"] if quantize_bits else []
                _run_tool([str(build_binary), *layout, str(arpa), str(result)])
            else:
                os.replace(arpa, result)
        if build_binary and unit == "word":  # a binary's words cannot be read back: the lexicon to decode it with
            with atomic_write(words_file(out)) as listing:
                listing.writelines(f"{word}\n" for word, _ in counts.most_common(kept_words))
    return LmBuildReport(out, sentences, sum(counts.values()), len(counts), kept_words, tuple(tally.excluded),
                         sum(s.books for s in tally.books))


def _default_vocabulary(vocabulary: CharVocabulary | None, language: str) -> CharVocabulary | None:
    """English text keeps to English's characters when no model's are given; another language keeps every word."""
    return CharVocabulary.english() if vocabulary is None and language == ENGLISH else vocabulary


def _check_build_request(order: int, out: str | Path, unit: str, quantize_bits: int | None) -> None:
    """Refuse, before reading any text, a build that lmplz, build_binary or the decoder cannot serve."""
    if not 1 <= order <= MAX_LM_ORDER:
        raise LanguageModelError(f"LM order {order}: flashlight-text's KenLM reads orders 1 to {MAX_LM_ORDER}")
    if quantize_bits is not None and not (out_is_binary(out) and 2 <= quantize_bits <= 25):
        raise LanguageModelError(f"{out}: quantising needs a .bin output and 2 to 25 bits, not {quantize_bits}")
    if unit == "char" and out_is_binary(out):
        raise LanguageModelError(f"{out}: write a character LM as ARPA; the decoder recognises it by its vocabulary")


def _write_corpus(sentences: Iterator[str], corpus: Path, unit: str, counts: Counter[str]) -> int:
    """lmplz's input, a sentence a line (a character LM's spelled out); counts its words; returns the sentences."""
    written = 0
    with open(corpus, "w", encoding="utf-8") as stream:
        for sentence in sentences:
            stream.write((char_lm_sentence(sentence) if unit == "char" else sentence) + "\n")
            counts.update(sentence.split())
            written += 1
    return written


def words_file(lm: str | Path) -> Path:
    """The word list written beside a binary word LM (``LM.words.txt``): its lexicon for decoding
    (``--lexicon``) and the words ``asr lm pronounce`` pronounces."""
    return Path(f"{lm}.words.txt")


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


def read_word_counts(path: str | Path, language: str = ENGLISH) -> dict[str, float]:
    """``word count`` per line (e.g. from scripts/make_wordlist.py), words normalised by ``language``'s rules."""
    counts: dict[str, float] = {}
    try:
        for line in read_text_lines(Path(path)):
            fields = line.split()
            if len(fields) >= 2:
                word = normalize_text(fields[0], language)
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
