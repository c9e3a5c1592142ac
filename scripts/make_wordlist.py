"""Write a word list for lexicon decoding (`--lexicon`): the most frequent English words from
the `wordfreq` package (PyPI; general web, subtitle, book and news text, no LibriSpeech), plus
the words of any training manifests.

    pip install wordfreq
    python scripts/make_wordlist.py --wordfreq 50000 --manifest exp/ls/train.jsonl exp/ls/words.txt

Normalised like the acoustic model's transcripts; words it cannot spell are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.data.text import CharVocabulary, normalize_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--wordfreq", type=int, default=50_000, help="top N English words (0 = none)")
    parser.add_argument("--manifest", action="append", default=[], help="add the words of these transcripts")
    parser.add_argument("--counts", action="store_true",
                        help="write 'word count' lines (wordfreq frequency per billion words; for `asr lm build "
                             "--unigram-counts`) instead of bare words")
    args = parser.parse_args()
    vocabulary = CharVocabulary.english()
    words: dict[str, None] = {}  # ordered set

    def add(raw: str) -> None:
        for word in normalize_text(raw).split():
            if not vocabulary.unknown_characters(word):
                words.setdefault(word)

    for manifest in args.manifest:
        for line in open(manifest, encoding="utf-8"):
            if line.strip():
                add(json.loads(line)["text"])
    from_manifests = len(words)
    if args.wordfreq:
        from wordfreq import top_n_list

        for word in top_n_list("en", args.wordfreq):
            add(word)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.counts:
        from wordfreq import word_frequency

        lines = [f"{w} {word_frequency(w, 'en') * 1e9:.1f}\n" for w in words]
    else:
        lines = [w + "\n" for w in words]
    Path(args.out).write_text("".join(lines), encoding="utf-8")
    print(f"{args.out}: {len(words)} words ({from_manifests} from manifests, "
          f"{len(words) - from_manifests} more from wordfreq top {args.wordfreq})")


if __name__ == "__main__":
    main()
