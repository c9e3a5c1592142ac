"""``asr prepare``'s corpus layouts: a folder is read by the reader its files call for."""

from __future__ import annotations

from pathlib import Path

from asr.data.kaldi import is_kaldi_dir, scan_kaldi
from asr.data.librispeech import scan_librispeech
from asr.data.manifest import PrepareReport

LAYOUTS = ("kaldi", "librispeech")


def corpus_layout(root: str | Path) -> str:
    """kaldi (a data directory: text + wav.scp) or librispeech (*.trans.txt beside the audio)."""
    return "kaldi" if is_kaldi_dir(root) else "librispeech"


def scan_corpus(root: str | Path, audio_root: str | Path | None = None,
                segments_dir: str | Path | None = None) -> PrepareReport:
    """The utterances of a corpus folder in any layout :func:`corpus_layout` knows."""
    if corpus_layout(root) == "kaldi":
        return scan_kaldi(root, audio_root=audio_root, segments_dir=segments_dir)
    return scan_librispeech(root)
