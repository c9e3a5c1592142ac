"""``asr package`` and ``asr export``: a model folder to share, or one graph for other runtimes."""

from __future__ import annotations

import argparse

from asr.cli.options import EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    """package, export."""
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

    export = commands.add_parser("export", help="export front end + acoustic model as TorchScript or ONNX")
    export.add_argument("checkpoint")
    export.add_argument("out", help="output file (.onnx -> ONNX, else TorchScript)")
    export.add_argument("--format", choices=["torchscript", "onnx"], help="default: from the file name")
    export.add_argument("--streaming", action="store_true",
                        help="export a streaming model's step with its state (ONNX; the only export of a "
                        "latency-controlled model, and an option for a unidirectional one)")
    export.set_defaults(func=cmd_export)


def cmd_package(args: argparse.Namespace) -> int:
    from asr.deploy.package import package_model
    from asr.storage.hub import push_to_hub
    from asr.storage.model_folder import PackageError

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


def cmd_export(args: argparse.Namespace) -> int:
    from asr.deploy.export import export_model  # its rule: a latency-controlled model exports as its streaming step

    exported = export_model(args.checkpoint, args.out, format=args.format, streaming=args.streaming)
    if exported.streaming:
        print(f"{exported.path}: onnx streaming step, frames (B, N, n_mels) + num_frames (B,) + state -> log_probs "
              "(B, chunk, V) + next state (see asr/deploy/export.py StreamingStep)")
    else:
        print(f"{exported.path}: {exported.format}, waveforms (B, S) + lengths (B,) -> log_probs (B, T, V) + "
              "output_lengths (B,)")
    return EXIT_OK
