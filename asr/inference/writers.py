"""Transcription outputs: plain text, JSON lines, SRT and WebVTT subtitles, TSV segments, and
the file names they are written under (shared by ``asr transcribe`` and anything serving results)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.inference.results import TimedWord, Transcription  # no torch for writing text

FORMATS = ("text", "json", "srt", "vtt", "tsv")
# The formats the page of `asr serve` offers as downloads (asr/serving/page_api.py iterates them).
EXTENSIONS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}
# Every format's file extension; tsv (segments for spreadsheets and scripts) is written as files only.
FILE_EXTENSIONS = {**EXTENSIONS, "tsv": ".tsv"}


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float  # seconds
    text: str  # the cue's words


def subtitle_cues(words: Sequence[TimedWord], max_seconds: float = 6.0, max_words: int = 14,
                  pause: float = 0.8) -> list[Cue]:
    """Group timed words into subtitle cues: a new cue after a pause, or when one gets too long."""
    cues: list[Cue] = []
    current: list[TimedWord] = []
    for word in words:
        if current and (word.start - current[-1].end >= pause or word.end - current[0].start > max_seconds
                        or len(current) >= max_words):
            cues.append(Cue(current[0].start, current[-1].end, " ".join(w.word for w in current)))
            current = []
        current.append(word)
    if current:
        cues.append(Cue(current[0].start, current[-1].end, " ".join(w.word for w in current)))
    return cues


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_srt(cues: Sequence[Cue]) -> str:
    blocks = [f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def format_vtt(cues: Sequence[Cue]) -> str:
    blocks = [f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n" for c in cues]
    return "\n".join(["WEBVTT\n", *blocks])


def format_tsv(cues: Sequence[Cue]) -> str:
    """whisper's tsv: a ``start<TAB>end<TAB>text`` header, then one cue per line, times in
    whole milliseconds (integers sort and subtract without float noise in any spreadsheet)."""
    rows = [f"{round(c.start * 1000)}\t{round(c.end * 1000)}\t{c.text}" for c in cues]
    return "\n".join(["start\tend\ttext", *rows]) + "\n"


def word_record(word: TimedWord) -> dict:
    """One timed word as JSON: the shape of every output that lists words (files, API, live)."""
    return {"word": word.word, "start": word.start, "end": word.end, "confidence": word.confidence}


def json_record(result: Transcription, delays: Sequence[float] | None = None) -> dict:
    """The JSON form of one result: text, duration and timed words, or the error. ``delays``
    (streaming): per word, the seconds from its end to its emission, as ``emitted_after``."""
    if not result.ok:
        record: dict = {"path": result.path, "error": result.error}
    else:
        words = [word_record(w) for w in result.words]
        if delays is not None:
            words = [dict(w, emitted_after=d) for w, d in zip(words, delays)]
        record = {"path": result.path, "text": result.text, "duration": round(result.duration, 3), "words": words}
    if result.warnings:
        record["warnings"] = list(result.warnings)
    return record


def render(result: Transcription, fmt: str, delays: Sequence[float] | None = None) -> str:
    """A successful result in ``fmt`` (one of FORMATS), ending in a newline; ``delays`` as for
    :func:`json_record` (json only)."""
    if fmt == "json":
        output = json.dumps(json_record(result, delays), ensure_ascii=False)
    elif fmt in ("srt", "vtt", "tsv"):
        cues = subtitle_cues(result.words)
        output = {"srt": format_srt, "vtt": format_vtt, "tsv": format_tsv}[fmt](cues)
    elif fmt == "text":
        output = result.text
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {FORMATS}")
    return output if output.endswith("\n") else output + "\n"


def output_names(inputs: Sequence[str | Path], fmt: str, root: str | Path | None = None) -> list[Path]:
    """Relative output paths, one per input, never two alike.

    Each input keeps its path below ``root`` (default: the inputs' deepest common folder), with
    the format's extension instead of its own: ``d1/a.flac d2/a.flac`` -> ``d1/a.json d2/a.json``,
    ``a.flac`` alone -> ``a.json``. Inputs that would still share a name (``a.flac a.wav``)
    keep their own extension too (``a.flac.json``); the same file given twice gets ``-2``.
    """
    extension = FILE_EXTENSIONS[fmt]
    resolved = [Path(os.path.abspath(p)) for p in inputs]  # abspath: a symlink keeps its own name
    if root is not None:
        root = Path(os.path.abspath(root))
    else:
        root = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    relative = [p.relative_to(root) for p in resolved]
    names = [r.with_suffix(extension) for r in relative]
    clashing = {n for n in names if names.count(n) > 1}
    names = [r.with_name(r.name + extension) if n in clashing else n for r, n in zip(relative, names)]
    taken: set[Path] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = name.with_name(f"{name.stem}-{number}{name.suffix}")
        taken.add(candidate)
        unique.append(candidate)
    return unique
