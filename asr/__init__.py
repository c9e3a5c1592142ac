"""asr: a small, fast BiLSTM-CTC speech recognition toolkit."""

from asr.errors import AsrError  # catch this for every error a user can cause
from asr.version import __version__

__all__ = ["AsrError", "__version__", "load_model"]


def load_model(path, device="cpu", precision="fp32", decoding=None, workers=1):
    """Load a checkpoint, model folder or ``hf://ORG/NAME`` for transcription, decoding with
    the settings ``asr tune-lm`` stored for it unless ``decoding`` says otherwise; see
    :func:`asr.inference.recognizer.load_model`."""
    from asr.inference.recognizer import load_model as _load_model  # torch loads only when a model does

    return _load_model(path, device=device, precision=precision, decoding=decoding, workers=workers)
