"""``asr transcribe`` (files, or ``--stream`` as if live) and ``asr evaluate`` (WER/CER on a manifest)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
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
    from asr.inference.recognizer import SpeechRecognizer
    from asr.inference.results import Transcription
    from asr.inference.streaming import StreamUpdate


def add_commands(commands: argparse._SubParsersAction) -> None:
    """transcribe, evaluate."""
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
                            help="with --stream: milliseconds of audio per piece fed (a microphone's buffer; "
                            "default 100)")
    add_decoding_arguments(transcribe)
    transcribe.set_defaults(func=cmd_transcribe)

    evaluate = commands.add_parser("evaluate", help="WER/CER of a checkpoint on a manifest")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("manifest", help="JSONL manifest with reference transcripts")
    evaluate.add_argument("--report", help="also write the report to this file")
    evaluate.add_argument("--utterances", help="also write per-utterance scores here (JSONL)")
    evaluate.add_argument("--worst", type=int, default=10, help="worst utterances to list (default 10)")
    evaluate.add_argument("--device", default="cpu")
    add_decoding_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.inference.writers import json_record, output_names, render
    from asr.utils.atomic import atomic_write

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
    from asr.utils.atomic import atomic_write

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
    return EXIT_OK if report.complete and not unwritten else EXIT_FAILURES
