"""Transcription: the Python API behind ``asr transcribe`` (evaluation: asr.scoring.evaluate).

    >>> import asr
    >>> model = asr.load_model("exp/run/best.pt")
    >>> for result in model.transcribe(["a.flac", "b.wav"]):
    ...     print(result.path, result.text if result.ok else result.error)
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from asr.config import ExperimentConfig
from asr.data.audio import AudioError, read_audio
from asr.data.phones import phone_inventory
from asr.data.text import CharVocabulary
from asr.decoding.beam import BeamSearchDecoder
from asr.decoding.greedy import GreedyDecoder
from asr.decoding.hypothesis import Decoder
from asr.decoding.parallel import ParallelDecoder
from asr.decoding.settings import DecodingSettings, build_decoder, load_decoding_settings
from asr.lm.lexicon import LanguageModelError
from asr.storage.hub import resolve_model
from asr.storage.model_folder import read_model, tuned_settings_file
from asr.errors import AsrError
from asr.inference.results import Transcription
from asr.inference.streaming import RecognitionStream
from asr.inference.windows import (
    LONG_AUDIO_SECONDS,
    MIN_WINDOW_SECONDS,
    WINDOW_OVERLAP_FRACTION,
    WINDOW_OVERLAP_SECONDS,
    FileEmissions,
    Window,
    decode_windows,
    join_windows,
    plan_windows,
)
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.storage.checkpoint import CheckpointError
from asr.utils.precision import PrecisionFallbackWarning, autocast, usable_precision
from asr.utils.threads import adjust_threads

# Audio seconds per inference batch: bounds memory while keeping the LSTM's matrices large.
BATCH_SECONDS = 120.0
FILES_PER_GROUP = 256  # files read into memory at once ...
GROUP_SECONDS = 30 * 60.0  # ... or this much audio (an hour-long file is a group of its own)


class SpeechRecognizer:
    """A trained model ready to transcribe: front end, acoustic model, vocabulary, decoder."""

    def __init__(
        self,
        config: ExperimentConfig,
        vocabulary: CharVocabulary,
        frontend: FeatureFrontend,
        model: AcousticModel,
        device: torch.device,
    ) -> None:
        self.config = config
        self.vocabulary = vocabulary
        self.frontend = frontend.eval()
        self.model = model.eval()
        self.device = device
        self.decoder: Decoder = GreedyDecoder(vocabulary)
        self.decoding = DecodingSettings()
        self.workers = 1  # beam search worker processes
        self.max_train_seconds: float | None = None  # longest training utterance (None: checkpoint predates it)
        self._window_seconds: float | None = None  # set by the user; None: from max_train_seconds
        self.precision = "fp32"  # bf16: the acoustic model runs under bf16 autocast
        self.decoding_problem: str | None = None  # why the asked-for decoding fell back to greedy
        self.units = "chars"  # the output emissions come from: chars, or the phone head (phone decoding)
        self._parallel: ParallelDecoder | None = None  # beam search workers, kept across transcribe() calls

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_parallel": None}  # a worker process gets the recognizer, not its pool

    def close(self) -> None:
        """Stop the beam search worker processes (they also end with this process)."""
        if self._parallel is not None:
            self._parallel.__exit__(None, None, None)
            self._parallel = None

    def _decoder_pool(self) -> ParallelDecoder:
        """The beam search workers for the current decoder, started once and kept: a batch run
        that transcribes group after group (asr/inference/batch.py) starts them, and loads the
        LM in each, once. Greedy decoding is too cheap to ship to worker processes."""
        workers = self.workers if isinstance(self.decoder, BeamSearchDecoder) else 1
        if self._parallel is None or self._parallel.decoder is not self.decoder or self._parallel.workers != workers:
            self.close()
            self._parallel = ParallelDecoder(self.decoder, workers)
        return self._parallel

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @property
    def seconds_per_step(self) -> float:
        """Duration of one output step: the feature hop times the model's subsampling."""
        features = self.config.features
        return features.hop_length / features.sample_rate * self.config.model.subsampling_factor

    @property
    def window_seconds(self) -> float:
        """Longest piece (overlap included) given to the model: files longer than this are cut."""
        if self._window_seconds is not None:
            return self._window_seconds
        if self.max_train_seconds is None:
            return LONG_AUDIO_SECONDS
        return min(max(self.max_train_seconds, MIN_WINDOW_SECONDS), LONG_AUDIO_SECONDS)

    @window_seconds.setter
    def window_seconds(self, seconds: float) -> None:
        self._window_seconds = seconds

    @property
    def streaming_problem(self) -> str | None:
        """Why this recognizer cannot transcribe a stream as it arrives (:meth:`stream`), or None."""
        config = self.config
        if not self.model.can_stream():
            return ("this model is bidirectional: each output reads the whole utterance, so it cannot stream; train "
                    "with model.direction=latency_controlled (or unidirectional)")
        if config.features.normalization == "utterance":
            return ("this model's features subtract the mean of the whole utterance (features.normalization="
                    "utterance), which a stream does not have yet; streaming models use global or causal")
        if self.units != "chars":
            return ("a stream decodes the character output; phone decoding (--units phones, or tuned) reads whole "
                    "utterances: decode this model with --greedy or a character or word LM to stream it")
        return None

    @property
    def streams(self) -> bool:
        """Whether :meth:`stream` works (:attr:`streaming_problem` says why not)."""
        return self.streaming_problem is None

    def stream(self, name: str = "<stream>") -> RecognitionStream:
        """A stream to feed samples into as they arrive (asr/inference/streaming.py). Raises
        :class:`asr.inference.streaming.StreamingError` when the model or its features cannot stream."""
        return RecognitionStream(self, name)

    def check_units(self, units: str) -> None:
        """LanguageModelError unless this model has the output ``units`` decode (phones: a phone head)."""
        if units == "phones" and self.model.phone_output is None:
            raise LanguageModelError("phone decoding needs a model trained with a phone head (model.phone_ctc_weight "
                                     "> 0); this one has none")

    def use_decoding(self, settings: DecodingSettings, workers: int = 1) -> str | None:
        """Switch decoders. An unusable LM or lexicon falls back to greedy decoding: the
        returned message says why (None when ``settings`` were applied as given)."""
        self.workers = workers
        try:
            self.check_units(settings.units)
            self.decoder, self.decoding = build_decoder(self.vocabulary, settings, self.config.data.language), settings
            self.units = settings.units
            return None
        except LanguageModelError as err:
            self.decoder, self.decoding, self.units = GreedyDecoder(self.vocabulary), DecodingSettings(), "chars"
            return f"{err}; falling back to greedy decoding"

    @torch.inference_mode()
    def emissions(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities (B, T, V) and output lengths (B,) for a batch of mono waveforms."""
        lengths = torch.tensor([len(w) for w in waveforms], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(list(waveforms), batch_first=True).to(self.device)  # (B, S)
        features, frame_lengths = self.frontend(padded, lengths)  # features stay fp32 (log of small powers)
        with autocast(self.precision, self.device):
            if self.units == "phones":  # the phone head's (B, T, P), for phone decoding
                _, output_lengths, log_probs = self.model(features, frame_lengths, with_phones=True)
            else:
                log_probs, output_lengths = self.model(features, frame_lengths)
        return log_probs.float(), output_lengths

    def emission_matrices(self, waveforms: Sequence[torch.Tensor]) -> list[np.ndarray | str]:
        """(T, V) log-probabilities per waveform, in input order, computed in length-sorted
        batches; a batch that fails (e.g. out of memory) gives its waveforms an error string."""
        order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))  # similar lengths: little padding
        results: list[np.ndarray | str] = [""] * len(waveforms)
        for batch in _batches_by_duration(order, [len(w) for w in waveforms], self.sample_rate):
            adjust_threads()  # the cores other processes leave free (asr/utils/threads.py)
            try:
                log_probs, lengths = self.emissions([waveforms[i] for i in batch])
            except RuntimeError as err:  # report, go on with the other batches
                for i in batch:
                    results[i] = f"recognition failed: {err}"
                continue
            for i, matrix, length in zip(batch, log_probs.cpu().numpy(), lengths.tolist()):
                results[i] = matrix[:length]
        return results

    def plan_windows(self, samples: np.ndarray) -> list[Window]:
        """This model's windows for a file: at most ``window_seconds`` each, cut at pauses."""
        overlap = min(WINDOW_OVERLAP_SECONDS, WINDOW_OVERLAP_FRACTION * self.window_seconds)
        return plan_windows(samples, self.sample_rate, self.window_seconds, overlap)

    def file_emissions(self, waveforms: Sequence[torch.Tensor]) -> list[FileEmissions | str]:
        """Per file, the emissions of its windows (:meth:`plan_windows`), or an error string.

        ``asr transcribe``, ``asr evaluate`` and ``asr tune-lm`` all go through here, so that
        tuning sees the emissions that are later scored.
        """
        pieces: list[tuple[int, Window]] = []
        for index, waveform in enumerate(waveforms):
            pieces += [(index, window) for window in self.plan_windows(waveform.numpy())]
        matrices = self.emission_matrices([waveforms[index][w.start : w.end] for index, w in pieces])
        per_file: list[list[tuple[Window, np.ndarray | str]]] = [[] for _ in waveforms]
        for (index, window), matrix in zip(pieces, matrices):
            per_file[index].append((window, matrix))
        results: list[FileEmissions | str] = []
        for waveform, parts in zip(waveforms, per_file):
            error = next((m for _, m in parts if isinstance(m, str)), None)
            results.append(error if error is not None else FileEmissions(
                tuple(w for w, _ in parts), tuple(m for _, m in parts), len(waveform) / self.sample_rate))  # type: ignore[misc]
        return results

    def transcribe(self, paths: str | Path | Iterable[str | Path]) -> list[Transcription]:
        """Transcribe files (or one: a single path is a list of one); a file that cannot be read
        gets ``error`` set, the rest go on.

        Files are read a group at a time (at most FILES_PER_GROUP files, GROUP_SECONDS of
        audio), so memory stays bounded for any number of files; files longer than
        ``window_seconds`` are cut into windows (:func:`plan_windows`) and stitched.
        """
        paths = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]  # never a str's letters
        results: list[Transcription | None] = [None] * len(paths)
        decoder = self._decoder_pool()
        group: list[tuple[int, str, torch.Tensor, tuple[str, ...]]] = []
        group_samples = 0
        for index, path in enumerate(paths):
            try:
                audio = read_audio(path, self.sample_rate)
            except AudioError as err:
                results[index] = Transcription(path, error=err.reason)
                continue
            group.append((index, path, torch.from_numpy(audio.samples), audio.warnings))
            group_samples += len(audio.samples)
            if len(group) >= FILES_PER_GROUP or group_samples >= GROUP_SECONDS * self.sample_rate:
                self._recognize_group(group, results, decoder)
                group, group_samples = [], 0
        if group:
            self._recognize_group(group, results, decoder)
        return results  # type: ignore[return-value]  (every slot is filled)

    def transcribe_samples(self, samples: np.ndarray, name: str = "<samples>") -> Transcription:
        """One mono float32 waveform at :attr:`sample_rate`, already in memory, recognised and
        decoded exactly as :meth:`transcribe` does a file (live mode decodes through here)."""
        results: list[Transcription | None] = [None]
        with ParallelDecoder(self.decoder, 1) as decoder:
            self._recognize_group([(0, name, torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), ())],
                                  results, decoder)
        return results[0]  # type: ignore[return-value]

    def _recognize_group(self, files: list[tuple[int, str, torch.Tensor, tuple[str, ...]]],
                         results: list[Transcription | None], decoder: ParallelDecoder) -> None:
        emissions = self.file_emissions([waveform for _, _, waveform, _ in files])
        good = [e for e in emissions if isinstance(e, FileEmissions)]
        decoded = iter(decode_windows(decoder, good))
        for (index, path, _, warnings), emission in zip(files, emissions):
            if isinstance(emission, str):
                results[index] = Transcription(path, error=emission, warnings=warnings)
                continue
            hypotheses = next(decoded)
            text, words = join_windows(emission, hypotheses, self.seconds_per_step, self.sample_rate)
            whole = hypotheses[0] if len(hypotheses) == 1 else None
            results[index] = Transcription(path, text, None, emission.duration, whole, words, warnings)


def _batches_by_duration(order: list[int], lengths: list[int], sample_rate: int):
    """Consecutive runs of ``order`` (indices sorted by length) of at most BATCH_SECONDS padded audio."""
    batch: list[int] = []
    for index in order:
        # Sorted ascending, so the newest item is the longest: padded cost = count * its length.
        if batch and (len(batch) + 1) * lengths[index] / sample_rate > BATCH_SECONDS:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")


class PrecisionError(AsrError):
    """An inference precision this build or device cannot run."""


class DecodingFallbackWarning(UserWarning):
    """The asked-for LM or lexicon could not be used: the model decodes greedily."""


def tuned_decoding(model: str | Path) -> tuple[DecodingSettings, Path | None]:
    """The settings ``asr tune-lm`` stored for a model (CKPT.decoding.yaml beside a checkpoint,
    decoding.yaml in a model folder) and their file; greedy and None when there are none."""
    file = tuned_settings_file(model)
    return (load_decoding_settings(file), file) if file.is_file() else (DecodingSettings(), None)


def load_model(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
               decoding: DecodingSettings | None = None, workers: int = 1) -> SpeechRecognizer:
    """Load a model for transcription: a checkpoint written by ``asr train`` (``.pt``), a
    model folder written by ``asr package``, or ``hf://ORG/NAME[@revision]`` (a folder on the
    Hugging Face Hub; needs the ``hub`` extra).

    ``precision``: fp32; bf16 autocast (CPUs with AVX-512 bf16 / AMX, and GPUs); or int8
    dynamic quantisation of the LSTM/GRU and linear weights (CPU only).
    ``decoding``: how to decode; by default the settings ``asr tune-lm`` stored for this model
    (greedy when there are none), as ``asr transcribe`` does. An unusable LM or lexicon falls
    back to greedy decoding with a warning (``recognizer.decoding_problem`` says why).
    ``workers``: beam search processes.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    precision, precision_problem = usable_precision(precision, device)
    if precision_problem:
        warnings.warn(precision_problem, PrecisionFallbackWarning, stacklevel=2)
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(f"int8 dynamic quantisation runs on the CPU only, not on {device}; use bf16 on a GPU")
    path = resolve_model(path)  # once: hf:// is looked up in the Hub cache (or online)
    saved = read_model(path)
    config = saved.config
    if precision == "int8":
        # Quantised LSTMs keep their weights packed, with no named_parameters() for the fused
        # bidirectional call of rnn_input: packed to borrow; the padded path is exact too.
        config = replace(config, model=replace(config.model, rnn_input="padded"))
    try:
        frontend = FeatureFrontend(config.features)
        frontend.normalizer.mean.copy_(saved.normalizer_mean)
        frontend.normalizer.std.copy_(saved.normalizer_std)
        model = AcousticModel(config.model, config.features.n_mels, len(saved.vocabulary),
                              len(phone_inventory(config.data.language)))
        model.load_state_dict(saved.model_state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: checkpoint does not match this version of asr ({err})") from err
    if precision == "int8":
        with warnings.catch_warnings():  # torch's notices that torch.ao moves to torchao: nothing a user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            model = torch.ao.quantization.quantize_dynamic(
                model.eval(), {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear}, dtype=torch.qint8)
    recognizer = SpeechRecognizer(config, saved.vocabulary, frontend.to(device), model.to(device), device)
    recognizer.precision = precision
    # The longest training utterance (None when the checkpoint predates the record): longer
    # windows are out of the model's experience.
    recognizer.max_train_seconds = saved.train_audio.max_seconds if saved.train_audio else None
    recognizer.decoding_problem = recognizer.use_decoding(decoding if decoding is not None else tuned_decoding(path)[0],
                                                          workers)
    if recognizer.decoding_problem:
        warnings.warn(recognizer.decoding_problem, DecodingFallbackWarning, stacklevel=2)
    return recognizer
