"""A general English word LM: CMU Sphinx's US English trigram model, converted to ARPA.

``en-us.lm.bin`` ships inside the ``pocketsphinx`` wheel (``pip install pocketsphinx``) and in
Debian's ``pocketsphinx-en-us`` (the same file): 72,547 words, 2.05 M bigrams, 1.67 M
trigrams, BSD-2-clause (Carnegie Mellon University, Alpha Cephei). Sphinx's own converters
cannot write it: its header claims 6 more bigrams than its trie holds, so
``sphinx_lm_convert`` fails an assertion and the wheel's ``NGramModel.write`` crashes near
the end of the bigrams. This reads the trie as sphinxbase's lm_trie.c, lm_trie_quant.c and
bitarr.c lay it out, and writes every n-gram it really holds, with the true counts.

The trie is stored reversed: unigram ``u`` -> middle word ``h`` -> longest word ``g`` is the
n-gram "g h u". Probabilities are logs base 1.0001 (sphinx's default), written as log10.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from asr.lm.lexicon import LanguageModelError
from asr.utils.atomic import atomic_write

MAGIC = b"Trie Language Model"
QUANTISER_BINS = 1 << 16  # sphinx quantises bigram probabilities and back-offs, and trigram probabilities, to 16 bits
LOG10_OF_BASE = math.log10(1.0001)  # sphinx's -logbase
DEBIAN_MODEL = Path("/usr/share/pocketsphinx/model/en-us")  # Debian's pocketsphinx-en-us


def find_en_us_file(name: str) -> Path | None:
    """A file of CMU Sphinx's en-us model (``en-us.lm.bin``, ``cmudict-en-us.dict``): from the
    installed pocketsphinx package, else Debian's pocketsphinx-en-us."""
    try:
        from pocketsphinx import get_model_path

        candidate = Path(get_model_path()) / "en-us" / name
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    return DEBIAN_MODEL / name if (DEBIAN_MODEL / name).is_file() else None


def find_sphinx_lm() -> Path | None:
    """en-us.lm.bin, the US English trigram."""
    return find_en_us_file("en-us.lm.bin")


def _bits_for(value: int) -> int:
    """Bits sphinx reserves for numbers up to ``value`` (bitarr_required_bits)."""
    return int(value).bit_length()


def _packed_field(data: np.ndarray, base: int, entry_bits: int, count: int, offset: int, width: int) -> np.ndarray:
    """Field ``[offset, offset + width)`` of ``count`` bit-packed entries of ``entry_bits`` each,
    read as little-endian 32-bit words from byte ``base`` (widths here are at most 25 bits)."""
    bit = np.arange(count, dtype=np.int64) * entry_bits + offset
    at = base + (bit >> 3)
    word = (data[at].astype(np.uint64) | data[at + 1].astype(np.uint64) << 8
            | data[at + 2].astype(np.uint64) << 16 | data[at + 3].astype(np.uint64) << 24)
    return ((word >> (bit & 7).astype(np.uint64)) & np.uint64((1 << width) - 1)).astype(np.int64)


def convert_sphinx_lm(source: str | Path, target: str | Path) -> tuple[int, int, int]:
    """Write the trigram trie ``source`` as an ARPA file ``target`` (atomically); the n-gram counts."""
    source = Path(source)
    try:
        raw = source.read_bytes()
    except OSError as err:
        raise LanguageModelError(f"{source}: cannot read ({err.strerror or err})") from err
    if not raw.startswith(MAGIC):
        raise LanguageModelError(f"{source}: not a Sphinx trie language model (no {MAGIC.decode()!r} header)")
    try:
        return _convert(raw, source, Path(target))
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as err:
        raise LanguageModelError(f"{source}: damaged Sphinx trie language model ({err})") from err


def _convert(raw: bytes, source: Path, target: Path) -> tuple[int, int, int]:
    position = len(MAGIC)
    order = raw[position]
    if order != 3:
        raise LanguageModelError(f"{source}: a {order}-gram model; only trigram models are read")
    header_counts = struct.unpack_from("<3I", raw, position + 1)
    position += 1 + 12 + 4  # order, counts, an unused int before the quantiser tables
    bins = np.frombuffer(raw, "<f4", 3 * QUANTISER_BINS, position)
    position += 4 * 3 * QUANTISER_BINS
    bigram_prob_bins, bigram_backoff_bins, trigram_prob_bins = np.split(bins, 3)
    words_count = header_counts[0]
    unigrams = np.frombuffer(raw, [("prob", "<f4"), ("backoff", "<f4"), ("next", "<u4")], words_count + 1, position)
    position += 12 * (words_count + 1)
    word_bits, next_bits = _bits_for(words_count), _bits_for(header_counts[2])
    middle_bits, longest_bits = word_bits + 16 + 16 + next_bits, word_bits + 16
    middle_base = position
    position += ((1 + header_counts[1]) * middle_bits + 7) // 8 + 8  # sphinx sizes each array from the header
    longest_base = position
    position += ((1 + header_counts[2]) * longest_bits + 7) // 8 + 8
    (names_bytes,) = struct.unpack_from("<i", raw, position)
    words = raw[position + 4 : position + 4 + names_bytes].split(b"\0")[:-1]
    if len(words) != words_count:
        raise LanguageModelError(f"{source}: {len(words)} word names for {words_count} unigrams")
    names = [w.decode("utf-8") for w in words]
    data = np.frombuffer(raw, np.uint8)

    unigram_next = unigrams["next"].astype(np.int64)  # (N + 1,): each unigram's first middle entry
    bigrams = int(unigram_next[-1])  # what the trie holds (the header may claim more)
    middle_word = _packed_field(data, middle_base, middle_bits, bigrams, 0, word_bits)
    middle_backoff = _packed_field(data, middle_base, middle_bits, bigrams, word_bits, 16)
    middle_prob = _packed_field(data, middle_base, middle_bits, bigrams, word_bits + 16, 16)
    middle_next = _packed_field(data, middle_base, middle_bits, bigrams + 1, word_bits + 32, next_bits)
    trigrams = int(middle_next[-1])
    if (np.diff(unigram_next) < 0).any() or (np.diff(middle_next) < 0).any():
        raise LanguageModelError(f"{source}: damaged Sphinx trie language model (pointers go backwards)")
    longest_word = _packed_field(data, longest_base, longest_bits, trigrams, 0, word_bits)
    longest_prob = _packed_field(data, longest_base, longest_bits, trigrams, word_bits, 16)

    # Reversed trie -> ARPA order: bigram "first last", trigram "first middle last".
    bigram_last = np.repeat(np.arange(words_count), np.diff(unigram_next))  # (bigrams,)
    bigram_first = middle_word
    trigram_of = np.repeat(np.arange(bigrams), np.diff(middle_next))  # (trigrams,): its middle entry
    trigram_last, trigram_middle, trigram_first = bigram_last[trigram_of], bigram_first[trigram_of], longest_word

    # Sphinx keeps no <unk>; written with the log10 probability KenLM would otherwise substitute
    # (and warn about at every load), so scores are the same.
    unknown = [] if "<unk>" in names else ["-100.0000\t<unk>\t0.0000\n"]
    with atomic_write(target) as out:
        out.write(f"\\data\\\nngram 1={words_count + len(unknown)}\nngram 2={bigrams}\nngram 3={trigrams}\n\n"
                  "\\1-grams:\n")
        out.writelines(unknown)
        probs = unigrams["prob"][:words_count].astype(np.float64) * LOG10_OF_BASE
        backoffs = unigrams["backoff"][:words_count].astype(np.float64) * LOG10_OF_BASE
        out.writelines(f"{p:.4f}\t{w}\t{b:.4f}\n" for p, w, b in zip(probs.tolist(), names, backoffs.tolist()))
        out.write("\n\\2-grams:\n")
        order = np.lexsort((bigram_last, bigram_first))
        probs = (bigram_prob_bins[middle_prob].astype(np.float64) * LOG10_OF_BASE)[order]
        backoffs = (bigram_backoff_bins[middle_backoff].astype(np.float64) * LOG10_OF_BASE)[order]
        out.writelines(f"{p:.4f}\t{names[a]} {names[b]}\t{bo:.4f}\n" for p, a, b, bo in zip(
            probs.tolist(), bigram_first[order].tolist(), bigram_last[order].tolist(), backoffs.tolist()))
        out.write("\n\\3-grams:\n")
        order = np.lexsort((trigram_last, trigram_middle, trigram_first))
        probs = (trigram_prob_bins[longest_prob].astype(np.float64) * LOG10_OF_BASE)[order]
        out.writelines(f"{p:.4f}\t{names[a]} {names[b]} {names[c]}\n" for p, a, b, c in zip(
            probs.tolist(), trigram_first[order].tolist(), trigram_middle[order].tolist(), trigram_last[order].tolist()))
        out.write("\n\\end\\\n")
    return words_count, bigrams, trigrams
