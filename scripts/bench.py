"""The benchmark suite: one table, every figure measured in this run (medians over repeats).

    python scripts/bench.py CKPT DEV.jsonl [--lm LM.arpa --lexicon WORDS] [--out BENCHMARKS.md]
    python scripts/bench.py CKPT DEV.jsonl --only gemm,training     # a subset of sections
    python scripts/bench.py CKPT DEV.jsonl --only training --model-sizes 4x256,4x320,5x256  # sizes

Sections: gemm (the machine's fp32/bf16 matrix-product FLOP/s), features (log-mel speed, one
thread), training (audio-s/s and FLOP/s of a training step for the CPU recipe model and the
100 h model, padding of the bucketed batches), inference (real-time factor on one thread and
on all threads, fp32 / bf16 / int8, greedy and beam + LM, WER of each), pocketsphinx (the peer
on the same audio; `pip install pocketsphinx`), long (a 60-minute recording: peak RSS, and its
WER against transcribing the utterances one by one). Targets are printed beside the values.
Nothing here is asserted in the unit tests: wall-clock figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.config import load_config  # noqa: E402
from asr.data.dataset import Batch, BucketBatchSampler, frame_counts  # noqa: E402
from asr.data.manifest import read_manifest
from asr.decoding.beam import BeamSearchOptions  # noqa: E402
from asr.decoding.settings import DecodingSettings
from asr.model.features import FeatureFrontend  # noqa: E402
from asr.scoring.metrics import ErrorCounts, error_counts, wer  # noqa: E402
from asr.model.network import AcousticModel  # noqa: E402
from asr.inference.recognizer import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIGS = {"cpu-small": ROOT / "recipes/librispeech/conf/cpu-small.yaml",
                  "100h": ROOT / "recipes/librispeech/conf/100h.yaml"}
rows: list[tuple[str, str, str, str]] = []  # (section, what, measured, target)


def report(section: str, what: str, measured: str, target: str = "") -> None:
    rows.append((section, what, measured, target))
    print(f"{section:12s} {what:58s} {measured:>22s}  {target}", flush=True)


def write_table(path: str) -> None:
    """The reported rows as a Markdown table, headed by the machine and the command line."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}.",
             f"Command: `python scripts/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}`", "",
             "| section | measure | value | target |", "|---|---|---:|---|"]
    lines += [f"| {s} | {w} | {m} | {t} |" for s, w, m, t in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"written to {path}")


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- sections


def bench_gemm(repeats: int) -> dict[str, float]:
    peaks = {}
    size = 2048
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        seconds = median_seconds(lambda: a @ b, repeats)
        peaks[str(dtype)] = 2 * size**3 / seconds
        report("gemm", f"{size}x{size} matrix product, {str(dtype)[6:]}, {torch.get_num_threads()} threads",
               f"{peaks[str(dtype)] / 1e9:.0f} GFLOP/s")
    return peaks


def bench_features(repeats: int) -> None:
    torch.set_num_threads(1)
    frontend = FeatureFrontend(load_config(RECIPE_CONFIGS["cpu-small"]).features)
    audio = torch.randn(8, 16000 * 10) * 0.1  # 8 x 10 s
    lengths = torch.full((8,), audio.shape[1])
    with torch.inference_mode():
        seconds = median_seconds(lambda: frontend(audio, lengths), repeats)
    report("features", "log-mel + normalisation, 1 thread", f"{80 / seconds:.0f} x real time")
    torch.set_num_threads(os.cpu_count() or 1)


def lstm_flops_per_output_step(model: AcousticModel, vocab: int) -> float:
    """Forward multiply-adds x 2 per output step per utterance: LSTM gates, the output layer.

    Each direction of each layer: 4 gates x (input + hidden) x hidden multiply-adds per step.
    """
    config = model.config
    hidden = config.hidden_size
    inputs = [model.subsampler.output_dim] + [2 * hidden] * (config.num_layers - 1)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    recurrent = sum(2 * gates * (size + hidden) * hidden for size in inputs)  # two directions
    return 2 * (recurrent + 2 * hidden * vocab)


def bench_training(manifest: str | None, peaks: dict[str, float], repeats: int, model_sizes: list[str]) -> None:
    from asr.training.steps import ctc_loss
    from asr.utils.precision import autocast

    torch.manual_seed(0)
    configs = {name: load_config(path) for name, path in RECIPE_CONFIGS.items()}
    for size in model_sizes:  # "4x256": cpu-small with 4 layers of 256 units per direction
        layers, hidden = (int(n) for n in size.split("x"))
        configs[f"cpu-small {size}"] = load_config(
            RECIPE_CONFIGS["cpu-small"], [f"model.num_layers={layers}", f"model.hidden_size={hidden}"]
        )
    for name, config in configs.items():
        frontend = FeatureFrontend(config.features)
        model = AcousticModel(config.model, config.features.n_mels, 29)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        # One bucketed batch of the recipe's frame budget: 10 s utterances, 15 characters/s.
        count = max(1, config.data.max_frames_per_batch // 1000)
        waveforms = torch.randn(count, 160_000) * 0.1
        labels = torch.randint(1, 29, (count, 150))
        batch = Batch(list(range(count)), waveforms, torch.full((count,), 160_000), labels, torch.full((count,), 150))
        device = torch.device("cpu")

        def step() -> None:
            features, lengths = frontend(batch.waveforms, batch.waveform_lengths)
            with autocast(config.train.precision, device):
                log_probs, output_lengths = model(features, lengths)
            loss = ctc_loss(log_probs, output_lengths, batch.labels, batch.label_lengths, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        seconds = median_seconds(step, repeats)
        steps = 1000 // config.model.subsampling_factor + 1  # output steps of a 10 s utterance
        flops = 3 * lstm_flops_per_output_step(model, 29) * steps * count  # backward ~ 2 x forward
        peak = peaks.get(str(torch.bfloat16 if config.train.precision == "bf16" else torch.float32))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        report("training", f"{name} ({params:.1f} M params, {config.train.precision}), batch {count} x 10 s",
               f"{count * 10 / seconds:.0f} audio-s/s")
        fp32_peak = peaks.get(str(torch.float32))
        if fp32_peak:
            report("training", f"{name}: model FLOP/s vs this run's fp32 GEMM",
                   f"{flops / seconds / 1e9:.0f} GFLOP/s = {100 * flops / seconds / fp32_peak:.0f} %", ">= 60 %")
        if peak and peak is not fp32_peak:
            report("training", f"{name}: vs the bf16 GEMM", f"{100 * flops / seconds / peak:.0f} %")
    if manifest:
        config = load_config(RECIPE_CONFIGS["cpu-small"])
        sampler = BucketBatchSampler(frame_counts(read_manifest(manifest)), config.data.max_frames_per_batch)
        report("training", f"padded frames in bucketed batches ({Path(manifest).name})",
               f"{100 * sampler.padding_fraction():.1f} %", "< 10 %")


def transcribe_and_score(checkpoint: str, utterances, threads: int, precision: str = "fp32",
                         decoding: DecodingSettings | None = None) -> tuple[float, ErrorCounts]:
    torch.set_num_threads(threads)
    recognizer = load_model(checkpoint, precision=precision, decoding=decoding or DecodingSettings(), workers=threads)
    if recognizer.decoding_problem:
        raise SystemExit(recognizer.decoding_problem)
    recognizer.transcribe([utterances[0].audio])  # warm-up (allocations, LM load)
    start = time.perf_counter()
    results = recognizer.transcribe([u.audio for u in utterances])
    seconds = time.perf_counter() - start
    audio = sum(r.duration for r in results)
    return seconds / audio, error_counts([u.text for u in utterances], [r.text for r in results])


def bench_inference(checkpoint: str, utterances, lm: str | None, lexicon: str | None) -> dict[str, float]:
    cores = os.cpu_count() or 1
    rtfs = {}
    for precision in ("fp32", "bf16", "int8"):
        for threads in sorted({1, cores}):
            rtf, words = transcribe_and_score(checkpoint, utterances, threads, precision)
            rtfs[(precision, threads)] = rtf
            target = "<= 0.02" if (precision, threads) == ("fp32", 1) else ""
            report("inference", f"greedy, {precision}, {threads} thread(s): RTF, WER",
                   f"{rtf:.4f}, {100 * words.rate:.2f} %", target)
    bench_onnxruntime(checkpoint, utterances, cores)
    for precision in ("bf16", "int8"):
        report("inference", f"{precision} speed-up over fp32 (1 thread)",
               f"{rtfs[('fp32', 1)] / rtfs[(precision, 1)]:.2f} x", ">= 1.5 x at <= 2 % rel. WER")
    if lm:
        tuned = Path(checkpoint + ".decoding.yaml")
        from asr.decoding.settings import load_decoding_settings

        settings = load_decoding_settings(tuned) if tuned.is_file() else DecodingSettings("beam", lm, lexicon, BeamSearchOptions())
        for threads in sorted({1, cores}):
            rtf, words = transcribe_and_score(checkpoint, utterances, threads, "fp32", settings)
            report("inference", f"beam {settings.beam.beam_size} + LM, fp32, {threads} thread(s): RTF, WER",
                   f"{rtf:.4f}, {100 * words.rate:.2f} %")
    torch.set_num_threads(cores)
    return {"fp32_1": rtfs[("fp32", 1)]}


def bench_onnxruntime(checkpoint: str, utterances, cores: int) -> None:
    try:
        import onnxruntime
    except ImportError:
        report("inference", "onnxruntime not installed (pip install -e .[export])", "-")
        return
    from asr.data.audio import load_audio
    from asr.decoding.greedy import GreedyDecoder
    from asr.deploy.export import export_onnx

    recognizer = load_model(checkpoint, decoding=DecodingSettings())  # acoustic speed: greedy
    decoder = GreedyDecoder(recognizer.vocabulary)
    waveforms = [load_audio(u.audio) for u in utterances]
    audio = sum(len(w) for w in waveforms) / 16000
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(checkpoint, Path(tmp) / "model.onnx")
        for threads in sorted({1, cores}):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            texts = []
            start = time.perf_counter()
            for waveform in waveforms:  # one utterance per call: no padding
                log_probs, lengths = session.run(None, {"waveforms": waveform[None], "lengths": np.array([len(waveform)])})
                texts.append(decoder.decode_matrix(log_probs[0, : lengths[0]])[0].text)
            rtf = (time.perf_counter() - start) / audio
            words = error_counts([u.text for u in utterances], texts)
            report("inference", f"ONNX Runtime, greedy, fp32, {threads} thread(s): RTF, WER",
                   f"{rtf:.4f}, {100 * words.rate:.2f} %")


def bench_pocketsphinx(utterances, our_rtf: float | None) -> None:
    try:
        from pocketsphinx import Decoder
    except ImportError:
        report("pocketsphinx", "not installed (pip install pocketsphinx)", "-")
        return
    from asr.data.audio import load_audio
    from asr.data.text import normalize_text

    decoder = Decoder(samprate=16000)
    texts, audio_seconds = [], 0.0
    start = time.perf_counter()
    for utt in utterances:
        samples = load_audio(utt.audio)
        audio_seconds += len(samples) / 16000
        decoder.start_utt()
        decoder.process_raw((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        texts.append(normalize_text(decoder.hyp().hypstr) if decoder.hyp() else "")
    rtf = (time.perf_counter() - start) / audio_seconds
    words = error_counts([u.text for u in utterances], texts)
    report("pocketsphinx", "PocketSphinx (its own US English model), 1 process: RTF, WER",
           f"{rtf:.4f}, {100 * words.rate:.2f} %", f"ours faster: {our_rtf:.4f}" if our_rtf else "")


def bench_long_audio(checkpoint: str, utterances, minutes: float) -> None:
    """A recording made by concatenating dev utterances (0.5 s pauses) up to ``minutes``."""
    from asr.data.audio import load_audio

    pieces, order, total = [], [], 0.0
    pause = np.zeros(8000, dtype=np.float32)
    while total < minutes * 60:
        for index, utt in enumerate(utterances):
            samples = load_audio(utt.audio)
            pieces += [samples, pause]
            order.append(index)
            total += len(samples) / 16000 + 0.5
            if total >= minutes * 60:
                break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.flac"
        soundfile.write(path, np.concatenate(pieces), 16000)
        del pieces
        # A child process, so that its peak RSS is the transcription's alone.
        # VmHWM, not ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss.
        code = ("import re, sys, json, asr; r = asr.load_model(sys.argv[1]).transcribe([sys.argv[2]])[0]; "
                "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
                "print(json.dumps({'text': r.text, 'error': r.error, 'rss': hwm}))")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, checkpoint, str(path)], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip().splitlines()[-1]
        seconds = time.perf_counter() - start
    result = json.loads(out)
    report("long audio", f"{total / 60:.0f}-minute file: peak RSS of `transcribe`", f"{result['rss'] / 1024:.0f} MB",
           "<= 2048 MB")
    report("long audio", f"{total / 60:.0f}-minute file: wall time (load + windows + decode)", f"{seconds:.0f} s")
    reference = " ".join(utterances[i].text for i in order)
    long_wer = wer([reference], [result["text"]])
    one_by_one = load_model(checkpoint).transcribe([u.audio for u in utterances[: max(order) + 1]])
    short_wer = wer([reference], [" ".join(one_by_one[i].text for i in order)])
    report("long audio", "WER: long file vs its utterances one by one",
           f"{100 * long_wer:.2f} % vs {100 * short_wer:.2f} %", "within 5 % relative")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the CPU recipe model")
    parser.add_argument("manifest", help="evaluation utterances (JSONL)")
    parser.add_argument("--lm")
    parser.add_argument("--lexicon")
    parser.add_argument("--utterances", type=int, default=40, help="utterances for the inference sections")
    parser.add_argument("--long-minutes", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-sizes", default="", help="training section: also these LAYERSxHIDDEN, e.g. 4x256,5x256")
    parser.add_argument("--only", default="gemm,features,training,inference,pocketsphinx,long")
    parser.add_argument("--out", help="write the table (markdown) here, e.g. BENCHMARKS.md")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    utterances = read_manifest(args.manifest)[: args.utterances]
    peaks = bench_gemm(args.repeats) if sections & {"gemm", "training"} else {}
    if "features" in sections:
        bench_features(args.repeats)
    if "training" in sections:
        bench_training(args.manifest, peaks, max(3, args.repeats // 2), [s for s in args.model_sizes.split(",") if s])
    rtf = None
    if "inference" in sections:
        rtf = bench_inference(args.checkpoint, utterances, args.lm, args.lexicon)["fp32_1"]
    if "pocketsphinx" in sections:
        bench_pocketsphinx(utterances, rtf)
    if "long" in sections:
        bench_long_audio(args.checkpoint, read_manifest(args.manifest), args.long_minutes)

    if args.out:
        write_table(args.out)


if __name__ == "__main__":
    main()
