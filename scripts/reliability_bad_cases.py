"""The bad-input cases: broken audio, manifests, configs and checkpoints, each an `asr` command line.

Each case gives the CLI a bad file beside good ones and says what handling it must see: the
exit codes allowed, what stderr must name, which good results must still be there. One
checkpoint is a pickle whose payload would create a marker file if it were ever unpickled.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch
import yaml
from reliability_common import say

from asr.config import to_dict
from asr.data.synthetic import SAMPLE_RATE, tiny_config, tone_audio


@dataclass
class Outcome:
    """What one CLI run did."""

    code: int | None  # exit status; None when it timed out
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Case:
    """One kind of bad input, given to the CLI beside good files."""

    name: str  # what kind of bad input
    group: str  # audio, manifest, config, checkpoint, output
    argv: list[str]  # asr arguments
    codes: set[int]  # acceptable exit codes
    names: list[str] = field(default_factory=list)  # strings stderr must hold (the file, the key)
    good_paths: list[str] = field(default_factory=list)  # transcribe --format json: results that must be there
    scored: int | None = None  # evaluate: utterances that must be scored
    check: Callable[[Outcome], str | None] | None = None  # any further check: a problem, or None
    timeout: float = 120.0


class Payload:
    """Unpickling this creates ``marker``: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


PNG_HEADER = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
                           "9c6360000002000154a24f5d0000000049454e44ae426082")


def write_long_audio(path: Path, hours: float) -> None:
    """Hours of near-silence with a tone word every minute, written in one-minute pieces."""
    word = tone_audio("bad cab", seed=1)
    minute = SAMPLE_RATE * 60
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, format="FLAC") as out:
        for number in range(int(hours * 60)):
            piece = np.random.default_rng(number).normal(0, 0.002, minute).astype(np.float32)
            piece[SAMPLE_RATE : SAMPLE_RATE + len(word)] += word
            out.write(piece)


def audio_cases(folder: Path, checkpoint: str, good: list[str], quick: bool) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    tone = tone_audio("bad cab", seed=3)
    real = Path(good[0]).read_bytes()
    cases: list[Case] = []

    def case(name: str, filename: str, content: bytes | None, ok: bool, check=None, extra_names=(),
             timeout: float = 120.0, warning_codes: bool = False) -> None:
        """``ok``: the file must be transcribed; ``warning_codes``: with a warning, exit 0 or 1."""
        path = folder / filename
        if content is not None:
            path.write_bytes(content)
        argv = ["transcribe", checkpoint, good[0], str(path), good[1], "--format", "json"]
        codes = {0, 1} if warning_codes else {0} if ok else {1}
        cases.append(Case(name, "audio", argv, codes, [] if ok else [str(path), *extra_names],
                          good_paths=good + ([str(path)] if ok else []), check=check, timeout=timeout))

    wav = wav_bytes(tone)
    case("empty file (0 bytes)", "empty.wav", b"", ok=False)
    case("WAV header only, no samples", "header.wav", wav_bytes(np.zeros(0, np.float32)), ok=False)
    case("text file renamed .wav", "text.wav", b"this is not audio\n" * 20, ok=False)
    case("PNG image renamed .wav", "image.wav", PNG_HEADER, ok=False)
    case("random bytes .flac", "random.flac", np.random.default_rng(0).bytes(5000), ok=False)
    case("missing file", "missing.wav", None, ok=False)
    nan = tone.copy()
    nan[1000:1010] = np.nan
    case("NaN samples (float WAV)", "nan.wav", wav_bytes(nan, subtype="FLOAT"), ok=False)
    inf = tone.copy()
    inf[500] = np.inf
    case("infinite samples (float WAV)", "inf.wav", wav_bytes(inf, subtype="FLOAT"), ok=False)
    case("a directory named .wav", "folder.wav", None, ok=False)
    (folder / "folder.wav").mkdir(exist_ok=True)
    for rate in (8000, 48000):
        import soxr

        case(f"{rate // 1000} kHz", f"rate{rate}.wav", wav_bytes(soxr.resample(tone, SAMPLE_RATE, rate), rate), ok=True)
    case("stereo", "stereo.wav", wav_bytes(np.stack([tone, 0.5 * tone], axis=1)), ok=True)
    case("24-bit PCM", "pcm24.wav", wav_bytes(tone, subtype="PCM_24"), ok=True)
    case("8-bit unsigned PCM", "pcm8.wav", wav_bytes(tone, subtype="PCM_U8"), ok=True)
    case("silence", "silence.wav", wav_bytes(np.zeros(SAMPLE_RATE * 2, np.float32)), ok=True)
    case("clipping (10x over full scale)", "clipped.wav", wav_bytes(np.clip(10 * tone, -1, 1)), ok=True)
    case("50 ms", "short.wav", wav_bytes(tone[: SAMPLE_RATE // 20]), ok=True)
    case("one sample", "one.wav", wav_bytes(tone[:1]), ok=True)
    case("DC offset", "dc.wav", wav_bytes(np.clip(tone + 0.5, -1, 1)), ok=True)
    case("file name with spaces and accents", "é t é.flac", real, ok=True)
    case("Ogg Vorbis", "vorbis.ogg", _encoded(tone, "OGG", "VORBIS"), ok=True)

    # Problems that still allow a transcript: it must say so, naming the file.
    def warned(path_name: str) -> Callable[[Outcome], str | None]:
        return lambda o: None if (str(folder / path_name) in o.stderr and "warning" in o.stderr.lower()) else \
            "no warning naming the file"

    case("WAV cut in half (header promises more)", "halfcut.wav", wav[: len(wav) // 2], ok=True,
         check=warned("halfcut.wav"), warning_codes=True)
    flac = _encoded(tone, "FLAC", "PCM_16")
    path = folder / "truncated.flac"
    path.write_bytes(flac[: len(flac) // 2])
    argv = ["transcribe", checkpoint, good[0], str(path), good[1], "--format", "json"]
    cases.append(Case("truncated FLAC", "audio", argv, {0, 1}, good_paths=good,
                      check=lambda o, p=str(path): None if p in o.stderr else "nothing names the truncated file"))
    antiphase = np.stack([tone, -tone], axis=1)
    case("stereo in anti-phase (cancels when averaged)", "antiphase.wav", wav_bytes(antiphase), ok=True,
         check=_antiphase_check(str(folder / "antiphase.wav")), warning_codes=True)
    if not quick:
        long_path = folder / "three_hours.flac"
        say("bad-input: writing a 3-hour file ...")
        write_long_audio(long_path, 3.0)
        case("3 hours long (FLAC)", "three_hours.flac", None, ok=True, timeout=900)
    return cases


def _encoded(samples: np.ndarray, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _antiphase_check(path: str) -> Callable[[Outcome], str | None]:
    def check(outcome: Outcome) -> str | None:
        if path in outcome.stderr:
            return None  # told the user
        for line in outcome.stdout.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("path") == path and record.get("words"):
                    return None  # a downmix that keeps the speech
        return "downmixed to silence without a word"
    return check


def output_cases(folder: Path, checkpoint: str, good: list[str]) -> list[Case]:
    cases = []
    first, second = folder / "d1" / "same.flac", folder / "d2" / "same.flac"
    for path in (first, second):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good[0], path)
    out = folder / "same-out"

    def both_kept(outcome: Outcome) -> str | None:
        written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
        if outcome.code == 0 and len(written) < 2:
            return f"two inputs named same.flac, {len(written)} output file(s)"
        return None

    cases.append(Case("two inputs with the same name, --output-dir", "output",
                      ["transcribe", checkpoint, str(first), str(second), "--output-dir", str(out)], {0, 2},
                      check=both_kept))
    blocker = folder / "a-file"
    blocker.write_text("not a folder")
    cases.append(Case("--output-dir is an existing file", "output",
                      ["transcribe", checkpoint, good[0], "--output-dir", str(blocker)], {2}, [str(blocker)]))
    return cases


def manifest_cases(folder: Path, checkpoint: str, corpus: dict[str, Path], baseline_cer: str) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    good_lines = corpus["valid"].read_text().splitlines()[:2]
    good = [json.loads(line) for line in good_lines]
    cases: list[Case] = []

    def evaluate(name: str, bad: bytes, codes: set[int], scored: int | None, named: bool = True, check=None) -> None:
        path = folder / (re.sub(r"\W+", "_", name) + ".jsonl")
        path.write_bytes(good_lines[0].encode() + b"\n" + bad + b"\n" + good_lines[1].encode() + b"\n")
        names = [f"{path}:2"] if named else []
        cases.append(Case(name, "manifest", ["evaluate", checkpoint, str(path), "--worst", "0"], codes,
                          scored=scored, check=check or (lambda o, n=names: None if all(x in o.stdout + o.stderr
                                                                                     for x in n) else
                                                         f"no message names {n[0]}")))

    line = dict(good[0], id="x")
    evaluate("manifest: audio file missing", json.dumps(dict(line, audio=str(folder / "gone.flac"))).encode(), {1}, 2,
             named=False, check=lambda o: None if "gone.flac" in o.stdout + o.stderr else "the missing file is not named")
    evaluate("manifest: malformed JSON line", b'{"id": "x", "audio": ', {1}, 2)
    evaluate("manifest: non-UTF-8 bytes in a line", json.dumps(line).encode().replace(b"bad", b"b\xe9d\xff"), {1}, 2)
    evaluate("manifest: line without text", json.dumps({k: v for k, v in line.items() if k != "text"}).encode(), {1}, 2)
    evaluate("manifest: line without audio", json.dumps({k: v for k, v in line.items() if k != "audio"}).encode(),
             {1}, 2)
    evaluate("manifest: line without duration", json.dumps({k: v for k, v in line.items() if k != "duration"}).encode(),
             {0, 1}, None, check=lambda o: None if re.search(r"utterances: 3 scored", o.stdout) or "utterances: 2 scored"
             in o.stdout else "the good lines were not scored")
    evaluate("manifest: duration not a number", json.dumps(dict(line, duration="long")).encode(), {0, 1}, None,
             check=lambda o: None if re.search(r"utterances: [23] scored", o.stdout) else "the good lines were not scored")
    evaluate("manifest: a JSON list, not an object", b"[1, 2, 3]", {1}, 2)
    evaluate("manifest: unknown characters in the reference", json.dumps(dict(line, text="naïve 42 ünïcode")).encode(),
             {0, 1}, None, named=False, check=lambda o: None if re.search(r"utterances: [23] scored", o.stdout) else
             "the good lines were not scored")

    shouting = folder / "upper_case_references.jsonl"
    shouting.write_text("".join(json.dumps(dict(g, text=g["text"].upper().replace(" ", ", ") + "!")) + "\n"
                                for g in good))
    cases.append(Case("manifest: upper case and punctuation in references", "manifest",
                      ["evaluate", checkpoint, str(shouting), "--worst", "0"], {0}, scored=2,
                      check=lambda o: None if f"CER {baseline_cer} " in o.stdout else
                      f"CER differs from the normalised references' {baseline_cer} %"))
    empty = folder / "empty.jsonl"
    empty.write_text("")
    cases.append(Case("manifest: empty file", "manifest", ["evaluate", checkpoint, str(empty)], {1, 2}, [str(empty)],
                      check=lambda o: "reported a WER for no utterances" if "WER 0.00" in o.stdout else None))
    missing = folder / "no-such-manifest.jsonl"
    cases.append(Case("manifest: file missing", "manifest", ["evaluate", checkpoint, str(missing)], {2}, [str(missing)]))
    # `asr prepare` on a LibriSpeech-layout folder whose transcript is not UTF-8.
    chapter = folder / "libri" / "1" / "2"
    chapter.mkdir(parents=True, exist_ok=True)
    shutil.copy(good[0]["audio"], chapter / "1-2-0000.flac")
    shutil.copy(good[1]["audio"], chapter / "1-2-0001.flac")
    transcript = chapter / "1-2.trans.txt"
    transcript.write_bytes(b"1-2-0000 BAD CAB\n1-2-0001 A D\xe9B\xff\n")
    cases.append(Case("prepare: non-UTF-8 transcript line", "manifest",
                      ["prepare", str(folder / "libri"), str(folder / "prepared.jsonl")], {0, 1, 2},
                      [f"{transcript}"]))
    return cases


def training_cases(folder: Path, corpus: dict[str, Path], trained_run: Path) -> list[Case]:
    """Bad configs and bad training manifests for `asr train` (each must stop before training, or skip)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    base = to_dict(tiny_config(folder / "run", corpus, train={"epochs": 1, "max_steps": 2, "threads": 1}))

    def config_case(name: str, names: list[str], codes: set[int] = frozenset({2}), overrides=(), edit=None,
                    text: str | None = None, out: Path | None = None) -> None:
        data = json.loads(json.dumps(base))
        data["train"]["out_dir"] = str(out or folder / ("run_" + re.sub(r"\W+", "_", name)))
        if edit:
            edit(data)
        path = folder / (re.sub(r"\W+", "_", name) + ".yaml")
        path.write_text(text if text is not None else yaml.safe_dump(data))
        cases.append(Case(name, "config", ["train", str(path), *overrides], set(codes),
                          [n.replace("{path}", str(path)) for n in names]))

    config_case("config: unknown key", ["colour"], edit=lambda d: d["model"].update(colour="blue"))
    config_case("config: wrong type", ["hidden_size"], edit=lambda d: d["model"].update(hidden_size="big"))
    config_case("config: YAML syntax error", ["{path}"], text="model: {hidden_size: [1, 2\n")
    config_case("config: top level is a list", ["{path}"], text="- 1\n- 2\n")
    config_case("config: training manifest missing", ["nowhere.jsonl"],
                edit=lambda d: d["data"].update(train_manifest=str(folder / "nowhere.jsonl")))
    config_case("config: override without '='", ["model.hidden_size"], overrides=["model.hidden_size"])
    for key, value in (("model.num_layers", 0), ("model.hidden_size", -4), ("model.dropout", 1.5),
                       ("optim.lr", -1.0), ("train.epochs", 0), ("data.max_frames_per_batch", 0)):
        config_case(f"config: {key}={value}", [key.split(".")[1]], overrides=[f"{key}={value}"])
    if not torch.cuda.is_available():
        config_case("config: train.device=cuda on a CPU-only torch", ["cuda"], overrides=["train.device=cuda"])
    resized = folder / "resized"
    resized.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_run / "last.pt", resized / "last.pt")
    config_case("config: resuming into an out_dir of another model size", [str(resized)],
                overrides=["model.hidden_size=32"], out=resized)

    unreadable = folder / "unreadable.jsonl"
    unreadable.write_text("".join(json.dumps({"id": f"u{i}", "audio": str(folder / f"u{i}.flac"), "text": "abc",
                                              "duration": 1.0}) + "\n" for i in range(3)))
    for i in range(3):
        (folder / f"u{i}.flac").write_bytes(b"not audio")
    config_case("train manifest: every file unreadable", [str(unreadable)],
                edit=lambda d: d["data"].update(train_manifest=str(unreadable)))
    long_text = folder / "too_long.jsonl"
    rows = corpus["train"].read_text().splitlines()
    crowded = dict(json.loads(rows[0]), id="crowded", text="abc " * 60)
    long_text.write_text("\n".join([*rows, json.dumps(crowded)]) + "\n")
    config_case("train manifest: transcript longer than its frames allow", [], codes={0},
                edit=lambda d: d["data"].update(train_manifest=str(long_text)))
    return cases


def checkpoint_cases(folder: Path, checkpoint: str, good: list[str], marker: Path) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    real = Path(checkpoint).read_bytes()
    cases: list[Case] = []

    def case(name: str, filename: str, content: bytes | None = None, writer=None) -> None:
        path = folder / filename
        if content is not None:
            path.write_bytes(content)
        if writer is not None:
            writer(path)
        cases.append(Case(name, "checkpoint", ["transcribe", str(path), *good], {2}, [str(path)]))

    case("checkpoint: empty file", "empty.pt", b"")
    case("checkpoint: truncated", "truncated.pt", real[: len(real) // 2])
    case("checkpoint: random bytes", "random.pt", np.random.default_rng(1).bytes(4096))
    case("checkpoint: a text file", "text.pt", b"hello\n")
    case("checkpoint: a plain pickle carrying a payload", "payload.pkl",
         writer=lambda p: p.write_bytes(__import__("pickle").dumps({"model": Payload(marker)})))
    case("checkpoint: torch.save zip carrying a payload", "payload.pt",
         writer=lambda p: torch.save({"format": "asr-checkpoint", "version": 1, "model": Payload(marker)}, p))

    def patched(path: Path, change: Callable[[dict], None]) -> None:
        payload = torch.load(checkpoint, weights_only=True)
        change(payload)
        torch.save(payload, path)

    case("checkpoint: a future format version", "future.pt", writer=lambda p: patched(p, lambda d: d.update(version=99)))
    case("checkpoint: another program's file", "foreign.pt", writer=lambda p: torch.save({"state_dict": {}}, p))
    case("checkpoint: weights missing", "noweights.pt", writer=lambda p: patched(p, lambda d: d.pop("model")))
    case("checkpoint: NaN weights", "nan.pt",
         writer=lambda p: patched(p, lambda d: [t.fill_(math.nan) for t in d["model"].values() if t.is_floating_point()]))
    case("checkpoint: zero normalisation std", "zerostd.pt",
         writer=lambda p: patched(p, lambda d: d["normalizer"]["std"].zero_()))
    case("checkpoint: a folder without a model", "empty-folder", writer=lambda p: p.mkdir(exist_ok=True))
    case("checkpoint: a zip archive of something else", "other.zip",
         writer=lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "hello"))
    cases += model_folder_cases(folder, checkpoint, good)
    return cases


def model_folder_cases(folder: Path, checkpoint: str, good: list[str]) -> list[Case]:
    """`asr package` folders: a good one (control) and damaged ones."""
    try:
        from asr.deploy.package import package_model
        from asr.storage.model_folder import CONFIG_FILE, VOCABULARY_FILE, WEIGHTS_FILE
    except ImportError:  # an asr without model folders
        return []
    cases = []
    for name, damage in (
        ("good (control)", None),
        ("truncated model.safetensors", lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:999])),
        ("config.json not JSON", lambda f: (f / CONFIG_FILE).write_text("{not json")),
        ("vocabulary missing", lambda f: (f / VOCABULARY_FILE).unlink()),
        ("model.safetensors replaced by a pickle", lambda f: torch.save({"x": torch.zeros(1)}, f / WEIGHTS_FILE)),
    ):
        target = folder / ("folder-" + re.sub(r"\W+", "_", name))
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            package_model(checkpoint, target)
        if damage is None:
            cases.append(Case(f"model folder: {name}", "checkpoint", ["transcribe", str(target), *good, "--format",
                                                                      "json"], {0}, good_paths=good))
            continue
        damage(target)
        cases.append(Case(f"model folder: {name}", "checkpoint", ["transcribe", str(target), *good], {2}, [str(target)]))
    return cases
