"""The ``asr`` command line: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.data import scan_librispeech, split_by_speaker, write_manifest

    report = scan_librispeech(args.data_dir)
    for label, items in (("missing audio", report.missing_audio), ("no transcript", report.missing_transcripts),
                         ("unreadable audio", report.unreadable)):
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
        train, dev = split_by_speaker(utterances, held_out, seed=args.seed)
        outputs = [(args.out, train), (args.dev_out, dev)]
    for path, items in outputs:
        write_manifest(path, items)
        speakers = sorted({u.speaker for u in items})
        hours = sum(u.duration for u in items) / 3600
        print(f"{path}: {len(items)} utterances, {hours:.2f} h, {len(speakers)} speakers ({' '.join(speakers)})")
    return EXIT_OK


def cmd_prepare_librispeech(args: argparse.Namespace) -> int:
    from asr.librispeech import prepare_librispeech

    manifests = prepare_librispeech(args.subsets, args.dest, mirror=args.mirror,
                                    speed_perturb=args.speed_perturb, lm=args.lm)
    for name, path in manifests.items():
        print(f"{name}: {path}")
    return EXIT_OK


def cmd_average(args: argparse.Namespace) -> int:
    from asr.checkpoint import average_checkpoints, save_checkpoint

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


def cmd_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.train import train

    config = load_config(args.config, args.overrides)
    state = train(config)
    print(f"finished: {state.step} steps, {state.epoch} epochs, best valid CER "
          f"{100 * state.best_cer:.2f} %; checkpoints in {config.train.out_dir}")
    return EXIT_OK


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.transcribe import load_model

    recognizer = load_model(args.checkpoint, device=args.device)
    results = recognizer.transcribe(args.files)
    for result in results:
        if args.format == "json":
            record = {"path": result.path, "text": result.text, "duration": round(result.duration, 3)}
            if not result.ok:
                record["error"] = result.error
            print(json.dumps(record, ensure_ascii=False))
        elif result.ok:
            print(f"{result.path}\t{result.text}" if len(results) > 1 else result.text)
        if not result.ok:
            print(f"error: {result.path}: {result.error}", file=sys.stderr)
    return EXIT_FAILURES if any(not r.ok for r in results) else EXIT_OK


def write_utterance_scores(path: str, report) -> None:
    """One JSON line per utterance: id, reference, hypothesis and its error counts."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for score in report.scores:
            record = {"id": score.id, "reference": score.reference, "hypothesis": score.hypothesis}
            for unit, counts in (("word", score.words), ("char", score.chars)):
                record[unit] = {"errors": counts.errors, "length": counts.reference_length, "sub": counts.substitutions,
                                "del": counts.deletions, "ins": counts.insertions}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asr.transcribe import evaluate_manifest, load_model

    recognizer = load_model(args.checkpoint, device=args.device)
    report = evaluate_manifest(recognizer, args.manifest)
    text = report.format(worst=args.worst)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
        print(f"report written to {args.report}", file=sys.stderr)
    if args.utterances:
        write_utterance_scores(args.utterances, report)
    return EXIT_FAILURES if report.failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from asr import __version__

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

    train = commands.add_parser("train", help="train (or resume) from a YAML config")
    train.add_argument("config", help="experiment YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    train.set_defaults(func=cmd_train)

    transcribe = commands.add_parser("transcribe", help="transcribe audio files")
    transcribe.add_argument("checkpoint", help="checkpoint written by 'asr train'")
    transcribe.add_argument("files", nargs="+", help="audio files (anything libsndfile reads)")
    transcribe.add_argument("--format", choices=["text", "json"], default="text")
    transcribe.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    transcribe.set_defaults(func=cmd_transcribe)

    evaluate = commands.add_parser("evaluate", help="WER/CER of a checkpoint on a manifest")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("manifest", help="JSONL manifest with reference transcripts")
    evaluate.add_argument("--report", help="also write the report to this file")
    evaluate.add_argument("--utterances", help="also write per-utterance scores here (JSONL)")
    evaluate.add_argument("--worst", type=int, default=10, help="worst utterances to list (default 10)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from asr.audio import AudioError
    from asr.checkpoint import CheckpointError
    from asr.config import ConfigError
    from asr.data import ManifestError
    from asr.download import DownloadError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["prepare", "librispeech"]:  # `asr prepare librispeech ...` reads naturally
        argv = ["prepare-librispeech", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ManifestError, AudioError, DownloadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
