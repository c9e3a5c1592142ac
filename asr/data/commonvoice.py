"""Common Voice folders (one language of a release) read into utterances.

A language folder holds ``clips/*.mp3`` and tab-separated tables of them: ``validated.tsv``
(every clip the community accepted) and its speaker-disjoint ``train.tsv``, ``dev.tsv`` and
``test.tsv`` (also ``other.tsv`` and ``invalidated.tsv``). Each row names a clip (``path``), what
was read (``sentence``, written with case and punctuation) and the contributor (``client_id``,
an anonymous hash: the speaker, so that a split by speaker keeps a voice out of training). The
clips are read as MP3 by soundfile, whose libsndfile reads MP3 from version 1.1.0 on; sentences
are normalised by the language's rules (asr.data.text).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import soundfile

from asr.data.audio import AUDIO_EXTENSIONS, AudioError, audio_duration
from asr.data.manifest import ManifestError, PrepareReport, Utterance, decode_utf8_line, utf8_lines
from asr.data.text import ENGLISH, normalize_text
from asr.errors import AsrError

# The tables of a release, by the name `asr prepare --split` takes; validated.tsv holds the others' clips.
SPLITS = ("validated", "train", "dev", "test", "other", "invalidated")
DEFAULT_SPLIT = "validated"
COLUMNS = ("client_id", "path", "sentence")  # the ones read; releases add votes, age, gender, accent, locale, ...
CLIPS = "clips"


class Mp3SupportError(AsrError):
    """The clips are MP3 and this machine's libsndfile cannot read MP3."""


def is_commonvoice_dir(root: str | Path) -> bool:
    """A ``clips`` folder beside at least one of the release's tables."""
    root = Path(root)
    return (root / CLIPS).is_dir() and any((root / f"{split}.tsv").is_file() for split in SPLITS)


def check_mp3_support(table: Path) -> None:
    """Refuse at once, saying what is needed, rather than report every clip as unreadable."""
    if "MP3" not in soundfile.available_formats():
        raise Mp3SupportError(
            f"{table}: the clips are MP3, and the libsndfile that soundfile uses "
            f"({soundfile.__libsndfile_version__}) cannot read MP3: it needs libsndfile 1.1.0 or newer built with "
            "mpg123 (`pip install -U soundfile`: its wheels bundle one), or the clips converted to FLAC with the "
            "table's path column changed to match"
        )


def _rows(table: Path, bad_lines: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, the row's columns by name) of a Common Voice table; blank lines skipped."""
    try:
        raw_lines = table.read_bytes().splitlines()
    except OSError as err:
        raise ManifestError(f"{table}: unreadable ({err.strerror or err})") from err
    try:
        header = decode_utf8_line(raw_lines[0]).split("\t") if raw_lines else []
    except ValueError as err:
        raise ManifestError(f"{table}:1: {err}") from None
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise ManifestError(f"{table}:1: no {', '.join(missing)} column in the header (a Common Voice table has "
                            f"{', '.join(COLUMNS)}, ...; found {header!r})")
    for number, line in utf8_lines(raw_lines[1:], table, bad_lines, first=2):
        # Quotes are not CSV quoting here: a sentence's quotation marks are punctuation, which
        # normalisation drops, so a row is exactly its tab-separated fields.
        fields = line.split("\t")
        if len(fields) != len(header):
            bad_lines.append(f"{table}:{number}: {len(fields)} tab-separated fields, the header has {len(header)}")
            continue
        yield number, dict(zip(header, fields))


def _clip(clips: Path, name: str) -> Path | None:
    """The clip a row names; early releases wrote the name without its ``.mp3``."""
    path = clips / name
    if path.is_file():
        return path
    if not path.suffix:
        return next((c for c in (clips / f"{name}{ext}" for ext in AUDIO_EXTENSIONS) if c.is_file()), None)
    return None


def scan_commonvoice(root: str | Path, split: str = DEFAULT_SPLIT, language: str = ENGLISH) -> PrepareReport:
    """The utterances of ``split``.tsv of a Common Voice language folder, their sentences
    normalised by ``language``'s rules; the speaker of each is its ``client_id``."""
    root = Path(root)
    if split not in SPLITS:
        raise ManifestError(f"{root}: no Common Voice table is called {split!r} (one of {', '.join(SPLITS)})")
    table = root / f"{split}.tsv"
    if not table.is_file():
        present = [s for s in SPLITS if (root / f"{s}.tsv").is_file()]
        raise ManifestError(f"{table}: not found; this folder has {', '.join(present) or 'no Common Voice table'} "
                            "(choose one with --split)")
    report = PrepareReport([], [], [], [], [])
    clips = root / CLIPS
    rows = list(_rows(table, report.bad_lines))
    if any(Path(row["path"]).suffix.lower() in ("", ".mp3") for _, row in rows):
        check_mp3_support(table)
    for number, row in rows:
        if not row["path"] or not row["sentence"].strip():
            report.bad_lines.append(f"{table}:{number}: an empty path or sentence")
            continue
        clip = _clip(clips, row["path"])
        if clip is None:
            report.missing_audio.append(f"{table}:{number}: {clips / row['path']}: file not found")
            continue
        try:
            duration = audio_duration(clip)
        except AudioError as err:
            report.unreadable.append(str(err))
            continue
        utt_id = Path(row["path"]).stem
        report.utterances.append(Utterance(utt_id, str(clip.resolve()), normalize_text(row["sentence"], language),
                                           round(duration, 4), row["client_id"] or utt_id))
    # Clips no table row names are the rule (each table lists a part of them): not reported.
    return report
