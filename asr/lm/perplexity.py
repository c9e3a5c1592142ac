"""How well a word LM predicts some transcripts: perplexity and out-of-vocabulary words, by KenLM's ``query``.

Perplexity is comparable between LMs only over the same words: an LM with a smaller
vocabulary maps more words to ``<unk>`` and can look better than it is. So both figures are
reported, as KenLM prints them: including the unknown words (each scored as ``<unk>``) and
excluding them, with the share of running words the LM does not know.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.data.manifest import read_manifest
from asr.data.text import ENGLISH, normalize_text
from asr.lm.build import find_kenlm_tool
from asr.lm.lexicon import LanguageModelError

# query's summary lines (``-v summary``), each "NAME:<TAB>VALUE".
_SUMMARY_FIELDS = {"Perplexity including OOVs": "including_oov", "Perplexity excluding OOVs": "excluding_oov",
                   "OOVs": "oov_words", "Tokens": "tokens"}


@dataclass(frozen=True)
class Perplexity:
    including_oov: float  # over every word and sentence end, unknown words scored as <unk>
    excluding_oov: float  # over the words the LM knows (and sentence ends)
    oov_words: int  # running words the LM does not know
    tokens: int  # words plus one sentence end per transcript, as KenLM counts them
    sentences: int  # transcripts scored

    @property
    def oov_rate(self) -> float:
        """Share of the running words (sentence ends not counted) the LM does not know."""
        words = self.tokens - self.sentences
        return self.oov_words / words if words else 0.0


def parse_query_summary(output: str, sentences: int) -> Perplexity:
    """The summary KenLM's ``query -v summary`` prints on stdout."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in _SUMMARY_FIELDS and value.strip():
            values[_SUMMARY_FIELDS[name.strip()]] = float(value)
    missing = [name for name, field in _SUMMARY_FIELDS.items() if field not in values]
    if missing:
        raise LanguageModelError(f"KenLM's query printed no {', '.join(missing)} (output: {output.strip()[:200]!r})")
    return Perplexity(values["including_oov"], values["excluding_oov"], int(values["oov_words"]),
                      int(values["tokens"]), sentences)


def measure_perplexity(lm: str | Path, manifests: Sequence[str | Path], language: str = ENGLISH) -> Perplexity:
    """Perplexity of ``lm`` (ARPA or KenLM binary) on the manifests' transcripts, normalised
    by ``language``'s rules as LM text is (:mod:`asr.lm.books`)."""
    if not Path(lm).is_file():
        raise LanguageModelError(f"{lm}: no such LM file")
    sentences = [text for m in manifests for u in read_manifest(m) if (text := normalize_text(u.text, language))]
    if not sentences:
        raise LanguageModelError(f"no transcripts in {', '.join(map(str, manifests))} to measure perplexity on")
    query = find_kenlm_tool("query")
    completed = subprocess.run([str(query), "-v", "summary", str(lm)], input=("\n".join(sentences) + "\n").encode(),
                               capture_output=True)
    if completed.returncode != 0:
        tail = completed.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise LanguageModelError(f"{lm}: KenLM's query failed (exit {completed.returncode}): " + " | ".join(tail))
    return parse_query_summary(completed.stdout.decode(errors="replace"), len(sentences))
