"""LibriSpeech, Mini LibriSpeech and Libri-Light data preparation: download → extract → manifests.

    asr prepare librispeech --subsets dev-clean train-clean-100 --dest data/librispeech

Every stage is re-runnable: verified downloads, extracted archives and written manifests
are skipped when run again, and an interrupted download resumes where it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from asr.data.audio import AUDIO_EXTENSIONS, AudioError, audio_duration
from asr.data.manifest import (
    ManifestError,
    PrepareReport,
    Utterance,
    read_manifest,
    utf8_lines,
    write_manifest,
)
from asr.data.text import ENGLISH, normalize_text
from asr.utils.atomic import atomic_write
from asr.utils.download import DownloadError, Resource, download, extract

OPENSLR = "https://www.openslr.org/resources"
LIBRILIGHT = "https://dl.fbaipublicfiles.com/librilight/data"

# Checksums are the published OpenSLR MD5s (md5sum.txt of resources 12 and 31), as listed
# in PaddleSpeech's and pytorch-database-prep's download scripts; sizes as in Kaldi's.
ARCHIVES: dict[str, Resource] = {
    resource.name: resource
    for resource in [
        Resource("dev-clean", f"{OPENSLR}/12/dev-clean.tar.gz", "dev-clean.tar.gz",
                 "md5:42e2234ba48799c1f50f24a7926300a1", 337926286),
        Resource("dev-other", f"{OPENSLR}/12/dev-other.tar.gz", "dev-other.tar.gz",
                 "md5:c8d0bcc9cca99d4f8b62fcc847357931", 314305928),
        Resource("test-clean", f"{OPENSLR}/12/test-clean.tar.gz", "test-clean.tar.gz",
                 "md5:32fa31d27d2e1cad72775fee3f4849a9", 346663984),
        Resource("test-other", f"{OPENSLR}/12/test-other.tar.gz", "test-other.tar.gz",
                 "md5:fb5a50374b501bb3bac4815ee91d3135", 328757843),
        Resource("train-clean-100", f"{OPENSLR}/12/train-clean-100.tar.gz", "train-clean-100.tar.gz",
                 "md5:2a93770f6d5c6c964bc36631d331a522", 6387309499),
        Resource("train-clean-360", f"{OPENSLR}/12/train-clean-360.tar.gz", "train-clean-360.tar.gz",
                 "md5:c0e676e450a7ff2f54aeade5171606fa", 23049477885),
        Resource("train-other-500", f"{OPENSLR}/12/train-other-500.tar.gz", "train-other-500.tar.gz",
                 "md5:d1a0fd59409feb2c614ce4d30c387708", 30593501606),
        Resource("train-clean-5", f"{OPENSLR}/31/train-clean-5.tar.gz", "train-clean-5.tar.gz",
                 "md5:5df7d4e78065366204ca6845bb08f490", 332954390),
        Resource("dev-clean-2", f"{OPENSLR}/31/dev-clean-2.tar.gz", "dev-clean-2.tar.gz",
                 "md5:6d7ab67ac6a1d2c993d050e16d61080d", 126046265),
        Resource("librispeech_finetuning", f"{LIBRILIGHT}/librispeech_finetuning.tgz", "librispeech_finetuning.tgz",
                 "md5:7f83024cb1334bfa372d1af2c75c3a77", 0),
    ]
}

# The official LM resources (OpenSLR 11), for beam search with a word LM.
LM_FILES: dict[str, Resource] = {
    resource.name: resource
    for resource in [
        Resource("3-gram", f"{OPENSLR}/11/3-gram.arpa.gz", "3-gram.arpa.gz",
                 "md5:74cbb837e582378c26c602e1c8cbcb9c", 759636181),
        Resource("4-gram", f"{OPENSLR}/11/4-gram.arpa.gz", "4-gram.arpa.gz",
                 "md5:6abdcd5b055bd482e4f9defe91d40408", 1355172078),
        Resource("3-gram-pruned-1e-7", f"{OPENSLR}/11/3-gram.pruned.1e-7.arpa.gz", "3-gram.pruned.1e-7.arpa.gz",
                 "md5:9a0f1325bcaf3a0f7b7be4be10823c2a", 34094057),
        Resource("3-gram-pruned-3e-7", f"{OPENSLR}/11/3-gram.pruned.3e-7.arpa.gz", "3-gram.pruned.3e-7.arpa.gz",
                 "md5:8f67ec741827742eee05799ab7605b50", 13654242),
        Resource("vocab", f"{OPENSLR}/11/librispeech-vocab.txt", "librispeech-vocab.txt",
                 "md5:bf3cc7a50112831ed8b0afa40cae96a5", 1737588),
        Resource("lexicon", f"{OPENSLR}/11/librispeech-lexicon.txt", "librispeech-lexicon.txt",
                 "md5:28f72663f6bfed7cd346283c064c315b", 5627646),
    ]
}


@dataclass(frozen=True)
class Subset:
    archive: str  # key of ARCHIVES
    folders: tuple[str, ...]  # folders under DEST/extracted holding its audio


def _librispeech(name: str) -> Subset:
    return Subset(name, (f"LibriSpeech/{name}",))


SUBSETS: dict[str, Subset] = {
    **{name: _librispeech(name) for name in (
        "dev-clean", "dev-other", "test-clean", "test-other",
        "train-clean-100", "train-clean-360", "train-other-500", "train-clean-5", "dev-clean-2",
    )},
    # Libri-Light limited supervision: 10 h = 1h/{0..5} + 9h; 1 h = 1h/{0..5}; 10 min = 1h/0.
    "librilight-10h": Subset("librispeech_finetuning", ("librispeech_finetuning/1h", "librispeech_finetuning/9h")),
    "librilight-1h": Subset("librispeech_finetuning", ("librispeech_finetuning/1h",)),
    "librilight-10min": Subset("librispeech_finetuning", ("librispeech_finetuning/1h/0",)),
}
COMBINED: dict[str, tuple[str, ...]] = {
    "train-460": ("train-clean-100", "train-clean-360"),
    "train-960": ("train-clean-100", "train-clean-360", "train-other-500"),
}
SPEED_FACTORS = (0.9, 1.0, 1.1)


def speed_perturbed(utterances: Sequence[Utterance], factors: Sequence[float] = SPEED_FACTORS) -> list[Utterance]:
    """Kaldi-style speed perturbation: a copy per factor, each a new "speaker" (sp0.9-84)."""
    copies = []
    for factor in factors:
        for utt in utterances:
            if factor == 1.0:
                copies.append(utt)
            else:
                prefix = f"sp{factor:g}-"
                copies.append(replace(utt, id=prefix + utt.id, speaker=prefix + utt.speaker,
                                      duration=round(utt.duration / factor, 4), speed=factor))
    return copies


def _with_mirror(resource: Resource, mirror: str | None) -> Resource:
    if not mirror:
        return resource
    return replace(resource, url=f"{mirror.rstrip('/')}/{resource.filename}")


def prepare_librispeech(
    subsets: Sequence[str],
    dest: str | Path,
    mirror: str | None = None,
    speed_perturb: bool = False,
    lm: bool = False,
) -> dict[str, Path]:
    """Download, extract and write ``DEST/manifests/<subset>.jsonl``; returns the manifests.

    ``subsets`` may also name ``train-460`` / ``train-960`` (combined manifests of their
    parts). ``mirror`` replaces the servers (a folder URL holding the archives by name).
    ``speed_perturb`` also writes ``<subset>-sp.jsonl`` with 0.9/1.0/1.1 copies.
    ``lm`` also downloads the official n-gram LMs, vocabulary and lexicon into DEST/lm.
    """
    dest = Path(dest)
    unknown = [s for s in subsets if s not in SUBSETS and s not in COMBINED]
    if unknown:
        raise DownloadError(f"unknown subset(s) {unknown}; known: {sorted(SUBSETS) + sorted(COMBINED)}")
    wanted = []
    for name in subsets:
        for part in COMBINED.get(name, (name,)):
            if part not in wanted:
                wanted.append(part)
    manifests: dict[str, Path] = {}
    for name in wanted:
        subset = SUBSETS[name]
        resource = _with_mirror(ARCHIVES[subset.archive], mirror)
        print(f"[prepare] {name}: download {resource.url}", file=sys.stderr)
        archive = download(resource, dest / "archives")
        extract(archive, dest / "extracted", subset.archive)
        manifests[name] = _write_subset_manifest(name, [dest / "extracted" / f for f in subset.folders], dest, speed_perturb)
    for name in subsets:
        if name in COMBINED:
            manifests[name] = _combine(name, [manifests[p] for p in COMBINED[name]], dest)
            if speed_perturb:
                _combine(f"{name}-sp", [dest / "manifests" / f"{p}-sp.jsonl" for p in COMBINED[name]], dest)
    if lm:
        for resource in LM_FILES.values():
            download(_with_mirror(resource, mirror), dest / "lm")
    return manifests


def _write_subset_manifest(name: str, folders: list[Path], dest: Path, speed_perturb: bool) -> Path:
    path = dest / "manifests" / f"{name}.jsonl"
    if not path.exists():
        utterances: list[Utterance] = []
        for folder in folders:
            report = scan_librispeech(folder)
            for label, items in (("missing audio", report.missing_audio), ("unreadable", report.unreadable),
                                 ("bad transcript lines (skipped)", report.bad_lines)):
                if items:
                    print(f"[prepare] {name}: {len(items)} {label}, e.g. {items[0]}", file=sys.stderr)
            utterances += report.utterances
        write_manifest(path, utterances)
        hours = sum(u.duration for u in utterances) / 3600
        print(f"[prepare] {path}: {len(utterances)} utterances, {hours:.2f} h", file=sys.stderr)
    if speed_perturb:
        perturbed = dest / "manifests" / f"{name}-sp.jsonl"
        if not perturbed.exists():
            write_manifest(perturbed, speed_perturbed(read_manifest(path)))
    return path


def _combine(name: str, parts: list[Path], dest: Path) -> Path:
    path = dest / "manifests" / f"{name}.jsonl"
    with atomic_write(path) as out:
        for part in parts:
            out.write(part.read_text(encoding="utf-8"))
    return path


def scan_librispeech(root: str | Path, language: str = ENGLISH) -> PrepareReport:
    """Build utterances from a folder in the LibriSpeech layout (``*.trans.txt`` beside audio),
    their text normalised by ``language``'s rules.

    Each transcript line is ``<utt-id> <TEXT>``; the audio is ``<utt-id>.<ext>`` in the same
    folder and the speaker is the part of the id before the first dash.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory")
    utterances: list[Utterance] = []
    missing_audio: list[str] = []
    unreadable: list[str] = []
    mentioned: set[Path] = set()
    bad_lines: list[str] = []
    for transcript in sorted(root.rglob("*.trans.txt")):
        try:
            raw_lines = transcript.read_bytes().splitlines()
        except OSError as err:
            bad_lines.append(f"{transcript}: unreadable ({err.strerror or err})")
            continue
        for number, line in utf8_lines(raw_lines, transcript, bad_lines):
            utt_id, _, text = line.strip().partition(" ")
            candidates = [transcript.parent / f"{utt_id}{ext}" for ext in AUDIO_EXTENSIONS]
            audio = next((c for c in candidates if c.exists()), None)
            if audio is None:
                missing_audio.append(f"{transcript}: {utt_id}")
                continue
            mentioned.add(audio.resolve())
            try:
                duration = audio_duration(audio)
            except AudioError as err:
                unreadable.append(str(err))
                continue
            utterances.append(
                Utterance(
                    id=utt_id,
                    audio=str(audio.resolve()),
                    text=normalize_text(text, language),
                    duration=round(duration, 4),
                    speaker=utt_id.split("-")[0],
                )
            )
    missing_transcripts = sorted(
        str(p)
        for ext in AUDIO_EXTENSIONS
        for p in root.rglob(f"*{ext}")
        if p.resolve() not in mentioned
    )
    return PrepareReport(utterances, missing_audio, missing_transcripts, unreadable, bad_lines)
