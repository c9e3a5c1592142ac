"""Kaldi data directories (``text``, ``wav.scp``, ``utt2spk``, optional ``segments``) read into utterances.

Most public corpora ship this way. ``wav.scp`` maps a recording id to its audio file; a
path is taken as written when absolute, else looked up under ``audio_root`` or, without one,
beside the data directory, its parent (where corpora such as speechocean762 keep ``WAVE/``)
and the working folder. Entries that are shell pipelines (``sox ... |``) are listed as
unusable: asr reads files, it runs no commands from a corpus. With ``segments``, each
utterance is a span of a recording; those spans are cut into FLAC files under
``segments_dir`` (once: an existing file of the right length is kept), so that training,
evaluation and tuning read them like any other file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import soundfile

from asr.data.audio import AudioError, audio_duration, read_audio
from asr.data.manifest import ManifestError, PrepareReport, Utterance, utf8_lines
from asr.data.text import ENGLISH, normalize_text
from asr.utils.atomic import atomic_path

REQUIRED_FILES = ("text", "wav.scp")
SAMPLE_RATE = 16_000  # cut segments are written at the rate the model reads


def is_kaldi_dir(root: str | Path) -> bool:
    return all((Path(root) / name).is_file() for name in REQUIRED_FILES)


def _table(path: Path, bad_lines: list[str]) -> Iterator[tuple[int, str, str]]:
    """(line number, key, rest) of a Kaldi table file: ``KEY REST`` per line; blank lines skipped."""
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as err:
        raise ManifestError(f"{path}: unreadable ({err.strerror or err})") from err
    for number, line in utf8_lines(raw_lines, path, bad_lines):
        # Kaldi splits the key off at the first run of whitespace: a tab is as common as a space.
        key, *rest = line.strip().split(maxsplit=1)
        yield number, key, rest[0] if rest else ""


def _recordings(root: Path, audio_root: Path | None, bad_lines: list[str]) -> dict[str, Path | str]:
    """Recording id -> its audio file, or a string saying why it cannot be used."""
    bases = [audio_root] if audio_root else [root, root.parent, Path.cwd()]
    recordings: dict[str, Path | str] = {}
    scp = root / "wav.scp"
    for number, key, rest in _table(scp, bad_lines):
        if not rest:
            bad_lines.append(f"{scp}:{number}: no audio path after the id {key!r}")
        elif rest.endswith("|"):
            recordings[key] = f"{scp}:{number}: a command pipeline, not a file (convert the audio first)"
        else:
            path = Path(rest)
            found = path if path.is_absolute() else next((b / path for b in bases if (b / path).exists()), None)
            recordings[key] = found.resolve() if found else f"{scp}:{number}: {rest}: file not found under " + \
                ", ".join(str(b) for b in bases)
    return recordings


def _cut(recording: Path, segments: list[tuple[str, float, float]], out_dir: Path) -> dict[str, Path | str]:
    """Each (utterance id, start s, end s) of one recording as a FLAC file in ``out_dir``."""
    try:
        samples = read_audio(recording, SAMPLE_RATE).samples
    except AudioError as err:
        return {utt_id: str(err) for utt_id, _, _ in segments}
    cut: dict[str, Path | str] = {}
    for utt_id, start, end in segments:
        first, last = int(round(start * SAMPLE_RATE)), min(len(samples), int(round(end * SAMPLE_RATE)))
        if end <= start or first >= len(samples):
            cut[utt_id] = f"{recording}: segment {utt_id} [{start}, {end}] s is empty or past the end"
            continue
        target = out_dir / f"{utt_id}.flac"
        if not (target.is_file() and soundfile.info(str(target)).frames == last - first):
            with atomic_path(target) as tmp:
                soundfile.write(str(tmp), samples[first:last], SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        cut[utt_id] = target
    return cut


def _segments(root: Path, recordings: dict[str, Path | str], segments_dir: Path | None,
              bad_lines: list[str]) -> dict[str, Path | str]:
    """Utterance id -> its audio (cut from a recording when there is a ``segments`` file)."""
    table = root / "segments"
    if not table.is_file():
        return recordings  # one utterance per recording, same ids
    if segments_dir is None:
        raise ManifestError(f"{table}: utterances are spans of recordings; give a folder to cut them into")
    by_recording: dict[str, list[tuple[str, float, float]]] = {}
    for number, key, rest in _table(table, bad_lines):
        fields = rest.split()
        try:
            recording, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            bad_lines.append(f"{table}:{number}: expected 'UTT RECORDING START END', not {key} {rest!r}")
            continue
        by_recording.setdefault(recording, []).append((key, start, end))
    audio: dict[str, Path | str] = {}
    for recording, spans in by_recording.items():
        source = recordings.get(recording, f"{table}: recording {recording!r} is not in wav.scp")
        if isinstance(source, str):
            audio.update({utt_id: source for utt_id, _, _ in spans})
        else:
            audio.update(_cut(source, spans, segments_dir))
    return audio


def scan_kaldi(root: str | Path, audio_root: str | Path | None = None,
               segments_dir: str | Path | None = None, language: str = ENGLISH) -> PrepareReport:
    """Utterances of a Kaldi data directory, their text normalised by ``language``'s rules;
    speakers from ``utt2spk`` (else the utterance id)."""
    root = Path(root)
    if not is_kaldi_dir(root):
        raise ManifestError(f"{root}: not a Kaldi data directory (needs {' and '.join(REQUIRED_FILES)})")
    bad_lines: list[str] = []
    recordings = _recordings(root, Path(audio_root) if audio_root else None, bad_lines)
    audio = _segments(root, recordings, Path(segments_dir) if segments_dir else None, bad_lines)
    speakers: dict[str, str] = {}
    if (root / "utt2spk").is_file():
        speakers = {key: rest for _, key, rest in _table(root / "utt2spk", bad_lines)}
    report = PrepareReport([], [], [], [], bad_lines)
    transcribed: set[str] = set()
    for number, utt_id, text in _table(root / "text", bad_lines):
        transcribed.add(utt_id)
        source = audio.get(utt_id)
        if source is None:
            report.missing_audio.append(f"{root / 'text'}:{number}: {utt_id} has no audio in wav.scp or segments")
        elif isinstance(source, str):
            report.missing_audio.append(source)
        else:
            try:
                duration = audio_duration(source)
            except AudioError as err:
                report.unreadable.append(str(err))
                continue
            report.utterances.append(Utterance(utt_id, str(source), normalize_text(text, language),
                                               round(duration, 4), speakers.get(utt_id, utt_id)))
    report.missing_transcripts = sorted(str(a) for k, a in audio.items() if k not in transcribed and isinstance(a, Path))
    return report
