"""``asr train`` and ``asr average``: a model from a YAML config, and the average of its checkpoints."""

from __future__ import annotations

import argparse

from asr.cli.options import EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    """train, average."""
    train = commands.add_parser("train", help="train (or resume) from a YAML config")
    train.add_argument("config", help="experiment YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    train.set_defaults(func=cmd_train)

    average = commands.add_parser("average", help="average the weights of several checkpoints")
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, or one experiment folder with --last")
    average.add_argument("--last", type=int, default=0, help="average the last N epoch-N.pt of the folder")
    average.add_argument("--out", required=True, help="output checkpoint")
    average.set_defaults(func=cmd_average)


def cmd_train(args: argparse.Namespace) -> int:
    """Also each rank's command under torchrun (``torchrun ... -m asr train CONFIG``): it asks nothing."""
    from asr.config import load_config
    from asr.training.distributed import Distributed
    from asr.training.loop import train

    config = load_config(args.config, args.overrides)
    state = train(config)
    if not Distributed.from_environment().is_main:  # under torchrun rank 0 alone validates: its line is the job's
        return EXIT_OK
    best = "no validation set" if state.best_cer == float("inf") else f"best valid CER {100 * state.best_cer:.2f} %"
    print(f"finished: {state.step} steps, {state.epoch} epochs, {best}; checkpoints in {config.train.out_dir}")
    return EXIT_OK


def cmd_average(args: argparse.Namespace) -> int:
    from asr.storage.checkpoint import average_checkpoints, last_epoch_checkpoints, save_checkpoint

    paths = last_epoch_checkpoints(args.checkpoints, args.last) if args.last else list(args.checkpoints)
    save_checkpoint(args.out, average_checkpoints(paths))
    print(f"{args.out}: average of {', '.join(str(p) for p in paths)}")
    return EXIT_OK
