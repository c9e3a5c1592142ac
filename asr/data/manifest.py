"""Manifests: JSONL, one utterance per line, read without torch (inference uses them too)::

    {"id": "84-121123-0000", "audio": "/data/84/121123/84-121123-0000.flac",
     "text": "go do you hear", "duration": 1.47, "speaker": "84"}

``audio`` and ``text`` are required; ``duration`` is read from the audio file's header when
missing; ``id`` defaults to the audio file's stem.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asr.data.audio import AudioError, audio_duration
from asr.errors import AsrError
from asr.utils.atomic import atomic_write


class ManifestError(AsrError, ValueError):
    """A manifest file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str  # unique utterance id, e.g. "84-121123-0000"
    audio: str  # path of the audio file
    text: str  # normalised transcript
    duration: float  # seconds
    speaker: str = ""  # speaker id, used to split train/dev by speaker
    speed: float = 1.0  # speed perturbation factor applied on load (0.9 = slower and lower)


@dataclass(frozen=True)
class ManifestProblem:
    path: str  # the manifest file
    line: int  # 1-based line number
    reason: str  # why the line was skipped

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ManifestReading:
    utterances: list[Utterance] = field(default_factory=list)  # the usable lines, in file order
    line_numbers: list[int] = field(default_factory=list)  # 1-based line of each utterance
    problems: list[ManifestProblem] = field(default_factory=list)  # the skipped lines, with reasons


def read_manifest_lines(path: str | Path) -> ManifestReading:
    """Every usable line of a manifest, and a :class:`ManifestProblem` for each line that is
    not (bad JSON or UTF-8, a missing or mistyped field): one bad line does not cost the rest.

    Raises :class:`ManifestError` only when the file itself cannot be read.
    """
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as err:
        raise ManifestError(f"cannot read manifest {path}: {err}") from err
    reading = ManifestReading()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = decode_utf8_line(raw)
            if not line.strip():
                continue
            utterance = _parse_line(line)
        except (ValueError, TypeError, AudioError) as err:  # json.JSONDecodeError is a ValueError
            reading.problems.append(ManifestProblem(str(path), number, str(err)))
            continue
        reading.utterances.append(utterance)
        reading.line_numbers.append(number)
    return reading


def decode_utf8_line(raw: bytes) -> str:
    """One line of a text file; ValueError naming the offending byte if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None


def utf8_lines(raw_lines: Sequence[bytes], path: str | Path, bad_lines: list[str],
               first: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a corpus file that is not blank; a line that is not
    UTF-8 goes into ``bad_lines`` as "path:line: reason" (one bad line must not cost the rest of
    the corpus). ``first`` is the number of ``raw_lines[0]``."""
    for number, raw in enumerate(raw_lines, start=first):
        try:
            line = decode_utf8_line(raw)
        except ValueError as err:
            bad_lines.append(f"{path}:{number}: {err}")
            continue
        if line.strip():
            yield number, line


def _parse_line(line: str) -> Utterance:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON ({err})") from err
    if not isinstance(entry, dict):
        raise TypeError(f"expected a JSON object, found {type(entry).__name__}")
    missing = [key for key in ("audio", "text") if key not in entry]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(repr(k) for k in missing)}")
    if not isinstance(entry["audio"], str) or not entry["audio"]:
        raise ValueError(f"'audio' must be a file path, not {entry['audio']!r}")
    if not isinstance(entry["text"], str):
        raise TypeError(f"'text' must be a string, not {entry['text']!r}")
    audio = entry["audio"]
    duration = _number(entry, "duration") if "duration" in entry else audio_duration(audio)
    speed = _number(entry, "speed") if "speed" in entry else 1.0
    if duration < 0 or speed <= 0:
        raise ValueError(f"'duration' must be >= 0 and 'speed' > 0, not {duration!r} and {speed!r}")
    return Utterance(
        id=str(entry.get("id", Path(audio).stem)),
        audio=audio,
        text=entry["text"],
        duration=duration,
        speaker=str(entry.get("speaker", "")),
        speed=speed,
    )


def _number(entry: dict, key: str) -> float:
    value = entry[key]
    if isinstance(value, str):  # "1.47" from tools that quote every value
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a finite number, not {value!r}")
    return float(value)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Every utterance of a manifest; any bad line raises :class:`ManifestError` naming the
    file, line and reason (training wants all of its data or a clear stop). Use
    :func:`read_manifest_lines` to skip bad lines instead."""
    reading = read_manifest_lines(path)
    if reading.problems:
        first = reading.problems[0]
        more = f" (and {len(reading.problems) - 1} more bad lines)" if len(reading.problems) > 1 else ""
        raise ManifestError(f"{first}{more}")
    return reading.utterances


def write_manifest(path: str | Path, utterances: Sequence[Utterance]) -> None:
    """Write utterances as a manifest (atomically), the format :func:`read_manifest_lines` reads."""
    with atomic_write(path) as out:
        for utt in utterances:
            entry = asdict(utt)
            if entry["speed"] == 1.0:
                del entry["speed"]
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")


def split_by_speaker(
    utterances: Sequence[Utterance], dev_speakers: int | Sequence[str], seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Split into (train, dev) with no speaker in both; ``dev_speakers`` is a count or ids."""
    speakers = sorted({u.speaker for u in utterances})
    if isinstance(dev_speakers, int):
        if not 0 < dev_speakers < len(speakers):
            raise ManifestError(f"cannot hold out {dev_speakers} of {len(speakers)} speakers")
        chosen = set(random.Random(seed).sample(speakers, dev_speakers))
    else:
        chosen = set(dev_speakers)
        unknown = chosen - set(speakers)
        if unknown:
            raise ManifestError(f"unknown speaker id(s): {sorted(unknown)}")
    train = [u for u in utterances if u.speaker not in chosen]
    dev = [u for u in utterances if u.speaker in chosen]
    return train, dev


def speakers_for_share(utterances: Sequence[Utterance], share: float, seed: int = 0) -> list[str]:
    """Speakers, drawn in a seeded order, who together hold ``share`` of the utterances (a
    speaker who would take the set past it is passed over): a held-out set of that size however
    unevenly the speakers contributed (Common Voice: one voice reads 12 clips, most read 1)."""
    if not 0 < share < 1:
        raise ManifestError(f"the share of utterances to hold out must be between 0 and 1, not {share}")
    counts: dict[str, int] = {}
    for utterance in utterances:
        counts[utterance.speaker] = counts.get(utterance.speaker, 0) + 1
    order = sorted(counts)
    random.Random(seed).shuffle(order)
    target = max(1, round(share * len(utterances)))
    chosen: list[str] = []
    held = 0
    for speaker in order:
        if held + counts[speaker] <= target:
            chosen.append(speaker)
            held += counts[speaker]
    if not chosen:  # every speaker alone holds more: the one who holds the fewest
        chosen = [min(order, key=lambda speaker: counts[speaker])]
    if len(chosen) == len(order):
        raise ManifestError(f"holding out {share:.0%} of {len(utterances)} utterances takes all "
                            f"{len(order)} speakers: none would be left to train on")
    return chosen


@dataclass
class PrepareReport:
    """Utterances found in a corpus folder (``asr prepare``), and what could not be used, with why."""

    utterances: list[Utterance]
    missing_audio: list[str]  # transcript lines whose audio file does not exist
    missing_transcripts: list[str]  # audio files that no transcript mentions
    unreadable: list[str]  # "path: reason" for audio that exists but cannot be read
    bad_lines: list[str] = field(default_factory=list)  # "file:line: reason" for transcript lines skipped
