"""What several commands share: exit codes, argument types, the decoding options and loading a recognizer."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports torch only for the commands that need it
    from asr.decoding.settings import DecodingSettings
    from asr.inference.recognizer import SpeechRecognizer

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2

MODEL_HELP = "checkpoint written by 'asr train', model folder ('asr package') or hf://ORG/NAME"


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def units_list(text: str) -> list[str]:
    units = [x.strip() for x in text.split(",") if x.strip()]
    if not units or set(units) - {"chars", "phones"}:
        raise argparse.ArgumentTypeError(f"{text!r}: chars, phones or chars,phones")
    return units


def output_file_problem(option: str, path: str) -> str | None:
    """Why ``path`` cannot be written as a file (checked before long work, which a late
    failure would lose), or None."""
    target = Path(path)
    if target.is_dir():
        return f"{option} {target} is a folder; give a file name"
    existing = target.parent  # missing folders are created when the file is written
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {target}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):  # the file is written as a temporary beside it, then renamed
        return f"{option} {target}: the folder {existing} is not writable"
    return None


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options of the commands that transcribe (transcribe, evaluate, serve), and --precision."""
    group = parser.add_argument_group(
        "decoding (default: greedy, or the settings `asr tune-lm` stored beside the checkpoint)")
    group.add_argument("--beam", type=int, metavar="N",
                       help="beam search with N hypotheses (default 50 with --lm/--lexicon)")
    group.add_argument("--lm", help="KenLM word LM (ARPA, .arpa.gz or binary) or character LM (ARPA, "
                       "`asr lm build --unit char`); implies beam search")
    group.add_argument("--lexicon", help="lexicon or word list limiting the words (default: the ARPA's words)")
    group.add_argument("--lm-weight", type=float, help="LM weight (default 1.0, or the tuned value)")
    group.add_argument("--word-score", type=float, help="score added per word (default 0, or the tuned value)")
    group.add_argument("--beam-threshold", type=float, help="prune hypotheses this far below the best (default 25)")
    group.add_argument("--units", choices=["chars", "phones"],
                       help="decode the character output (default), or the phone head through --lexicon, a "
                       "pronunciation lexicon (`asr lm pronounce`), with the word LM --lm")
    group.add_argument("--greedy", action="store_true", help="greedy decoding, ignoring tuned settings")
    group.add_argument("--no-lm", action="store_true", help="beam search without LM or lexicon (character level)")
    group.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="beam search worker processes (default: one per core)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="acoustic model arithmetic: bf16 autocast, or int8 dynamic quantisation (CPU)")


def decoding_settings(args: argparse.Namespace, model: str | Path | None = None) -> DecodingSettings:
    """Greedy, the tuned settings beside the checkpoint, or beam search from the flags
    (``model``: the checkpoint already resolved to a local file or folder)."""
    from asr.decoding.settings import DecodingSettings
    from asr.inference.recognizer import tuned_decoding

    if args.greedy:
        return DecodingSettings()
    settings, tuned = tuned_decoding(args.checkpoint if model is None else model)  # the library's rule
    if tuned:
        print(f"using tuned decoding settings from {tuned}", file=sys.stderr)
    overrides = {name: value for name, value in (("beam_size", args.beam), ("lm_weight", args.lm_weight),
                 ("word_score", args.word_score), ("beam_threshold", args.beam_threshold)) if value is not None}
    if overrides or args.lm or args.lexicon or args.no_lm or args.units:
        settings = replace(settings, method="beam", lm=args.lm or settings.lm, lexicon=args.lexicon or settings.lexicon,
                           beam=replace(settings.beam, **overrides), units=args.units or settings.units)
    if args.no_lm:
        settings = replace(settings, lm=None, lexicon=None, units="chars")
    return settings


def load_recognizer(args: argparse.Namespace) -> SpeechRecognizer:
    """The model of ``args.checkpoint`` with the decoding that :func:`decoding_settings` picks; what
    the library warns of, as one ``warning:`` line each, and the decoding used, on stderr."""
    from asr.inference.recognizer import DecodingFallbackWarning, load_model
    from asr.storage.hub import resolve_model
    from asr.utils.precision import PrecisionFallbackWarning

    model = resolve_model(args.checkpoint)  # once: hf:// is looked up in the Hub cache (or online)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore", DecodingFallbackWarning)  # reported below, as one line
        warnings.simplefilter("always", PrecisionFallbackWarning)
        recognizer = load_model(model, device=args.device, precision=args.precision,
                                decoding=decoding_settings(args, model), workers=args.workers)
    for warning in caught:  # as one line each, not Python's two-line warning format
        print(f"warning: {warning.message}", file=sys.stderr)
    if recognizer.decoding_problem:
        print(f"warning: {recognizer.decoding_problem}", file=sys.stderr)
    print(f"decoding: {recognizer.decoding.describe()}", file=sys.stderr)
    return recognizer
