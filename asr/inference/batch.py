"""Batch transcription a person can follow and resume (``asr transcribe MODEL DIR --output-dir OUT``).

Folders are walked for audio files (anything else is listed as skipped); each file's output
keeps its path below the inputs (``DIR/a/b/c.flac`` -> ``OUT/a/b/c.txt``); a file whose output
already exists is skipped unless asked to overwrite, so a run that was killed resumes where it
stopped. Files go through :meth:`SpeechRecognizer.transcribe` in the groups it reads into
memory anyway (so it batches them by length exactly as for one long list), and each group's
results are handed back as soon as the group is done, to be written there and then.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from tqdm import tqdm

from asr.data.audio import AUDIO_EXTENSIONS, AudioError, audio_duration
from asr.inference import recognizer as recognizer_module
from asr.inference.recognizer import SpeechRecognizer
from asr.inference.results import Transcription
from asr.inference.writers import output_names
from asr.utils.atomic import stale_temporaries

SHOWN_NAMES = 5  # skipped files named in the summary; the rest are counted


def is_audio_name(name: str) -> bool:
    """Whether a file found in a folder is taken as audio: by its extension, and not hidden
    (macOS leaves ``._name.flac`` metadata files beside the audio on other file systems)."""
    return not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS


@dataclass
class FoundInputs:
    files: list[str] = field(default_factory=list)  # to transcribe: the files given and those found, in order
    folders: list[str] = field(default_factory=list)  # the folders given
    not_audio: list[str] = field(default_factory=list)  # files in those folders that are not audio, or hidden
    problems: list[str] = field(default_factory=list)  # "folder: reason" for folders unreadable or without audio


def find_inputs(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> FoundInputs:
    """Each file given, whatever its name (it was asked for; a missing one fails when
    transcribed, as ever), and the audio files below each folder given, in sorted order. Hidden
    folders, symlinked folders (no loops) and ``exclude`` (an output folder inside an input
    folder: its transcripts are not input) are not walked; a file found twice is taken once.
    A folder that cannot be listed or holds no audio file is one of the ``problems``."""
    found = FoundInputs()
    taken = {os.path.abspath(p) for p in inputs if not os.path.isdir(p)}
    for given in map(str, inputs):
        if os.path.isdir(given):
            found.folders.append(given)
            _walk(given, found, taken, os.path.realpath(exclude) if exclude is not None else None)
        else:
            found.files.append(given)
    return found


def _walk(top: str, found: FoundInputs, taken: set[str], excluded: str | None) -> None:
    """:func:`find_inputs` for one folder: its audio files into ``found.files`` unless ``taken``."""
    audio, others, problems = 0, len(found.not_audio), len(found.problems)
    for folder, subfolders, names in os.walk(top, onerror=lambda err: found.problems.append(
            f"{err.filename}: cannot list the folder ({err.strerror})")):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) != excluded)
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not is_audio_name(name):
                found.not_audio.append(path)
                continue
            audio += 1
            if os.path.abspath(path) not in taken:
                taken.add(os.path.abspath(path))
                found.files.append(path)
    if not audio and len(found.problems) == problems:
        others = len(found.not_audio) - others
        found.problems.append(f"{top}: no audio files in this folder (audio: {' '.join(sorted(AUDIO_EXTENSIONS))}"
                              + (f"; {others} other files" if others else "") + ")")


@dataclass(frozen=True)
class BatchItem:
    audio: str  # the input file
    output: Path | None  # where its result is written (None: printed)
    seconds: float = 0.0  # its duration from the header (0 when unreadable: it fails when transcribed)


@dataclass
class BatchPlan:
    pending: list[BatchItem]  # to transcribe, in input order
    done: list[BatchItem]  # skipped: their output exists already (an earlier run wrote it)
    found: FoundInputs  # what the inputs held

    @property
    def seconds(self) -> float:
        """Audio to transcribe, from the headers."""
        return sum(item.seconds for item in self.pending)


def header_seconds(path: str) -> float:
    """The file's duration from its header, or 0 when it has none (it fails later, with the reason)."""
    try:
        return audio_duration(path)
    except AudioError:
        return 0.0


def plan_batch(inputs: Sequence[str | Path], fmt: str, output_dir: str | Path | None = None,
               overwrite: bool = False) -> BatchPlan:
    """What to transcribe and where each result goes (:func:`find_inputs` finds the files).

    With ``output_dir``, each file's output keeps its path below the folders and files given
    (``DIR/a/b/c.flac`` -> ``OUT/a/b/c.txt``; :func:`asr.inference.writers.output_names`), and
    files whose output exists are ``done`` unless ``overwrite``.
    """
    found = find_inputs(inputs, exclude=output_dir)
    outputs: list[Path | None] = [None] * len(found.files)
    if output_dir is not None:
        # The folders themselves, not only their files' folders: DIR/a/b/c.flac -> OUT/a/b/c.txt.
        folders = [os.path.abspath(d) for d in found.folders] + [os.path.dirname(os.path.abspath(f))
                                                                  for f in found.files]
        outputs = [Path(output_dir) / name for name in output_names(found.files, fmt, os.path.commonpath(folders))]
    pending, done = [], []
    for audio, output in zip(found.files, outputs):
        if output is not None and not overwrite and output.is_file():
            done.append(BatchItem(audio, output))
        else:
            pending.append(BatchItem(audio, output, header_seconds(audio)))
    remove_stale_outputs([*pending, *done])
    return BatchPlan(pending, done, found)


def remove_stale_outputs(items: Sequence[BatchItem]) -> None:
    """The temporaries that a run killed while writing left beside these outputs (every output
    is written whole or not at all, asr/utils/atomic.py; only this tidies up after it)."""
    names: dict[Path, set[str]] = {}
    for item in items:
        if item.output is not None:
            names.setdefault(item.output.parent, set()).add(item.output.name)
    for folder, outputs in names.items():
        if folder.is_dir():
            for stale in stale_temporaries(folder):  # .NAME.RANDOM.tmp; RANDOM has no dot
                if stale.name[1:].rsplit(".", 2)[0] in outputs:
                    stale.unlink(missing_ok=True)


def describe_skipped(found: FoundInputs, shown: int = SHOWN_NAMES) -> str | None:
    """One line on the files in the folders that were not taken as audio, or None."""
    if not found.not_audio:
        return None
    names = ", ".join(found.not_audio[:shown])
    more = f" and {len(found.not_audio) - shown} more" if len(found.not_audio) > shown else ""
    return (f"skipped {len(found.not_audio)} files that are not audio by their extension (or are hidden): "
            f"{names}{more}")


def groups(items: Sequence[BatchItem], files_per_group: int | None = None,
           group_seconds: float | None = None) -> Iterator[list[BatchItem]]:
    """Consecutive runs of ``items`` of the size :meth:`SpeechRecognizer.transcribe` reads into
    memory at once (its FILES_PER_GROUP files or GROUP_SECONDS of audio, by the headers)."""
    files_per_group = files_per_group or recognizer_module.FILES_PER_GROUP
    group_seconds = group_seconds or recognizer_module.GROUP_SECONDS
    group: list[BatchItem] = []
    seconds = 0.0
    for item in items:
        group.append(item)
        seconds += item.seconds
        if len(group) >= files_per_group or seconds >= group_seconds:
            yield group
            group, seconds = [], 0.0
    if group:
        yield group


def transcribe_in_groups(recognizer: SpeechRecognizer,
                         items: Sequence[BatchItem]) -> Iterator[tuple[BatchItem, Transcription]]:
    """Each item with its result, a group (:func:`groups`) at a time: a result is at hand as
    soon as its group is done, not when the whole batch is, so a killed run loses one group."""
    for group in groups(items):
        yield from zip(group, recognizer.transcribe([item.audio for item in group]))


# Audio hours rather than files drive the bar: the time a file takes follows its duration.
# The postfix is ", N/M files".
REDRAW_SECONDS = 1.0
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h audio{postfix} [{elapsed}<{remaining}]"


class BatchProgress:
    """A progress bar over the audio hours to transcribe (tqdm: its ETA comes from the audio
    done so far), with the files done beside it. Shown only on a terminal (tqdm's
    ``disable=None``), so logs and pipes get no control characters; :meth:`write` prints
    lines above it without tearing it. Redrawn every second, so that its clock and ETA move
    while a group is transcribed (minutes, on a CPU): a bar that stands still looks hung."""

    def __init__(self, items: Sequence[BatchItem], file: IO[str] | None = None, enabled: bool = True) -> None:
        self.files, self.done = len(items), 0
        hours = sum(item.seconds for item in items) / 3600
        # Results come a group at a time, all at once: every update is drawn (no minimum
        # interval), and the ETA is from the mean rate (smoothing 0), not from within a burst.
        self.bar = tqdm(total=hours, file=file or sys.stderr, disable=None if enabled else True,
                        bar_format=BAR_FORMAT, dynamic_ncols=True, mininterval=0, miniters=1, smoothing=0)
        self.bar.set_postfix_str(f"0/{self.files} files")
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress-bar", daemon=True)
        if not self.bar.disable:
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(REDRAW_SECONDS):
            self.bar.refresh()  # under tqdm's own lock, as update() and write() draw

    def advance(self, item: BatchItem) -> None:
        """One more file done (or failed: its audio is behind us either way)."""
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.files} files", refresh=False)
        self.bar.update(min(item.seconds / 3600, self.bar.total - self.bar.n))  # sums of floats may pass the total

    def write(self, text: str, file: IO[str] | None = None, end: str = "\n") -> None:
        tqdm.write(text, file=file or sys.stderr, end=end)

    def close(self) -> None:
        self._stopped.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
