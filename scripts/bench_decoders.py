"""Our flashlight beam search against pyctcdecode on the same emissions, in one run.

    pip install -e .[bench]   # pyctcdecode + kenlm's Python module
    python scripts/bench_decoders.py CKPT DEV.jsonl --lm LM.arpa [--lexicon WORDS] [--out FILE.md]

Both decoders run in this process on one thread, over emissions computed once. The LM
weight and word score are ours (from ``asr tune-lm``, or the flags); pyctcdecode gets the
same weighting by default: it scales KenLM's log10 scores to natural log before its alpha,
so alpha = lm_weight / ln(10), and its beta is the same per-word score; --peer-alpha and
--peer-beta give it its own tuned pair. Each decoder's WER is reported beside its speed,
since "faster" only counts at equal accuracy.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.data.manifest import read_manifest  # noqa: E402
from asr.decoding.beam import BeamSearchDecoder, BeamSearchOptions
from asr.decoding.settings import DecodingSettings, load_decoding_settings
from asr.decoding.greedy import GreedyDecoder
from asr.lm.lexicon import arpa_vocabulary, read_lexicon  # noqa: E402
from asr.inference.recognizer import load_model  # noqa: E402
from asr.scoring.tune import compute_emissions, fingerprint, score  # noqa: E402


def timed(decode, matrices, repeats: int) -> tuple[list[str], float]:
    """Texts and the median over repeats of the mean milliseconds per utterance."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        texts = [decode(m) for m in matrices]
        runs.append((time.perf_counter() - start) * 1000 / len(matrices))
    return texts, statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("manifest")
    parser.add_argument("--lm", required=True, help="ARPA word LM")
    parser.add_argument("--lexicon", help="lexicon / word list (default: the ARPA's words)")
    parser.add_argument("--lm-weight", type=float, help="default: the checkpoint's tuned value, else 1.0")
    parser.add_argument("--word-score", type=float, help="default: the checkpoint's tuned value, else 0")
    parser.add_argument("--peer-alpha", type=float, help="pyctcdecode's alpha (default: lm_weight / ln 10)")
    parser.add_argument("--peer-beta", type=float, help="pyctcdecode's beta (default: word score)")
    parser.add_argument("--beams", default="10,50,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pyctcdecode import build_ctcdecoder

    tuned = Path(args.checkpoint + ".decoding.yaml")
    settings = load_decoding_settings(tuned) if tuned.is_file() else None
    lm_weight = args.lm_weight if args.lm_weight is not None else (settings.beam.lm_weight if settings else 1.0)
    word_score = args.word_score if args.word_score is not None else (settings.beam.word_score if settings else 0.0)

    recognizer = load_model(args.checkpoint, decoding=DecodingSettings())  # emissions only
    recognizer.window_seconds = math.inf  # whole utterances: one matrix (and one text) each
    utterances = read_manifest(args.manifest)
    emissions = compute_emissions(recognizer, utterances, fingerprint(args.checkpoint, utterances))
    matrices = emissions.matrices
    vocabulary = recognizer.vocabulary
    lexicon = read_lexicon(args.lexicon, vocabulary) if args.lexicon else None
    words = list(lexicon.spellings) if lexicon else arpa_vocabulary(args.lm)
    labels = ["" if token == vocabulary.tokens[vocabulary.blank_id] else token for token in vocabulary.tokens]

    rows = []

    def add(name: str, beam: int | str, lm: bool, texts: list[str], ms: float) -> None:
        row = score(emissions, texts)
        rows.append((name, beam, "yes" if lm else "no", ms, 100 * row.words.rate, 100 * row.chars.rate))
        print(f"{name:12s} beam {beam!s:>4} LM {rows[-1][2]:3s} {ms:8.2f} ms/utt  WER {rows[-1][4]:6.2f} %", flush=True)

    greedy = GreedyDecoder(vocabulary)
    texts, ms = timed(lambda m: greedy.decode_matrix(m)[0].text, matrices, args.repeats)
    add("greedy", "-", False, texts, ms)
    ours_free = BeamSearchDecoder(vocabulary, BeamSearchOptions())
    ours_lm = BeamSearchDecoder(vocabulary, BeamSearchOptions(lm_weight=lm_weight, word_score=word_score),
                                lm=args.lm, lexicon=lexicon)
    peer_free = build_ctcdecoder(labels)
    alpha = args.peer_alpha if args.peer_alpha is not None else lm_weight / math.log(10)
    beta = args.peer_beta if args.peer_beta is not None else word_score
    peer_lm = build_ctcdecoder(labels, kenlm_model_path=args.lm, unigrams=words, alpha=alpha, beta=beta)
    for beam in [int(b) for b in args.beams.split(",")]:
        for with_lm, ours, peer in ((False, ours_free, peer_free), (True, ours_lm, peer_lm)):
            ours_beam = ours.with_options(BeamSearchOptions(beam_size=beam, lm_weight=lm_weight, word_score=word_score))
            texts, ms = timed(lambda m: ours_beam.decode_matrix(m)[0].text, matrices, args.repeats)
            add("asr", beam, with_lm, texts, ms)
            texts, ms = timed(lambda m: peer.decode(m, beam_width=beam), matrices, args.repeats)
            add("pyctcdecode", beam, with_lm, texts, ms)

    audio_minutes = sum(m.shape[0] for m in matrices) * recognizer.seconds_per_step / 60
    lines = [
        f"Decoding the same emissions: {len(matrices)} utterances ({audio_minutes:.1f} min) of `{args.manifest}`, "
        f"one thread, median of {args.repeats} runs. LM `{args.lm}` ({len(words)} lexicon words), "
        f"ours: LM weight {lm_weight:g}, word score {word_score:g}; pyctcdecode: alpha {alpha:.3f}, beta {beta:g}. "
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| decoder | beam | LM | ms / utterance | WER % | CER % |",
        "|---|---:|:-:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {b} | {lm} | {ms:.2f} | {wer:.2f} | {cer:.2f} |" for n, b, lm, ms, wer, cer in rows]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
