"""Synthesise a small spoken corpus with espeak-ng, in the LibriSpeech layout.

Each "speaker" is one espeak-ng voice (an accent plus a voice variant), and speaks
digit strings and short command phrases at varied speed and pitch. The test speakers use
voice variants that no training speaker uses, so the test set measures generalisation to
unseen voices. Output: ``DEST/{train,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
with one ``<speaker>-<chapter>.trans.txt`` per chapter, 16 kHz mono FLAC.

    python recipes/espeak/synthesize.py DEST [--utterances-per-speaker 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
import soxr

SAMPLE_RATE = 16_000
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]
VERBS = ["open", "close", "move", "find", "show", "stop", "call", "play", "turn on", "turn off"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "small", "big"]
OBJECTS = ["door", "window", "light", "radio", "box", "car", "phone", "music", "kitchen", "garden"]
PLACES = ["now", "today", "please", "at noon", "in the morning", "for me", "again", "quickly"]

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "f1", "f2", "f3"]
TEST_VARIANTS = ["m5", "m7", "f4", "f5"]  # never heard in training


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.45:
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 7)))
    words = [rng.choice(VERBS), "the", rng.choice(COLOURS), rng.choice(OBJECTS)]
    if rng.random() < 0.6:
        words.append(rng.choice(PLACES))
    return " ".join(words)


def voices(seed: int) -> tuple[list[str], list[str]]:
    """Training and test voices: every accent, train variants vs held-out variants."""
    rng = random.Random(seed)
    train = [f"{accent}+{variant}" for accent in ACCENTS for variant in rng.sample(TRAIN_VARIANTS, 3)]
    test = [f"{accent}+{rng.choice(TEST_VARIANTS)}" for accent in rng.sample(ACCENTS, 4)]
    return train, test


def speak(text: str, voice: str, speed: int, pitch: int, out_path: Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav.name, text],
            check=True, capture_output=True,
        )
        samples, rate = soundfile.read(wav.name, dtype="float32")
    samples = soxr.resample(samples, rate, SAMPLE_RATE)
    soundfile.write(out_path, samples, SAMPLE_RATE, format="FLAC")


def synthesize(dest: Path, utterances_per_speaker: int, seed: int) -> None:
    train_voices, test_voices = voices(seed)
    rng = random.Random(seed)
    jobs = []
    for split, split_voices in (("train", train_voices), ("test", test_voices)):
        for number, voice in enumerate(split_voices):
            speaker = f"{100 + number if split == 'train' else 900 + number}"
            chapter_dir = dest / split / speaker / "1"
            chapter_dir.mkdir(parents=True, exist_ok=True)
            count = utterances_per_speaker if split == "train" else max(20, utterances_per_speaker // 3)
            lines = []
            for utt in range(count):
                utt_id = f"{speaker}-1-{utt:04d}"
                text = sentence(rng)
                lines.append(f"{utt_id} {text.upper()}")
                jobs.append((text, voice, rng.randint(130, 200), rng.randint(30, 70), chapter_dir / f"{utt_id}.flac"))
            (chapter_dir / f"{speaker}-1.trans.txt").write_text("\n".join(lines) + "\n")
            print(f"{split} speaker {speaker}: voice {voice}, {count} utterances")
    # espeak-ng is a separate process per utterance, so threads give real parallelism.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: speak(*job), jobs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--utterances-per-speaker", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is not installed. On Debian/Ubuntu: sudo apt-get install espeak-ng", file=sys.stderr)
        return 1
    synthesize(args.dest, args.utterances_per_speaker, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
