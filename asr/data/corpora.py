"""``asr prepare``'s corpus layouts: a folder is read by the reader its files call for."""

from __future__ import annotations

from pathlib import Path

from asr.data.commonvoice import DEFAULT_SPLIT, is_commonvoice_dir, scan_commonvoice
from asr.data.kaldi import is_kaldi_dir, scan_kaldi
from asr.data.librispeech import scan_librispeech
from asr.data.manifest import PrepareReport
from asr.data.text import ENGLISH

LAYOUTS = ("commonvoice", "kaldi", "librispeech")


def corpus_layout(root: str | Path) -> str:
    """kaldi (a data directory: text + wav.scp), commonvoice (clips/ beside validated.tsv, train.tsv, ...)
    or librispeech (*.trans.txt beside the audio)."""
    if is_kaldi_dir(root):
        return "kaldi"
    return "commonvoice" if is_commonvoice_dir(root) else "librispeech"


def scan_corpus(root: str | Path, audio_root: str | Path | None = None,
                segments_dir: str | Path | None = None, language: str = ENGLISH,
                split: str = DEFAULT_SPLIT) -> PrepareReport:
    """The utterances of a corpus folder in any layout :func:`corpus_layout` knows, their
    transcripts normalised by ``language``'s rules; ``split`` picks a Common Voice table."""
    layout = corpus_layout(root)
    if layout == "kaldi":
        return scan_kaldi(root, audio_root=audio_root, segments_dir=segments_dir, language=language)
    if layout == "commonvoice":
        return scan_commonvoice(root, split=split, language=language)
    return scan_librispeech(root, language=language)
