"""``asr lm text|build|perplexity|english|pronounce`` and ``asr tune-lm``: n-gram LMs, lexicons, LM decoding tuned."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from asr.cli.options import EXIT_OK, EXIT_USAGE, float_list, output_file_problem, units_list
from asr.config import check_language

if TYPE_CHECKING:  # the CLI imports torch only for the commands that need it
    from asr.data.text import CharVocabulary
    from asr.scoring.tune import TuningResult, TuningRow


def add_commands(commands: argparse._SubParsersAction) -> None:
    """lm (text, build, perplexity, english, pronounce), tune-lm."""
    lm = commands.add_parser("lm", help="language model tools").add_subparsers(dest="lm_command", required=True)
    lm_build = lm.add_parser("build", help="estimate an n-gram LM with KenLM's lmplz (scripts/build_kenlm.sh)")
    lm_build.add_argument("text", nargs="+", help="text files (one sentence per line), JSONL manifests, or folders "
                          "of plain-text books (*.txt: prose kept, headings dropped, numbers spoken)")
    lm_build.add_argument("--order", type=int, default=3, help="n-gram order, at most 6 (default 3; 6 suits a char LM)")
    lm_build.add_argument("--prune", type=int, nargs="*", help="lmplz --prune thresholds per order, e.g. 0 1 1")
    lm_build.add_argument("--unit", choices=["word", "char"], default="word",
                          help="word LM (lexicon decoding), or character LM: lexicon-free decoding that scores "
                               "every character, for spelling (CER) without forcing whole words")
    lm_build.add_argument("--unigram-counts", help="'word count' lines (e.g. scripts/make_wordlist.py --counts): "
                          "word LM: unseen words get a share of <unk>'s probability by count; "
                          "char LM: --sampled-words words drawn by count join the text")
    lm_build.add_argument("--sampled-words", type=int, default=1_000_000,
                          help="char LM with --unigram-counts: words to sample (default 1000000)")
    lm_build.add_argument("--exclude", nargs="+", default=[], metavar="MANIFEST",
                          help="leave out every book (or text line) sharing a 10-word run with these transcripts, "
                          "so that the LM never saw a test set's sentences")
    lm_build.add_argument("--vocab-size", type=int, help="word LM: keep only the N most frequent words (the rest "
                          "are <unk>), e.g. 200000 for a book corpus")
    lm_build.add_argument("--oov", nargs="+", default=[], metavar="MANIFEST",
                          help="report the out-of-vocabulary rate of these transcripts at several vocabulary sizes")
    lm_build.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                          help="processes reading folders of books (default: cores)")
    lm_build.add_argument("--quantize", type=int, metavar="BITS",
                          help=".bin output: KenLM's trie with BITS-bit probabilities (e.g. 8): a fifth of the size "
                          "and less memory in each decoding process")
    lm_build.add_argument("out", help="output model: .arpa, or .bin for a KenLM binary (needs --lexicon to decode)")
    add_language_arguments(lm_build, "its data.language normalises the text and words it cannot spell are left out")
    lm_build.set_defaults(func=cmd_lm_build)
    lm_text = lm.add_parser("text", help="normalise text files, manifests or folders of books once into LM "
                            "sentences (one a line), to build several LMs from with `asr lm build`")
    lm_text.add_argument("text", nargs="+", help="as for `asr lm build`")
    lm_text.add_argument("out", help="output text file")
    lm_text.add_argument("--exclude", nargs="+", default=[], metavar="MANIFEST",
                         help="leave out every book (or text line) sharing a 10-word run with these transcripts")
    lm_text.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                         help="processes reading folders of books (default: cores)")
    add_language_arguments(lm_text, "its data.language normalises the text and words it cannot spell are left out")
    lm_text.set_defaults(func=cmd_lm_text)
    lm_perplexity = lm.add_parser("perplexity", help="perplexity and out-of-vocabulary rate of a word LM on "
                                  "transcripts (KenLM's query: scripts/build_kenlm.sh)")
    lm_perplexity.add_argument("lm", help="ARPA or KenLM binary word LM")
    lm_perplexity.add_argument("manifests", nargs="+", help="JSONL manifests whose transcripts are scored")
    add_language_arguments(lm_perplexity, "its data.language normalises the transcripts as the LM text was")
    lm_perplexity.set_defaults(func=cmd_lm_perplexity)
    lm_english = lm.add_parser("english", help="a general US English word trigram LM (72 k words): CMU Sphinx's "
                               "en-us model from the pocketsphinx package, written as ARPA")
    lm_english.add_argument("out", help="output ARPA file")
    lm_english.add_argument("--source", help="the Sphinx trie model (default: pocketsphinx's en-us.lm.bin, "
                            "or Debian's pocketsphinx-en-us)")
    lm_english.set_defaults(func=cmd_lm_english)
    lm_pronounce = lm.add_parser("pronounce", help="a pronunciation lexicon of an LM's words (or a word list) in the "
                                 "phones of the phone head, from espeak-ng, for phone decoding (--units phones)")
    lm_pronounce.add_argument("words", help="an ARPA LM (its words) or a word list (first field of each line)")
    lm_pronounce.add_argument("out", help="output lexicon: 'word<TAB>phones' lines")
    lm_pronounce.add_argument("--cache", help="JSON cache of espeak-ng's output (default: OUT.espeak.json)")
    lm_pronounce.add_argument("--source", choices=("espeak", "cmudict", "both"), default="espeak",
                              help="espeak-ng (the training phones' source; default), CMUdict mapped to those phones "
                                   "(espeak-ng for words it lacks), or both pronunciations of every word")
    lm_pronounce.add_argument("--cmudict", help="CMUdict file (default: the copy in the pocketsphinx package)")
    add_language_arguments(lm_pronounce, "espeak-ng speaks its data.language, in its phone head's phones")
    lm_pronounce.set_defaults(func=cmd_lm_pronounce)
    add_tune_command(commands)


def add_tune_command(commands: argparse._SubParsersAction) -> None:
    """tune-lm."""
    tune = commands.add_parser("tune-lm", help="search LM weight and word score on a dev set; store the best")
    tune.add_argument("checkpoint")
    tune.add_argument("manifest", help="dev manifest (JSONL) with reference transcripts")
    tune.add_argument("--lm", required=True, help="KenLM word or character LM")
    tune.add_argument("--lexicon", help="lexicon or word list for the characters (default: the ARPA's words); with "
                      "--units phones alone, the pronunciation lexicon")
    tune.add_argument("--phone-lexicon", help="pronunciation lexicon for --units phones (`asr lm pronounce`)")
    tune.add_argument("--units", type=units_list, default=["chars"],
                      help="chars (default: the character output), phones (the phone head through --phone-lexicon) "
                      "or chars,phones: tune each and store the one that scores best (held out by speaker when "
                      "the manifest names two or more)")
    tune.add_argument("--lm-weights", type=float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
                      help="comma-separated grid (default 0,0.25,0.5,0.75,1,1.5,2)")
    tune.add_argument("--word-scores", type=float_list, default=[-2.0, -1.0, 0.0, 1.0, 2.0],
                      help="comma-separated grid, written --word-scores=-2,-1,0 (default -2,-1,0,1,2)")
    tune.add_argument("--metric", choices=["wer", "cer"], default="wer",
                      help="what the best pair minimises (default wer; cer suits a character LM)")
    tune.add_argument("--beam", type=int, default=100, help="beam size (default 100)")
    tune.add_argument("--beam-threshold", type=float, default=25.0)
    tune.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: cores)")
    tune.add_argument("--emissions-cache", help="keep the acoustic model's outputs here between runs (the phone "
                      "head's beside it: NAME.phones.pt for NAME.pt)")
    tune.add_argument("--out", help="settings file instead of the model's own: by default CHECKPOINT.decoding.yaml, "
                      "or for a model folder its decoding.yaml, with the LM and lexicon copied into the folder so "
                      "that it can still move (read by transcribe/evaluate); required for hf:// models")
    tune.add_argument("--device", default="cpu")
    tune.set_defaults(func=cmd_tune_lm)


def add_language_arguments(parser: argparse.ArgumentParser, model_use: str) -> None:
    """--model or --language: whose text rules (and phones) the command follows."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"the acoustic model (checkpoint or folder) this is for: {model_use}")
    which.add_argument("--language", default="en",
                       help="without --model: the language (ISO 639 code, as data.language; default en)")


def model_language(args: argparse.Namespace) -> tuple[str, CharVocabulary | None]:
    """The language of --model (and its characters), or --language's (no characters)."""
    if not args.model:
        return check_language(args.language, "--language"), None
    from asr.storage.model_folder import read_model  # torch: only when a model is named

    saved = read_model(args.model)
    return saved.config.data.language, saved.vocabulary


def cmd_lm_build(args: argparse.Namespace) -> int:
    from collections import Counter

    from asr.lm.books import HeldOutText
    from asr.lm.build import build_lm, oov_rates, read_word_counts

    language, vocabulary = model_language(args)
    counts = read_word_counts(args.unigram_counts, language) if args.unigram_counts else None
    held_out = HeldOutText.from_manifests(args.exclude, language) if args.exclude else None
    corpus_counts: Counter[str] = Counter()
    report = build_lm(args.text, args.order, args.out, vocabulary, prune=args.prune or (), unigram_counts=counts,
                      unit=args.unit, sampled_words=args.sampled_words, language=language, held_out=held_out,
                      vocab_size=args.vocab_size, workers=args.workers, counts=corpus_counts,
                      quantize_bits=args.quantize)
    unit = "character " if args.unit == "char" else ""
    books = f" of {report.books} books" if report.books else ""
    print(f"{report.path}: {unit}{args.order}-gram from {report.sentences} sentences{books}, {report.words} words, "
          f"{report.vocabulary} distinct" + (f", {report.kept_words} kept" if report.kept_words < report.vocabulary
                                              else ""))
    if held_out is not None:
        print(f"left out {len(report.excluded)} document(s) sharing a 10-word run with {', '.join(args.exclude)}"
              + "".join(f"\n  {name}" for name in report.excluded[:20]))
    if args.oov:
        sizes = sorted({s for s in (50_000, 100_000, 200_000, args.vocab_size) if s and s < report.vocabulary})
        rates = oov_rates(corpus_counts, args.oov, [*sizes, None], language)
        print("out-of-vocabulary rate of " + ", ".join(args.oov) + ": " + ", ".join(
            f"{'all ' + str(report.vocabulary) if size is None else size} words {100 * rate:.2f} %"
            for size, rate in rates.items()))
    return EXIT_OK


def cmd_lm_text(args: argparse.Namespace) -> int:
    from asr.lm.books import HeldOutText
    from asr.lm.build import write_lm_text

    language, vocabulary = model_language(args)
    held_out = HeldOutText.from_manifests(args.exclude, language) if args.exclude else None
    report = write_lm_text(args.text, args.out, vocabulary, language, held_out, args.workers)
    books = f" of {report.books} books" if report.books else ""
    print(f"{report.path}: {report.sentences} sentences{books}, {report.words} words")
    if held_out is not None:
        print(f"left out {len(report.excluded)} document(s) sharing a 10-word run with {', '.join(args.exclude)}"
              + "".join(f"\n  {name}" for name in report.excluded[:20]))
    return EXIT_OK


def cmd_lm_perplexity(args: argparse.Namespace) -> int:
    from asr.lm.perplexity import measure_perplexity

    language, _ = model_language(args)
    result = measure_perplexity(args.lm, args.manifests, language)
    print(f"{args.lm} on {', '.join(args.manifests)}: perplexity {result.including_oov:.1f} "
          f"({result.excluding_oov:.1f} without unknown words), out-of-vocabulary {100 * result.oov_rate:.2f} % "
          f"({result.oov_words} of {result.tokens - result.sentences} words, {result.sentences} transcripts)")
    return EXIT_OK


def cmd_lm_pronounce(args: argparse.Namespace) -> int:
    from asr.lm.pronunciations import pronounce_words, words_of, write_pronunciations

    language, _ = model_language(args)
    # espeak-ng's output differs by voice: another language's words are cached apart.
    cache = args.cache or (f"{args.out}.espeak.json" if language == "en" else f"{args.out}.espeak-{language}.json")
    lexicon, described = pronounce_words(words_of(args.words), args.source, args.cmudict, cache=cache,
                                         language=language)
    write_pronunciations(args.out, lexicon, language)
    readings = sum(len(s) for s in lexicon.spellings.values())
    print(f"{args.out}: {len(lexicon)} words, {readings} pronunciations by {described} in the phone head's phones"
          + (f"; {len(lexicon.skipped)} skipped" if lexicon.skipped else ""))
    return EXIT_OK


def cmd_lm_english(args: argparse.Namespace) -> int:
    from asr.lm.sphinx import convert_sphinx_lm, find_sphinx_lm

    source = Path(args.source) if args.source else find_sphinx_lm()
    if source is None:
        print("error: CMU Sphinx's en-us.lm.bin not found: pip install pocketsphinx (or apt-get install "
              "pocketsphinx-en-us), or name the file with --source", file=sys.stderr)
        return EXIT_USAGE
    words, bigrams, trigrams = convert_sphinx_lm(source, args.out)
    print(f"{args.out}: US English trigram LM from {source} ({words} words, {bigrams} bigrams, {trigrams} trigrams; "
          "BSD-2-clause, Carnegie Mellon University and Alpha Cephei)")
    return EXIT_OK


def cmd_tune_lm(args: argparse.Namespace) -> int:
    from asr.scoring.tune import TuningRequest, tune_model

    if args.out:  # checked before the work, which a late failure would lose
        problem = output_file_problem("--out", args.out)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    request = TuningRequest(args.lm, args.lm_weights, args.word_scores, args.beam, args.beam_threshold,
                            lexicon=args.lexicon, phone_lexicon=args.phone_lexicon, units=args.units,
                            metric=args.metric, workers=args.workers, emissions_cache=args.emissions_cache)
    outcome = tune_model(args.checkpoint, args.manifest, request, out=args.out, device=args.device,
                         progress=PrintedProgress())
    if len(outcome.results) > 1:
        held, compared = outcome.compared
        scores = ", ".join(f"{units} {100 * (chars if args.metric == 'cer' else words).rate:.2f} %"
                           for units, (words, chars) in compared.items())
        print(f"chosen: units {outcome.chosen} ({args.metric.upper()} "
              f"{'held out by speaker' if held else 'at the best pair'}: {scores})")
    if args.out:
        print(f"stored in {args.out}")
    else:
        copied = " (the LM and lexicon copied into the folder)" if outcome.copied else ""
        print(f"stored in {outcome.stored}{copied}: `asr transcribe`/`asr evaluate` with this model now use it "
              "(--greedy to not)")
    return EXIT_OK


class PrintedProgress:
    """:class:`asr.scoring.tune.TuningProgress` on the terminal: results on stdout, the rest on stderr."""

    def skipped(self, problem: str) -> None:
        print(f"warning: skipped {problem}", file=sys.stderr)

    def units(self, units: str) -> None:
        print(f"== units {units}")

    def cached(self, path: str) -> None:
        print(f"emissions from {path}", file=sys.stderr)

    def grid(self, utterances: int, lm_weights: Sequence[float], word_scores: Sequence[float]) -> None:
        print(f"{utterances} utterances; grid {len(lm_weights)} LM weights x {len(word_scores)} word scores")

    def row(self, row: TuningRow) -> None:
        print(f"  lm_weight {row.lm_weight:5.2f}  word_score {row.word_score:5.2f}  "
              f"WER {100 * row.words.rate:6.2f} %  CER {100 * row.chars.rate:6.2f} %", flush=True)

    def tuned(self, units: str, result: TuningResult) -> None:
        g, best = result.greedy, result.best_row
        if g is not None:
            print(f"greedy: WER {100 * g.words.rate:.2f} %, CER {100 * g.chars.rate:.2f} %")
        print(f"best:   WER {100 * best.words.rate:.2f} %, CER {100 * best.chars.rate:.2f} % at lm_weight "
              f"{best.lm_weight:g}, word_score {best.word_score:g} (beam {result.best.beam.beam_size})")
        if result.held_out is not None:
            held = result.held_out
            print(f"held out by speaker: WER {100 * held.words.rate:.2f} %, CER {100 * held.chars.rate:.2f} % "
                  f"(each of {len(held.choices)} speakers scored at the pair best on the others; "
                  f"LM weight/word score chosen: {held.summary()})")
