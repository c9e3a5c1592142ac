"""``asr prepare`` and ``asr prepare-librispeech``: manifests from a local folder, or downloaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli.options import EXIT_FAILURES, EXIT_OK, EXIT_USAGE

# asr.data.commonvoice.SPLITS; repeated so that `asr --help` imports no corpus reader.
SPLITS = ("validated", "train", "dev", "test", "other", "invalidated")
DOWNLOAD_OPTIONS = ("--subsets", "--dest", "--mirror", "--lm")  # only prepare-librispeech takes these


def add_commands(commands: argparse._SubParsersAction) -> None:
    """prepare, prepare-librispeech."""
    prepare = commands.add_parser("prepare", help="build a JSONL manifest from a LibriSpeech-layout folder, a "
                                  "Kaldi data directory or a Common Voice language folder")
    prepare.add_argument("data_dir", help="folder holding */*.trans.txt beside the audio files, a Kaldi data "
                         "directory (text, wav.scp, utt2spk, optional segments), or a Common Voice language folder "
                         "(clips/*.mp3 beside validated.tsv, train.tsv, dev.tsv, test.tsv)")
    prepare.add_argument("out", help="output manifest (JSONL); the training part when splitting")
    prepare.add_argument("--dev-out", help="also write a speaker-disjoint dev manifest here")
    prepare.add_argument("--dev-speakers", type=int, default=1, help="number of speakers to hold out (default 1)")
    prepare.add_argument("--dev-speaker-ids", help="comma-separated speaker ids to hold out instead")
    prepare.add_argument("--dev-share", type=float, help="hold out speakers, drawn at random, until they hold this "
                         "share of the utterances (e.g. 0.2), instead of --dev-speakers")
    prepare.add_argument("--seed", type=int, default=0, help="seed for choosing held-out speakers")
    prepare.add_argument("--speed-perturb", action="store_true",
                         help="write 0.9/1.0/1.1 speed copies of the training utterances (not of --dev-out)")
    prepare.add_argument("--audio-root", help="Kaldi: the folder wav.scp's relative paths start from (default: "
                         "the data directory, its parent, or the working folder, whichever holds the file)")
    prepare.add_argument("--segments-dir", help="Kaldi with a segments file: where the utterances are cut to FLAC "
                         "(default: OUT's name + .segments beside it)")
    prepare.add_argument("--language", default="en", help="the transcripts' language (ISO 639 code or tag: en, "
                         "es, de, ru, zh-CN): its text rules normalise them, as data.language does in training "
                         "(default en)")
    prepare.add_argument("--split", default="validated", choices=SPLITS,
                         help="Common Voice: the table to read (default validated: every accepted clip; train, dev "
                         "and test are the release's speaker-disjoint parts of it)")
    prepare.set_defaults(func=cmd_prepare)

    librispeech = commands.add_parser(
        "prepare-librispeech",
        help="download LibriSpeech / Libri-Light subsets and write manifests (also: asr prepare librispeech)",
    )
    librispeech.add_argument("--subsets", nargs="+", required=True,
                             help="e.g. dev-clean test-clean train-clean-100 train-960 librilight-10h dev-clean-2")
    librispeech.add_argument("--dest", required=True, help="folder for archives, extracted audio and manifests")
    librispeech.add_argument("--mirror",
                             help="base URL holding the archives by file name, instead of the official servers")
    librispeech.add_argument("--speed-perturb", action="store_true",
                             help="also write 0.9/1.0/1.1 speed-perturbed manifests")
    librispeech.add_argument("--lm", action="store_true",
                             help="also download the official n-gram LMs, vocabulary and lexicon")
    librispeech.set_defaults(func=cmd_prepare_librispeech)


def prepare_librispeech_argv(argv: list[str]) -> list[str]:
    """``asr prepare librispeech ...`` is the download command, unless a folder named
    ``librispeech`` is here and no download option is given: then it is that folder."""
    if argv[:2] != ["prepare", "librispeech"]:
        return argv
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


def cmd_prepare(args: argparse.Namespace) -> int:
    from asr.config import check_language
    from asr.data.corpora import scan_corpus
    from asr.data.manifest import speakers_for_share, split_by_speaker, write_manifest

    segments_dir = args.segments_dir or Path(args.out).with_suffix(".segments")
    language = check_language(args.language, "--language")
    report = scan_corpus(args.data_dir, audio_root=args.audio_root, segments_dir=segments_dir, language=language,
                         split=args.split)
    for label, items in (("missing audio", report.missing_audio), ("no transcript", report.missing_transcripts),
                         ("unreadable audio", report.unreadable),
                         ("a bad transcript line (skipped)", report.bad_lines)):
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
            if args.dev_share is not None:
                held_out = speakers_for_share(utterances, args.dev_share, seed=args.seed)
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
        print(f"{path}: {len(items)} utterances, {hours:.2f} h, {len(speakers)} speakers ({shown_ids(speakers)})")
    return EXIT_OK


def shown_ids(speakers: list[str], most: int = 20, width: int = 16) -> str:
    """Speaker ids for a summary line: Common Voice's are 128-character hashes, and thousands of them."""
    shown = [s if len(s) <= width else f"{s[:width]}..." for s in speakers[:most]]
    return " ".join(shown + ([f"... and {len(speakers) - most} more"] if len(speakers) > most else []))


def cmd_prepare_librispeech(args: argparse.Namespace) -> int:
    from asr.data.librispeech import prepare_librispeech

    manifests = prepare_librispeech(args.subsets, args.dest, mirror=args.mirror,
                                    speed_perturb=args.speed_perturb, lm=args.lm)
    for name, path in manifests.items():
        print(f"{name}: {path}")
    return EXIT_OK
