"""Synthesise a small spoken corpus with espeak-ng, in the LibriSpeech layout.

Each "speaker" is one espeak-ng voice (an accent plus a voice variant), and speaks
digit strings and short command phrases at varied speed and pitch. The test speakers use
voice variants that no training speaker uses, so the test set measures generalisation to
unseen voices. Output: ``DEST/{train,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
with one ``<speaker>-<chapter>.trans.txt`` per chapter, 16 kHz mono FLAC.

    python recipes/espeak/synthesize.py DEST [--language en|es] [--utterances-per-speaker 120] [--seed 0]

``--language es`` speaks the same kinds of sentences in Spanish with espeak-ng's two Spanish
accents (Spain, Latin America), to show that a model of a language other than English learns
(its characters, accents and ñ included, come from the transcripts).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
import soxr

SAMPLE_RATE = 16_000
# Per language: the sentence parts, and espeak-ng's accents of it.
@dataclass(frozen=True)
class Wording:
    digits: list[str]
    verbs: list[str]
    article: str
    colours: list[str]
    objects: list[str]
    places: list[str]
    accents: list[str]
    noun_first: bool  # Spanish puts the colour after the object ("la puerta roja")


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]
VERBS = ["open", "close", "move", "find", "show", "stop", "call", "play", "turn on", "turn off"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "small", "big"]
OBJECTS = ["door", "window", "light", "radio", "box", "car", "phone", "music", "kitchen", "garden"]
PLACES = ["now", "today", "please", "at noon", "in the morning", "for me", "again", "quickly"]

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
ENGLISH = Wording(DIGITS, VERBS, "the", COLOURS, OBJECTS, PLACES, ACCENTS, noun_first=False)
SPANISH = Wording(
    digits=["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    verbs=["abre", "cierra", "mueve", "busca", "muestra", "para", "llama", "toca", "enciende", "apaga"],
    article="la",  # every object is feminine, so article and colour always agree
    colours=["roja", "verde", "azul", "amarilla", "negra", "blanca", "pequeña", "grande"],
    objects=["puerta", "ventana", "luz", "radio", "caja", "música", "cocina", "lámpara", "mesa", "canción"],
    places=["ahora", "hoy", "por favor", "a mediodía", "por la mañana", "para mí", "otra vez", "rápido"],
    accents=["es", "es-419"],
    noun_first=True,
)
WORDINGS = {"en": ENGLISH, "es": SPANISH}
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "f1", "f2", "f3"]
TEST_VARIANTS = ["m5", "m7", "f4", "f5"]  # never heard in training


def sentence(rng: random.Random, wording: Wording = ENGLISH) -> str:
    if rng.random() < 0.45:
        return " ".join(rng.choice(wording.digits) for _ in range(rng.randint(3, 7)))
    verb, colour, thing = rng.choice(wording.verbs), rng.choice(wording.colours), rng.choice(wording.objects)
    words = [verb, wording.article, *((thing, colour) if wording.noun_first else (colour, thing))]
    if rng.random() < 0.6:
        words.append(rng.choice(wording.places))
    return " ".join(words)


def voices(seed: int, accents: list[str] = ACCENTS) -> tuple[list[str], list[str]]:
    """Training and test voices: every accent, train variants vs held-out variants. With fewer
    than 8 accents (Spanish has 2) each accent gets more training variants, so that there are
    as many training voices, and the 4 test voices reuse accents with unheard variants."""
    rng = random.Random(seed)
    per_accent = min(len(TRAIN_VARIANTS), -(-24 // len(accents)))
    train = [f"{accent}+{variant}" for accent in accents for variant in rng.sample(TRAIN_VARIANTS, per_accent)]
    if len(accents) >= 4:
        test = [f"{accent}+{rng.choice(TEST_VARIANTS)}" for accent in rng.sample(accents, 4)]
    else:
        test = [f"{accents[i % len(accents)]}+{variant}" for i, variant in enumerate(rng.sample(TEST_VARIANTS, 4))]
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


def synthesize(dest: Path, utterances_per_speaker: int, seed: int, wording: Wording = ENGLISH) -> None:
    train_voices, test_voices = voices(seed, wording.accents)
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
                text = sentence(rng, wording)
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
    parser.add_argument("--language", choices=sorted(WORDINGS), default="en", help="the sentences' language")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is not installed. On Debian/Ubuntu: sudo apt-get install espeak-ng", file=sys.stderr)
        return 1
    synthesize(args.dest, args.utterances_per_speaker, args.seed, WORDINGS[args.language])
    return 0


if __name__ == "__main__":
    sys.exit(main())
