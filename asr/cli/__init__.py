"""The ``asr`` command line: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports torch only for the commands that need it
    from asr.inference.streaming import StreamUpdate
    from asr.inference.recognizer import SpeechRecognizer, Transcription

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.data.dataset import scan_librispeech, split_by_speaker, write_manifest

    report = scan_librispeech(args.data_dir)
    for label, items in (("missing audio", report.missing_audio), ("no transcript", report.missing_transcripts),
                         ("unreadable audio", report.unreadable), ("a bad transcript line (skipped)", report.bad_lines)):
        if items:
            print(f"{len(items)} with {label}:", file=sys.stderr)
            for item in items[:20]:
                print(f"  {item}", file=sys.stderr)
            if len(items) > 20:
                print(f"  ... and {len(items) - 20} more", file=sys.stderr)
    utterances = report.utterances
    if not utterances:
        print(f"error: no utterances found under {args.data_dir}", file=sys.stderr)
        return EXIT_FAILURES
    outputs = [(args.out, utterances)]
    if args.dev_out:
        held_out = args.dev_speaker_ids.split(",") if args.dev_speaker_ids else args.dev_speakers
        try:
            train, dev = split_by_speaker(utterances, held_out, seed=args.seed)
        except ValueError as err:  # too many or unknown speakers: the flags' fault
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        outputs = [(args.out, train), (args.dev_out, dev)]
    if args.speed_perturb:
        from asr.data.librispeech import speed_perturbed

        # Only the training part: dev and test sets are scored on the audio as recorded.
        outputs[0] = (args.out, speed_perturbed(outputs[0][1]))
    for path, items in outputs:
        write_manifest(path, items)
        speakers = sorted({u.speaker for u in items})
        hours = sum(u.duration for u in items) / 3600
        print(f"{path}: {len(items)} utterances, {hours:.2f} h, {len(speakers)} speakers ({' '.join(speakers)})")
    return EXIT_OK


def cmd_prepare_librispeech(args: argparse.Namespace) -> int:
    from asr.data.librispeech import prepare_librispeech

    manifests = prepare_librispeech(args.subsets, args.dest, mirror=args.mirror,
                                    speed_perturb=args.speed_perturb, lm=args.lm)
    for name, path in manifests.items():
        print(f"{name}: {path}")
    return EXIT_OK


def cmd_average(args: argparse.Namespace) -> int:
    from asr.storage.checkpoint import average_checkpoints, save_checkpoint

    paths = list(args.checkpoints)
    if args.last:
        if len(paths) != 1 or not Path(paths[0]).is_dir():
            print("error: --last N takes one experiment folder holding epoch-N.pt files", file=sys.stderr)
            return EXIT_USAGE
        found = sorted(Path(paths[0]).glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if len(found) < args.last:
            print(f"error: {paths[0]} holds {len(found)} epoch checkpoints, fewer than {args.last} "
                  "(train with train.keep_epoch_checkpoints=N)", file=sys.stderr)
            return EXIT_USAGE
        paths = found[-args.last :]
    save_checkpoint(args.out, average_checkpoints(paths))
    print(f"{args.out}: average of {', '.join(str(p) for p in paths)}")
    return EXIT_OK


def cmd_package(args: argparse.Namespace) -> int:
    from asr.deploy.package import PackageError, package_model, push_to_hub

    evaluations = {}
    for item in args.eval:
        set_name, sep, manifest = item.partition("=")
        if not sep or not set_name or not manifest:
            raise PackageError(f"--eval {item!r}: write NAME=MANIFEST, e.g. dev-clean=data/dev-clean.jsonl")
        evaluations[set_name] = manifest
    report = package_model(args.checkpoint, args.out_dir, evaluations, sample=args.sample, license=args.license,
                           datasets=args.dataset, name=args.name)
    print(f"{report.folder}: {', '.join(report.files)}")
    for result in report.evaluations:
        print(f"  {result.name}: WER {100 * result.wer:.2f} %, CER {100 * result.cer:.2f} % "
              f"({result.utterances} utterances, decoding: {report.decoding})")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(report.folder, args.push_to_hub, private=args.private)}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.training.loop import train

    config = load_config(args.config, args.overrides)
    state = train(config)
    best = "no validation set" if state.best_cer == float("inf") else f"best valid CER {100 * state.best_cer:.2f} %"
    print(f"finished: {state.step} steps, {state.epoch} epochs, {best}; checkpoints in {config.train.out_dir}")
    return EXIT_OK


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (default: greedy, or the settings `asr tune-lm` stored beside the checkpoint)")
    group.add_argument("--beam", type=int, metavar="N", help="beam search with N hypotheses (default 50 with --lm/--lexicon)")
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


def decoding_settings(args: argparse.Namespace, model: str | Path | None = None):
    """Greedy, the tuned settings beside the checkpoint, or beam search from the flags
    (``model``: the checkpoint already resolved to a local file or folder)."""
    from dataclasses import replace

    from asr.decoding.beam import DecodingSettings
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


def load_recognizer(args: argparse.Namespace):
    from asr.deploy.package import resolve_model
    from asr.inference.recognizer import DecodingFallbackWarning, load_model

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


def cmd_inspect(args: argparse.Namespace) -> int:
    from asr.decoding.beam import DecodingSettings
    from asr.inspect.gates import trace_file, write_json
    from asr.inspect.figures import write_figures
    from asr.inference.recognizer import load_model

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out {out_dir} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    # fp32 and greedy: the trace runs the float weights step by step and shows the greedy path.
    recognizer = load_model(args.checkpoint, device=args.device, decoding=DecodingSettings())
    trace = trace_file(recognizer, args.file)
    written = [write_json(trace, out_dir / "inspect.json"), *write_figures(trace, out_dir)]
    print(f"transcript (greedy): {trace.transcript}", file=sys.stderr)
    for path in written:
        print(path)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from asr.serving.app import ServerOptions, create_app, exposure_warning, serve

    if args.max_upload_mb <= 0 or args.max_queue < 0 or args.max_live < 0:
        print("error: --max-upload-mb must be > 0, --max-queue and --max-live >= 0", file=sys.stderr)
        return EXIT_USAGE
    warning = exposure_warning(args.host)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    recognizer = load_recognizer(args)
    name = args.model_name or Path(args.checkpoint.rstrip("/")).name
    options = ServerOptions(max_upload_mb=args.max_upload_mb, max_queue=args.max_queue, model_name=name,
                            max_live=args.max_live)
    print(f"asr serve: the page is at http://{args.host}:{args.port}/ (API under /v1)", file=sys.stderr)
    serve(create_app(recognizer, options), host=args.host, port=args.port)
    return EXIT_OK


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.utils.atomic import atomic_write
    from asr.inference.writers import json_record, output_names, render

    if args.format in ("srt", "vtt") and len(args.files) > 1 and not args.output_dir:
        print(f"error: --format {args.format} with several files needs --output-dir", file=sys.stderr)
        return EXIT_USAGE
    targets: list[Path] = []
    if args.output_dir:  # checked before any transcription: a late failure would lose every result
        out_dir = Path(args.output_dir)
        if out_dir.exists() and not out_dir.is_dir():
            print(f"error: --output-dir {out_dir} exists and is not a folder", file=sys.stderr)
            return EXIT_USAGE
        targets = [out_dir / name for name in output_names(args.files, args.format)]
        try:
            for folder in sorted({t.parent for t in targets}):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"error: cannot create the output folder: {err}", file=sys.stderr)
            return EXIT_USAGE
    recognizer = load_recognizer(args)

    def output(index: int, result: Transcription, delays: tuple[float, ...] | None = None) -> bool:
        """Write or print one file's result as soon as it is done; whether it failed."""
        for warning in result.warnings:
            print(f"warning: {result.path}: {warning}", file=sys.stderr)
        if not result.ok:
            print(f"error: {result.path}: {result.error}", file=sys.stderr)
            if args.format == "json":
                print(json.dumps(json_record(result), ensure_ascii=False))
            return True
        if targets:
            try:
                with atomic_write(targets[index]) as out:
                    out.write(render(result, args.format, delays))
            except OSError as err:  # e.g. disk full: report, keep the other results
                print(f"error: {result.path}: cannot write {targets[index]}: {err}", file=sys.stderr)
                return True
        elif args.format == "text" and len(args.files) > 1:
            print(f"{result.path}\t{result.text}")
        else:
            print(render(result, args.format, delays), end="")
        sys.stdout.flush()
        return False

    failures = 0
    if args.stream:
        if recognizer.streaming_problem:
            print(f"error: {args.checkpoint}: --stream: {recognizer.streaming_problem}", file=sys.stderr)
            return EXIT_USAGE
        for index, path in enumerate(args.files):  # paced streaming takes real time: each file's output at once
            failures += output(index, *stream_to_terminal(recognizer, path, args))
    else:
        for index, result in enumerate(recognizer.transcribe(args.files)):
            failures += output(index, result)
    return EXIT_FAILURES if failures else EXIT_OK


def stream_to_terminal(recognizer: SpeechRecognizer, path: str,
                       args: argparse.Namespace) -> tuple[Transcription, tuple[float, ...] | None]:
    """``asr transcribe --stream``: one file through the streaming model, its partial text on
    stderr as it changes (rewritten in place on a terminal). The result and the per-word delays
    (None when the file failed)."""
    from asr.data.audio import AudioError
    from asr.inference.streaming import stream_file
    from asr.inference.recognizer import Transcription

    terminal = sys.stderr.isatty()
    shown = ""

    def show(update: StreamUpdate) -> None:
        nonlocal shown
        if update.text == shown:
            return
        shown = update.text
        line = f"[{update.seconds:7.2f} s] {update.text}"
        if terminal:  # the last line's tail, rewritten in place
            width = shutil.get_terminal_size().columns - 1
            print("\r\033[K" + (line if len(line) <= width else "…" + line[-width + 1:]), end="", file=sys.stderr,
                  flush=True)
        else:
            print(line, file=sys.stderr)

    try:
        streamed = stream_file(recognizer, path, args.piece_ms / 1000, pace=not args.no_pace, on_update=show)
    except AudioError as err:
        return Transcription(path, error=err.reason), None
    except (RuntimeError, ValueError) as err:  # e.g. out of memory: this file fails, the others go on
        return Transcription(path, error=f"recognition failed: {err}"), None
    finally:
        if terminal and shown:
            print(file=sys.stderr)
    delays = streamed.delays
    if delays:
        kind = "wall time, paced" if streamed.paced else "audio time"
        print(f"{path}: word emission delay ({kind}): median {statistics.median(delays):.3f} s, "
              f"max {max(delays):.3f} s", file=sys.stderr)
    return streamed.result.transcription, delays


def write_utterance_scores(path: str, report) -> None:
    """One JSON line per utterance: id, reference, hypothesis and its error counts."""
    from asr.utils.atomic import atomic_write

    with atomic_write(path) as out:
        for score in report.scores:
            record = {"id": score.id, "reference": score.reference, "hypothesis": score.hypothesis}
            for unit, counts in (("word", score.words), ("char", score.chars)):
                record[unit] = {"errors": counts.errors, "length": counts.reference_length, "sub": counts.substitutions,
                                "del": counts.deletions, "ins": counts.insertions}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.utils.atomic import atomic_write
    from asr.scoring.evaluate import evaluate_manifest

    for option, path in (("--report", args.report), ("--utterances", args.utterances)):
        problem = path and output_file_problem(option, path)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    recognizer = load_recognizer(args)
    report = evaluate_manifest(recognizer, args.manifest)
    for problem in report.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = f"{args.checkpoint} on {args.manifest}, decoding: {recognizer.decoding.describe()}\n" + report.format(worst=args.worst)
    print(text)  # first: the report survives whatever happens to the files below
    unwritten = 0
    if args.report:
        try:
            with atomic_write(args.report) as out:
                out.write(text + "\n")
            print(f"report written to {args.report}", file=sys.stderr)
        except OSError as err:  # e.g. disk full or permissions changed during the evaluation
            unwritten += 1
            print(f"error: cannot write the report to {args.report}: {err}", file=sys.stderr)
    if args.utterances:
        try:
            write_utterance_scores(args.utterances, report)
        except OSError as err:
            unwritten += 1
            print(f"error: cannot write per-utterance scores to {args.utterances}: {err}", file=sys.stderr)
    return EXIT_OK if report.complete and not unwritten else EXIT_FAILURES


def cmd_lm_build(args: argparse.Namespace) -> int:
    from asr.lm.lexicon import build_lm, read_word_counts

    counts = read_word_counts(args.unigram_counts) if args.unigram_counts else None
    report = build_lm(args.text, args.order, args.out, prune=args.prune or (), unigram_counts=counts,
                      unit=args.unit, sampled_words=args.sampled_words)
    unit = "character " if args.unit == "char" else ""
    print(f"{report.path}: {unit}{args.order}-gram from {report.sentences} sentences, {report.words} words, "
          f"{report.vocabulary} distinct")
    return EXIT_OK


def cmd_lm_pronounce(args: argparse.Namespace) -> int:
    from asr.lm.lexicon import LanguageModelError
    from asr.lm.pronunciations import cmudict_pronunciations, espeak_pronunciations, find_cmudict, read_cmudict, \
        words_of, write_pronunciations
    from asr.data.text import normalize_text

    if args.cmudict and args.source == "espeak":
        print("error: --cmudict needs --source cmudict or --source both", file=sys.stderr)
        return EXIT_USAGE
    cmudict_path = Path(args.cmudict) if args.cmudict else (find_cmudict() if args.source != "espeak" else None)
    if args.source != "espeak" and cmudict_path is None:
        print("error: CMUdict not found: pip install pocketsphinx (its cmudict-en-us.dict), or name the file with "
              "--cmudict", file=sys.stderr)
        return EXIT_USAGE
    cmudict = read_cmudict(cmudict_path) if cmudict_path else None  # a bad file fails now, not after espeak-ng
    words = words_of(args.words)
    # espeak-ng pronounces every word, or with --source cmudict only those CMUdict lacks.
    to_espeak = [w for w in words if cmudict is None or args.source == "both"
                 or normalize_text(w) not in cmudict.spellings]
    try:
        espeak = espeak_pronunciations(to_espeak, args.cache or f"{args.out}.espeak.json") if to_espeak else None
    except LanguageModelError:
        if cmudict is None:
            raise
        espeak = None  # none of CMUdict's missing words is pronounceable: CMUdict alone
    if cmudict is None:
        lexicon, described = espeak, "espeak-ng"
    else:
        lexicon = cmudict_pronunciations(words, cmudict, espeak, keep_fallback=args.source == "both")
        licence = "; BSD-2-clause, Carnegie Mellon University" if cmudict_path == find_cmudict() else ""
        described = f"CMUdict ({cmudict_path}{licence})" + (
            " and espeak-ng" if args.source == "both" else ", espeak-ng for the words it lacks")
    write_pronunciations(args.out, lexicon)
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
    from asr.decoding.beam import BeamSearchOptions, DecodingSettings, save_decoding_settings
    from asr.data.manifest import ManifestError, read_manifest_lines
    from asr.deploy.package import resolve_model, store_tuned_settings, tuned_settings_target
    from asr.inference.recognizer import load_model
    from asr.scoring.tune import (TuningResult, best_tuning, compared_scores, compute_emissions, fingerprint, load_emissions,
                          save_emissions, tune_lm)

    if args.out:
        problem = output_file_problem("--out", args.out)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    else:
        tuned_settings_target(args.checkpoint)  # refuses hf:// before the work, not after
    tuned_units = list(dict.fromkeys(args.units))
    # A pronunciation lexicon for the phones: --phone-lexicon, or --lexicon when phones are all that is tuned.
    phone_lexicon = args.phone_lexicon or (args.lexicon if tuned_units == ["phones"] else None)
    if "phones" in tuned_units and not phone_lexicon:
        print("error: --units phones needs a pronunciation lexicon (`asr lm pronounce LM OUT`): --phone-lexicon "
              "(or --lexicon when only phones are tuned)", file=sys.stderr)
        return EXIT_USAGE
    reading = read_manifest_lines(args.manifest)
    for problem in reading.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if not reading.utterances:
        raise ManifestError(f"{args.manifest}: no utterance to tune on")
    utterances = reading.utterances
    model = resolve_model(args.checkpoint)  # once: hf:// is looked up in the Hub cache (or online)
    recognizer = load_model(model, device=args.device, decoding=DecodingSettings())  # emissions only
    if "phones" in tuned_units and recognizer.model.phone_output is None:
        print(f"error: {args.checkpoint}: --units phones needs a model trained with a phone head "
              "(model.phone_ctc_weight > 0)", file=sys.stderr)
        return EXIT_USAGE
    speaker_of = {u.id: u.speaker for u in utterances}  # the manifest's, never a cache's: held-out scoring
    resolve = lambda p: str(Path(p).resolve()) if p else None  # noqa: E731  (settings outlive the cwd)

    def show(row) -> None:
        print(f"  lm_weight {row.lm_weight:5.2f}  word_score {row.word_score:5.2f}  "
              f"WER {100 * row.words.rate:6.2f} %  CER {100 * row.chars.rate:6.2f} %", flush=True)

    results: dict[str, TuningResult] = {}
    for units in tuned_units:
        if len(tuned_units) > 1:
            print(f"== units {units}")
        recognizer.units = units  # which output the emissions come from
        identity = fingerprint(model, utterances, recognizer.window_seconds, units)
        # One cache per output: the characters' at the path given, the phones' beside it.
        cache = args.emissions_cache
        if cache and units != "chars":
            cache = str(Path(cache).with_suffix(f".{units}{Path(cache).suffix}"))
        emissions = load_emissions(cache, identity) if cache else None
        if emissions is None:
            labels = [f"{args.manifest}:{n}" for n in reading.line_numbers]
            emissions = compute_emissions(recognizer, utterances, identity, labels)
            if cache:
                save_emissions(cache, emissions)
        else:
            print(f"emissions from {cache}", file=sys.stderr)
        emissions.speakers = [speaker_of.get(i, "") for i in emissions.ids]
        for failure in emissions.failed:
            print(f"warning: skipped {failure}", file=sys.stderr)
        if not emissions.ids:
            raise ManifestError(f"{args.manifest}: none of its utterances could be scored")
        lexicon = phone_lexicon if units == "phones" else args.lexicon
        base = DecodingSettings("beam", resolve(args.lm), resolve(lexicon),
                                BeamSearchOptions(beam_size=args.beam, beam_threshold=args.beam_threshold), units)
        print(f"{len(emissions.ids)} utterances; grid {len(args.lm_weights)} LM weights x "
              f"{len(args.word_scores)} word scores")
        result = results[units] = tune_lm(emissions, recognizer.vocabulary, base, args.lm_weights, args.word_scores,
                                          args.workers, progress=show, metric=args.metric)
        g, best = result.greedy, result.best_row
        if g is not None:
            print(f"greedy: WER {100 * g.words.rate:.2f} %, CER {100 * g.chars.rate:.2f} %")
        print(f"best:   WER {100 * best.words.rate:.2f} %, CER {100 * best.chars.rate:.2f} % at lm_weight "
              f"{best.lm_weight:g}, word_score {best.word_score:g} (beam {args.beam})")
        if result.held_out is not None:
            held = result.held_out
            print(f"held out by speaker: WER {100 * held.words.rate:.2f} %, CER {100 * held.chars.rate:.2f} % "
                  f"(each of {len(held.choices)} speakers scored at the pair best on the others; "
                  f"LM weight/word score chosen: {held.summary()})")
    chosen = best_tuning(results, args.metric)
    if len(results) > 1:
        held, compared = compared_scores(results)  # what best_tuning compared
        scores = ", ".join(f"{units} {100 * (chars if args.metric == 'cer' else words).rate:.2f} %"
                           for units, (words, chars) in compared.items())
        print(f"chosen: units {chosen} ({args.metric.upper()} {'held out by speaker' if held else 'at the best pair'}: "
              f"{scores})")
    if args.out:
        save_decoding_settings(args.out, results[chosen].best)
        print(f"stored in {args.out}")
    else:
        out = store_tuned_settings(model, results[chosen].best)
        copied = " (the LM and lexicon copied into the folder)" if Path(model).is_dir() else ""
        print(f"stored in {out}{copied}: `asr transcribe`/`asr evaluate` with this model now use it (--greedy to not)")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from asr.deploy.export import export_onnx, export_streaming_onnx, export_torchscript

    fmt = args.format or ("onnx" if args.out.endswith(".onnx") else "torchscript")
    if args.streaming or (fmt == "onnx" and _direction(args.checkpoint) == "latency_controlled"):
        if fmt != "onnx":
            print("error: the streaming step is exported as ONNX (an .onnx file or --format onnx)", file=sys.stderr)
            return EXIT_USAGE
        path = export_streaming_onnx(args.checkpoint, args.out)
        print(f"{path}: onnx streaming step, frames (B, N, n_mels) + num_frames (B,) + state -> log_probs "
              "(B, chunk, V) + next state (see asr/deploy/export.py StreamingStep)")
        return EXIT_OK
    path = export_onnx(args.checkpoint, args.out) if fmt == "onnx" else export_torchscript(args.checkpoint, args.out)
    print(f"{path}: {fmt}, waveforms (B, S) + lengths (B,) -> log_probs (B, T, V) + output_lengths (B,)")
    return EXIT_OK


def _direction(model: str) -> str:
    from asr.deploy.package import read_model, resolve_model

    return read_model(resolve_model(model)).config.model.direction


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


MODEL_HELP = "checkpoint written by 'asr train', model folder ('asr package') or hf://ORG/NAME"


def build_parser() -> argparse.ArgumentParser:
    from asr.version import __version__

    parser = argparse.ArgumentParser(prog="asr", description="BiLSTM-CTC speech recognition.")
    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="build a JSONL manifest from a LibriSpeech-layout folder")
    prepare.add_argument("data_dir", help="folder holding */*.trans.txt beside the audio files")
    prepare.add_argument("out", help="output manifest (JSONL); the training part when splitting")
    prepare.add_argument("--dev-out", help="also write a speaker-disjoint dev manifest here")
    prepare.add_argument("--dev-speakers", type=int, default=1, help="number of speakers to hold out (default 1)")
    prepare.add_argument("--dev-speaker-ids", help="comma-separated speaker ids to hold out instead")
    prepare.add_argument("--seed", type=int, default=0, help="seed for choosing held-out speakers")
    prepare.add_argument("--speed-perturb", action="store_true",
                         help="write 0.9/1.0/1.1 speed copies of the training utterances (not of --dev-out)")
    prepare.set_defaults(func=cmd_prepare)

    librispeech = commands.add_parser(
        "prepare-librispeech",
        help="download LibriSpeech / Libri-Light subsets and write manifests (also: asr prepare librispeech)",
    )
    librispeech.add_argument("--subsets", nargs="+", required=True,
                             help="e.g. dev-clean test-clean train-clean-100 train-960 librilight-10h dev-clean-2")
    librispeech.add_argument("--dest", required=True, help="folder for archives, extracted audio and manifests")
    librispeech.add_argument("--mirror", help="base URL holding the archives by file name, instead of the official servers")
    librispeech.add_argument("--speed-perturb", action="store_true", help="also write 0.9/1.0/1.1 speed-perturbed manifests")
    librispeech.add_argument("--lm", action="store_true", help="also download the official n-gram LMs, vocabulary and lexicon")
    librispeech.set_defaults(func=cmd_prepare_librispeech)

    average = commands.add_parser("average", help="average the weights of several checkpoints")
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, or one experiment folder with --last")
    average.add_argument("--last", type=int, default=0, help="average the last N epoch-N.pt of the folder")
    average.add_argument("--out", required=True, help="output checkpoint")
    average.set_defaults(func=cmd_average)

    package = commands.add_parser("package", help="write a model folder (safetensors, model card) for sharing")
    package.add_argument("checkpoint", help="checkpoint (its CHECKPOINT.decoding.yaml and the LM it names come along)")
    package.add_argument("out_dir", help="new folder to write (must not exist)")
    package.add_argument("--eval", action="append", default=[], metavar="NAME=MANIFEST",
                         help="measure WER/CER on this manifest for the model card (repeatable)")
    package.add_argument("--sample", help="an audio file of at most 30 s to include (transcribed in the model card)")
    package.add_argument("--license", default="apache-2.0", help="model card license id (default apache-2.0)")
    package.add_argument("--dataset", action="append", default=[], help="training dataset id for the model card "
                         "(repeatable), e.g. librispeech_asr")
    package.add_argument("--name", help="model name in the card (default: the folder's name)")
    package.add_argument("--push-to-hub", metavar="ORG/NAME", help="then upload it to the Hugging Face Hub "
                         "(needs the hub extra and a login)")
    package.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")
    package.set_defaults(func=cmd_package)

    train = commands.add_parser("train", help="train (or resume) from a YAML config")
    train.add_argument("config", help="experiment YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    train.set_defaults(func=cmd_train)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files")
    transcribe.add_argument("checkpoint", help=MODEL_HELP)
    transcribe.add_argument("files", nargs="+", help="audio files (anything libsndfile reads)")
    transcribe.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text",
                            help="json, srt and vtt carry word start/end times (json also word confidences)")
    transcribe.add_argument("--output-dir", help="write one file per input here, under its path below the inputs' "
                            "common folder with .txt/.json/.srt/.vtt for its extension (d1/a.flac d2/a.flac -> "
                            "d1/a.json d2/a.json); inputs that would share a name keep their extension too "
                            "(a.flac a.wav -> a.flac.json a.wav.json)")
    transcribe.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    transcribe.add_argument("--stream", action="store_true",
                            help="run a streaming model (latency_controlled or unidirectional) on each file as if it "
                            "were live: partial text on stderr as it changes, and with --format json each word's "
                            "emitted_after (seconds from its end in the audio to its emission)")
    transcribe.add_argument("--no-pace", action="store_true",
                            help="with --stream: feed the audio as fast as possible instead of at real-time pace "
                            "(emitted_after is then counted in audio: the look-ahead and piece size alone)")
    transcribe.add_argument("--piece-ms", type=positive_float, default=100.0,
                            help="with --stream: milliseconds of audio per piece fed (a microphone's buffer; default 100)")
    add_decoding_arguments(transcribe)
    transcribe.set_defaults(func=cmd_transcribe)

    inspect = commands.add_parser("inspect", help="figures and JSON of the log-mel, CTC posteriors and the "
                                  "LSTM gates and cell states for one audio file")
    inspect.add_argument("checkpoint", help=MODEL_HELP + " (LSTM models)")
    inspect.add_argument("file", help="one audio file (at most 30 s)")
    inspect.add_argument("--out", required=True, help="folder for inspect.json and the PNG figures")
    inspect.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    inspect.set_defaults(func=cmd_inspect)

    serve = commands.add_parser("serve", help="serve a web page (files, microphone, live mode, inspect) and an "
                                "OpenAI-compatible transcription API over HTTP")
    serve.add_argument("checkpoint", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=200.0, help="largest audio upload in MB (default 200)")
    serve.add_argument("--max-queue", type=int, default=8, help="requests that may wait for recognition; "
                       "more get 503 (default 8)")
    serve.add_argument("--max-live", type=int, default=4, help="live microphone streams at once (default 4; "
                       "0 turns live mode off)")
    serve.add_argument("--model-name", help="model id reported by /v1/models (default: the checkpoint's name)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_decoding_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    evaluate = commands.add_parser("evaluate", help="WER/CER of a checkpoint on a manifest")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("manifest", help="JSONL manifest with reference transcripts")
    evaluate.add_argument("--report", help="also write the report to this file")
    evaluate.add_argument("--utterances", help="also write per-utterance scores here (JSONL)")
    evaluate.add_argument("--worst", type=int, default=10, help="worst utterances to list (default 10)")
    evaluate.add_argument("--device", default="cpu")
    add_decoding_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    lm = commands.add_parser("lm", help="language model tools").add_subparsers(dest="lm_command", required=True)
    lm_build = lm.add_parser("build", help="estimate an n-gram LM with KenLM's lmplz (scripts/build_kenlm.sh)")
    lm_build.add_argument("text", nargs="+", help="text files (one sentence per line) or JSONL manifests")
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
    lm_build.add_argument("out", help="output model: .arpa, or .bin for a KenLM binary (needs --lexicon to decode)")
    lm_build.set_defaults(func=cmd_lm_build)
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
    lm_pronounce.set_defaults(func=cmd_lm_pronounce)

    export = commands.add_parser("export", help="export front end + acoustic model as TorchScript or ONNX")
    export.add_argument("checkpoint")
    export.add_argument("out", help="output file (.onnx -> ONNX, else TorchScript)")
    export.add_argument("--format", choices=["torchscript", "onnx"], help="default: from the file name")
    export.add_argument("--streaming", action="store_true",
                        help="export a streaming model's step with its state (ONNX; the only export of a "
                        "latency-controlled model, and an option for a unidirectional one)")
    export.set_defaults(func=cmd_export)

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
    return parser


DOWNLOAD_OPTIONS = ("--subsets", "--dest", "--mirror", "--lm")  # only prepare-librispeech takes these


def prepare_librispeech_argv(argv: list[str]) -> list[str]:
    """``asr prepare librispeech ...`` is the download command, unless a folder named
    ``librispeech`` is here and no download option is given: then it is that folder."""
    folder = Path("librispeech")
    wants_download = any(arg.startswith(DOWNLOAD_OPTIONS) for arg in argv[2:])
    if folder.is_dir() and not wants_download:
        print(f"note: reading 'librispeech' as the folder {folder.resolve()}; for the download command run "
              "`asr prepare-librispeech --subsets ... --dest ...`", file=sys.stderr)
        return argv
    if folder.exists():
        print("note: reading `prepare librispeech` as the download command (it has download options); for the "
              "local folder write `asr prepare ./librispeech OUT`", file=sys.stderr)
    return ["prepare-librispeech", *argv[2:]]


# The commands that run the network (and so consult the thread governor, asr/utils/threads.py).
NETWORK_COMMANDS = frozenset({"train", "transcribe", "evaluate", "tune-lm", "package", "export", "serve", "inspect"})


def main(argv: list[str] | None = None) -> int:
    from asr.errors import AsrError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["prepare", "librispeech"]:  # `asr prepare librispeech ...` reads naturally
        argv = prepare_librispeech_argv(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command in NETWORK_COMMANDS:
            from asr.utils.threads import adjust_threads  # imports torch: not for prepare or lm build

            adjust_threads()  # ASR_THREADS checked, and the free cores first sampled, before any work
        return args.func(args)
    except AsrError as err:  # what a user can fix; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
