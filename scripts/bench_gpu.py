"""GPU benchmark: training throughput of the recipe models on one CUDA device, and whether the
data loader keeps the device busy. One table; every figure measured in this run.

    python scripts/bench_gpu.py [--out BENCH_GPU.md] [--only env,rnn,loader] [--steps 4] [--workers 0,4,8]

Sections:
  env     the device, torch, CUDA and cuDNN versions.
  rnn     asr.training.steps.train_step (features on the device, SpecAugment, CTC, AdamW) of the
          cpu-small, 100h and 960h recipe models on one full batch of each recipe's frame
          budget (12 s utterances of bucketed lengths), per recurrent input path and precision:
          audio-s/s (median of --steps steps after 2 warm-up steps) and peak device memory.
          Paths (model.rnn_input): "padded" (each direction its own call over padded input,
          the default) and "packed" (both directions' weights in one bidirectional cuDNN call
          over a PackedSequence).
  loader  `asr.training.loop.train` end to end with the 100h recipe (bf16, 5 x 512) on a synthetic
          FLAC corpus with 0.9/1.0/1.1 speed perturbation, with 0, 4 and 8 DataLoader worker
          processes: audio-s/s and the share of the time the device waited for data (epoch 2;
          epoch 1 also holds cuDNN's and the workers' start-up).
Needs a CUDA device; nothing here runs in the unit tests. `--dry-run` runs every section on
the CPU with tiny models and a tiny corpus, to check the script itself before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.config import SAMPLE_RATE, load_config  # noqa: E402
from asr.data.dataset import Batch  # noqa: E402
from asr.data.manifest import Utterance
from asr.data.manifest import write_manifest
from asr.model.features import FeatureFrontend  # noqa: E402
from asr.data.librispeech import speed_perturbed  # noqa: E402
from asr.data.phones import NUM_PHONE_LABELS  # noqa: E402
from asr.model.network import AcousticModel  # noqa: E402
from asr.training.loop import train  # noqa: E402
from asr.training.schedule import make_scheduler  # noqa: E402
from asr.training.steps import train_step  # noqa: E402
from asr.data.text import CharVocabulary  # noqa: E402
from bench import median_seconds, report, write_table  # noqa: E402  (scripts/bench.py)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {name: ROOT / f"recipes/librispeech/conf/{name}.yaml" for name in ("cpu-small", "100h", "960h")}
UTTERANCE_SECONDS = 12.0  # about LibriSpeech's mean training utterance (12.3 s)
CHARS_PER_SECOND = 15  # LibriSpeech read speech
VOCAB = len(CharVocabulary.english())  # blank, space, apostrophe, a-z
DEVICE = torch.device("cuda")
# model.phone_ctc_layer=1: the cpu-small recipe's phone head sits on a layer the one-layer model lacks.
DRY_RUN_OVERRIDES = ["model.num_layers=1", "model.hidden_size=16", "data.max_frames_per_batch=2400",
                     "model.phone_ctc_layer=1"]
overrides: list[str] = []  # added to every recipe config (--dry-run)


def bench_env() -> None:
    if DEVICE.type != "cuda":
        report("env", "device", f"{DEVICE} (dry run)")
        return
    props = torch.cuda.get_device_properties(0)
    report("env", "device", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    report("env", "torch / CUDA / cuDNN", f"{torch.__version__} / {torch.version.cuda} / {torch.backends.cudnn.version()}")


def synthetic_batch(count: int) -> Batch:
    """``count`` utterances of 11.4-12.6 s (a bucketed batch) with 15 characters per second."""
    generator = torch.Generator().manual_seed(0)
    seconds = torch.linspace(0.95, 1.05, count) * UTTERANCE_SECONDS
    samples = (seconds * SAMPLE_RATE).long()
    waveforms = 0.1 * torch.randn(count, int(samples.max()), generator=generator)
    waveforms *= torch.arange(waveforms.shape[1])[None, :] < samples[:, None]  # zero padding
    label_lengths = (seconds * CHARS_PER_SECOND).long()
    labels = torch.randint(1, VOCAB, (count, int(label_lengths.max())), generator=generator)
    return Batch(list(range(count)), waveforms, samples, labels, label_lengths)


def time_training_steps(config, batch: Batch, steps: int) -> tuple[float, float]:
    """Median seconds per train_step and peak device memory (GiB)."""
    device = DEVICE
    torch.manual_seed(0)
    frontend = FeatureFrontend(config.features).to(device)
    model = AcousticModel(config.model, config.features.n_mels, VOCAB).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = make_scheduler(optimizer, config, lambda: 10**6)
    scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
    phone_labels = None
    if config.model.phone_ctc_weight > 0:  # the recipe's phone CTC head: random phones, one per character
        generator = torch.Generator().manual_seed(1)
        phone_labels = [torch.randint(1, NUM_PHONE_LABELS, (int(n),), generator=generator) for n in batch.label_lengths]
    if device.type == "cuda":
        batch = batch.pin_memory()
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(  # train_step ends in loss.item(), which waits for the device
        lambda: train_step(batch, frontend, model, optimizer, scheduler, scaler, config, device, phone_labels),
        steps, warmup=2,
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del model, optimizer, frontend
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, peak


def bench_rnn(steps: int) -> None:
    cases = [("padded", "fp32"), ("padded", "bf16"), ("padded", "fp16"), ("packed", "fp32"), ("packed", "bf16")]
    for name, path_to_config in RECIPES.items():
        base = load_config(path_to_config, overrides)
        count = base.data.max_frames_per_batch // int(100 * UTTERANCE_SECONDS)  # 100 frames per second
        batch = synthetic_batch(count)
        m = base.model
        for path, precision in cases:
            config = load_config(path_to_config, [*overrides, f"train.precision={precision}",
                                                  f"model.rnn_input={path}"])
            what = f"{name} {m.num_layers}x{m.hidden_size} batch {count}x{UTTERANCE_SECONDS:g}s {path:6s} {precision}"
            try:
                seconds, peak = time_training_steps(config, batch, steps)
            except Exception as error:  # one failing case (out of memory, an unsupported kernel) is a row too
                report("rnn", what, f"failed: {type(error).__name__}: {str(error)[:80]}")
                continue
            report("rnn", what, f"{count * UTTERANCE_SECONDS / seconds:7.0f} audio-s/s, {peak:5.1f} GiB")


def write_utterance(args: tuple[int, str, float, str]) -> None:
    """Harmonic tones with a syllable-rate envelope and noise: decodes like speech FLAC does."""
    index, path, seconds, _ = args
    rng = np.random.default_rng(index)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = rng.uniform(90, 220)
    voiced = sum(np.sin(2 * np.pi * k * pitch * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    audio = 0.1 * voiced * envelope + rng.normal(0, 0.01, len(t))
    soundfile.write(path, audio.astype(np.float32), SAMPLE_RATE)


def synthetic_corpus(folder: Path, count: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    jobs = []
    for index in range(count):
        seconds = float(rng.uniform(8, 16))
        letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(seconds * CHARS_PER_SECOND))
        text = " ".join("".join(letters[i : i + 5]) for i in range(0, len(letters), 5))
        jobs.append((index, str(folder / f"{index}.flac"), seconds, text))
    with multiprocessing.Pool() as pool:
        pool.map(write_utterance, jobs)
    utterances = [Utterance(f"u{i}", path, text, seconds, f"s{i % 20}") for i, path, seconds, text in jobs]
    write_manifest(folder / "train-sp.jsonl", speed_perturbed(utterances))
    write_manifest(folder / "valid.jsonl", utterances[:8])
    return folder / "train-sp.jsonl", folder / "valid.jsonl"


def bench_loader(utterances: int, workers: list[int]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    train_manifest, valid_manifest = synthetic_corpus(folder, utterances)
    report("loader", f"synthetic corpus: {utterances} FLAC files of 8-16 s, x3 speeds (0.9/1.0/1.1)", str(folder))
    for count in workers:
        out = folder / f"workers-{count}"
        config = load_config(RECIPES["100h"], [
            *overrides, f"train.device={DEVICE.type}", f"data.train_manifest={train_manifest}", f"data.valid_manifest={valid_manifest}",
            f"data.num_workers={count}", "data.cache_audio=false", "data.stats_utterances=64",
            f"train.out_dir={out}", "train.epochs=2", "train.checkpoint_every_steps=0",
            "train.keep_epoch_checkpoints=0",
        ])
        what = (f"100h {config.model.num_layers}x{config.model.hidden_size} {config.train.precision}, "
                f"{count} workers (epoch 2{', pinned memory' if DEVICE.type == 'cuda' else ''})")
        try:
            train(config)
        except Exception as error:
            report("loader", what, f"failed: {type(error).__name__}: {str(error)[:80]}")
            continue
        epoch = [json.loads(line) for line in open(out / "metrics.jsonl")][-1]
        report("loader", what,
               f"{epoch['audio_seconds_per_second']:7.0f} audio-s/s, waiting for data "
               f"{100 * epoch['data_wait_fraction']:.0f} % of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="env,rnn,loader", help="comma-separated sections")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per rnn case")
    parser.add_argument("--utterances", type=int, default=400, help="synthetic corpus size for the loader section")
    parser.add_argument("--workers", default="0,4,8", help="DataLoader worker counts for the loader section")
    parser.add_argument("--out", help="also write the table as Markdown here")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 24 utterances: checks the script")
    args = parser.parse_args()
    global DEVICE
    if args.dry_run:
        DEVICE = torch.device("cpu")
        overrides.extend(DRY_RUN_OVERRIDES)
        args.steps, args.utterances = 1, 24
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False); --dry-run checks it on the CPU")
    sections = args.only.split(",")
    if "env" in sections:
        bench_env()
    if "rnn" in sections:
        bench_rnn(args.steps)
    if "loader" in sections:
        bench_loader(args.utterances, [int(n) for n in args.workers.split(",")])
    if args.out:
        write_table(args.out)


if __name__ == "__main__":
    main()
