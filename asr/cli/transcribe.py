"""``asr transcribe`` (files or folders, or ``--stream`` as if live) and ``asr evaluate`` (WER/CER on a
manifest, also as an HTML page)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asr.cli.options import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    MODEL_HELP,
    add_decoding_arguments,
    load_recognizer,
    output_file_problem,
    positive_float,
)

if TYPE_CHECKING:  # the CLI imports torch only for the commands that need it
    from asr.inference.batch import BatchItem, BatchProgress
    from asr.inference.recognizer import SpeechRecognizer
    from asr.inference.results import Transcription
    from asr.inference.streaming import StreamUpdate


def add_commands(commands: argparse._SubParsersAction) -> None:
    """transcribe, evaluate."""
    transcribe = commands.add_parser("transcribe", help="transcribe audio files, or every audio file in folders")
    transcribe.add_argument("checkpoint", help=MODEL_HELP)
    transcribe.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                            help="audio files (anything libsndfile reads), or folders: their audio files, recursively "
                            "(.flac .wav .ogg .opus .mp3 .aiff ...; other files are listed as skipped)")
    transcribe.add_argument("--format", choices=["text", "json", "srt", "vtt", "tsv"], default="text",
                            help="json, srt, vtt and tsv carry start/end times (json per word, with confidences; "
                            "tsv per segment: start<TAB>end<TAB>text in milliseconds, as whisper writes it)")
    transcribe.add_argument("--output-dir", help="write one file per input here, under its path below the inputs' "
                            "common folder (a folder given: below it, DIR/a/b/c.flac -> OUT/a/b/c.txt) with "
                            ".txt/.json/.srt/.vtt/.tsv for its extension (d1/a.flac d2/a.flac -> d1/a.json d2/a.json); "
                            "inputs that would share a name keep their extension too (a.flac a.wav -> a.flac.json "
                            "a.wav.json). Each output is written as soon as its group of files is done; a file whose "
                            "output exists is skipped, so a run that was stopped resumes where it stopped")
    transcribe.add_argument("--overwrite", action="store_true",
                            help="with --output-dir: transcribe again the files whose output exists")
    transcribe.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    transcribe.add_argument("--stream", action="store_true",
                            help="run a streaming model (latency_controlled or unidirectional) on each file as if it "
                            "were live: partial text on stderr as it changes, and with --format json each word's "
                            "emitted_after (seconds from its end in the audio to its emission)")
    transcribe.add_argument("--no-pace", action="store_true",
                            help="with --stream: feed the audio as fast as possible instead of at real-time pace "
                            "(emitted_after is then counted in audio: the look-ahead and piece size alone)")
    transcribe.add_argument("--piece-ms", type=positive_float, default=100.0,
                            help="with --stream: milliseconds of audio per piece fed (a microphone's buffer; "
                            "default 100)")
    add_decoding_arguments(transcribe)
    transcribe.set_defaults(func=cmd_transcribe)

    evaluate = commands.add_parser("evaluate", help="WER/CER of a checkpoint on a manifest")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("manifest", help="JSONL manifest with reference transcripts")
    evaluate.add_argument("--report", help="also write the report to this file")
    evaluate.add_argument("--utterances", help="also write per-utterance scores here (JSONL)")
    evaluate.add_argument("--html", metavar="REPORT.html",
                          help="also write the report as one self-contained web page: WER/CER overall, by speaker "
                          "and by utterance length (a plot: needs matplotlib, the inspect extra), the worst "
                          "utterances aligned with their errors coloured, the most frequent confusions")
    evaluate.add_argument("--worst", type=int, default=10, help="worst utterances to list (default 10)")
    evaluate.add_argument("--device", default="cpu")
    add_decoding_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.inference.batch import BatchProgress, describe_skipped, plan_batch, transcribe_in_groups

    several = len(args.files) > 1 or any(Path(f).is_dir() for f in args.files)
    if args.format in ("srt", "vtt", "tsv") and several and not args.output_dir:
        print(f"error: --format {args.format} with several files or a folder needs --output-dir", file=sys.stderr)
        return EXIT_USAGE
    if args.overwrite and not args.output_dir:
        print("error: --overwrite redoes the outputs that exist in --output-dir: give --output-dir", file=sys.stderr)
        return EXIT_USAGE
    if args.output_dir and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        print(f"error: --output-dir {args.output_dir} exists and is not a folder", file=sys.stderr)
        return EXIT_USAGE
    plan = plan_batch(args.files, args.format, args.output_dir, args.overwrite)
    try:  # checked before any transcription: a late failure would lose every result
        for folder in sorted({item.output.parent for item in plan.pending if item.output is not None}):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the output folder: {err}", file=sys.stderr)
        return EXIT_USAGE
    skipped = describe_skipped(plan.found)
    if skipped:
        print(f"warning: {skipped}", file=sys.stderr)
    for problem in plan.found.problems:
        print(f"error: {problem}", file=sys.stderr)
    if plan.done:
        print(f"{len(plan.done)} of {len(plan.found.files)} files already have their output in {args.output_dir}: "
              f"skipped (--overwrite to transcribe them again)", file=sys.stderr)
    if not plan.pending:
        return EXIT_FAILURES if plan.found.problems else EXIT_OK
    recognizer = load_recognizer(args)
    if args.stream and recognizer.streaming_problem:
        print(f"error: {args.checkpoint}: --stream: {recognizer.streaming_problem}", file=sys.stderr)
        return EXIT_USAGE
    if several:
        print(f"transcribing {len(plan.pending)} files, {plan.seconds / 3600:.2f} h of audio", file=sys.stderr)
    started = time.monotonic()
    failed: list[str] = []
    with BatchProgress(plan.pending, enabled=several and not args.stream) as progress:
        if args.stream:  # paced streaming takes real time: each file's output at once
            results = ((item, *stream_to_terminal(recognizer, item.audio, args)) for item in plan.pending)
        else:
            results = ((item, result, None) for item, result in transcribe_in_groups(recognizer, plan.pending))
        for item, result, delays in results:
            problem = output_result(args, progress, several, item, result, delays)
            if problem:
                failed.append(problem)
            progress.advance(item)
    if several:
        report_batch(len(plan.pending), plan.seconds, time.monotonic() - started, failed, plan.found.problems)
    return EXIT_FAILURES if failed or plan.found.problems else EXIT_OK


def output_result(args: argparse.Namespace, progress: BatchProgress, several: bool, item: BatchItem,
                  result: Transcription, delays: tuple[float, ...] | None = None) -> str | None:
    """Write or print one file's result as soon as it is done; why it failed, or None."""
    from asr.inference.writers import json_record, render
    from asr.utils.atomic import atomic_write

    for warning in result.warnings:
        progress.write(f"warning: {result.path}: {warning}")
    if not result.ok:
        progress.write(f"error: {result.path}: {result.error}")
        if args.format == "json":
            progress.write(json.dumps(json_record(result), ensure_ascii=False), file=sys.stdout)
        return f"{result.path}: {result.error}"
    if item.output is not None:
        try:
            with atomic_write(item.output) as out:
                out.write(render(result, args.format, delays))
        except OSError as err:  # e.g. disk full: report, keep the other results
            progress.write(f"error: {result.path}: cannot write {item.output}: {err}")
            return f"{result.path}: cannot write {item.output}: {err}"
    elif args.format == "text" and several:
        progress.write(f"{result.path}\t{result.text}", file=sys.stdout)
    else:
        progress.write(render(result, args.format, delays), file=sys.stdout, end="")
    sys.stdout.flush()
    return None


def report_batch(files: int, seconds: float, elapsed: float, failed: list[str], problems: list[str],
                 shown: int = 20) -> None:
    """The closing lines of a batch on stderr: what was done, and every failure again (the
    lines reported as they happened have scrolled away by now)."""
    print(f"transcribed {files - len(failed)} of {files} files ({seconds / 3600:.2f} h of audio) in {elapsed:.0f} s"
          + (f"; {len(failed)} failed" if failed else "") + (f"; {len(problems)} folders unusable" if problems else "")
          + (":" if failed or problems else ""),
          file=sys.stderr)
    for problem in (failed + problems)[:shown]:
        print(f"  {problem}", file=sys.stderr)
    if len(failed + problems) > shown:
        print(f"  ... and {len(failed + problems) - shown} more (each reported above)", file=sys.stderr)


def stream_to_terminal(recognizer: SpeechRecognizer, path: str,
                       args: argparse.Namespace) -> tuple[Transcription, tuple[float, ...] | None]:
    """``asr transcribe --stream``: one file through the streaming model, its partial text on
    stderr as it changes (rewritten in place on a terminal). The result and the per-word delays
    (None when the file failed)."""
    from asr.data.audio import AudioError
    from asr.inference.results import Transcription
    from asr.inference.streaming import stream_file

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.scoring.evaluate import evaluate_manifest, write_utterance_scores
    from asr.scoring.html_report import figures_problem, write_html_report
    from asr.utils.atomic import atomic_write

    for option, path in (("--report", args.report), ("--utterances", args.utterances), ("--html", args.html)):
        problem = path and output_file_problem(option, path)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if args.html and figures_problem():  # said before the evaluation, which may take long
        print(f"warning: --html: {figures_problem()}; the report is written without it", file=sys.stderr)
    recognizer = load_recognizer(args)
    report = evaluate_manifest(recognizer, args.manifest)
    for problem in report.skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = (f"{args.checkpoint} on {args.manifest}, decoding: {recognizer.decoding.describe()}\n"
            + report.format(worst=args.worst))
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
    if args.html:
        try:
            write_html_report(args.html, report, text.splitlines()[0], worst=args.worst)
            print(f"HTML report written to {args.html}", file=sys.stderr)
        except OSError as err:
            unwritten += 1
            print(f"error: cannot write the HTML report to {args.html}: {err}", file=sys.stderr)
    return EXIT_OK if report.complete and not unwritten else EXIT_FAILURES
