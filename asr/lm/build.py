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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asr.data.text import CharVocabulary, normalize_text
from asr.lm.lexicon import LanguageModelError, char_lm_sentence, read_text_lines
from asr.utils.atomic import atomic_path, atomic_write

# Where scripts/build_kenlm.sh installs lmplz and build_binary.
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
            for line in read_text_lines(path):
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
        for line in read_text_lines(Path(path)):
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
