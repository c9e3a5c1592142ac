"""Typed, frozen configuration for every pipeline stage, loaded from YAML.

A training run is described by one :class:`ExperimentConfig`. It is read from a YAML file,
optionally patched with ``key=value`` overrides on the command line (``model.hidden_size=256``),
and saved as a plain dict inside every checkpoint so that a model always carries the exact
settings it was trained with.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from asr.errors import AsrError

# Defaults only: the config's FeatureConfig is the one source of truth for a run's sample
# rate and frame rate (training, inference and export all read it).
SAMPLE_RATE = 16_000  # Hz; audio is resampled to features.sample_rate on load
HOP_MS = 10  # feature frame shift
WINDOW_MS = 25  # analysis window
HOP_LENGTH = SAMPLE_RATE * HOP_MS // 1000  # 160 samples
WIN_LENGTH = SAMPLE_RATE * WINDOW_MS // 1000  # 400 samples


class ConfigError(AsrError, ValueError):
    """A configuration file or override is invalid."""


def _satisfies(value: float, rule: str) -> bool:
    if not math.isfinite(value):
        return False
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(bound) for bound in rule[1:-1].split(","))  # "[0, 1)": brackets say closed or open
    above = low <= value if rule[0] == "[" else low < value
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def check_ranges(section: str, config: Any, **rules: str) -> None:
    """Raise ConfigError naming ``section.key`` when a numeric field is outside its range.

    A rule is ">= 1", "> 0" or an interval such as "[0, 1)"; NaN and infinity never pass;
    None (an unset optional value) always does; each element of a tuple is checked.
    """
    for name, rule in rules.items():
        value = getattr(config, name)
        for element in value if isinstance(value, tuple) else (value,):
            if element is not None and not _satisfies(element, rule):
                where = f"in {rule}" if rule[0] in "[(" else rule
                raise ConfigError(f"{section}.{name} must be {where}, got {value!r}")


_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*")


def check_language(tag: str, where: str) -> str:
    """``tag`` if it is a language code or tag (es, cy, zh-CN, pt_BR), else a ConfigError naming ``where``."""
    if not _LANGUAGE_TAG.fullmatch(tag):
        raise ConfigError(f"{where} must be an ISO 639 language code or tag such as en, es, cy or zh-CN, got {tag!r}")
    return tag


def primary_language(tag: str) -> str:
    """The primary subtag of a language tag, in lower case: "zh-CN" -> "zh", "sv_SE" -> "sv"."""
    return tag.strip().lower().replace("_", "-").split("-")[0]


def prime_factors(n: int) -> list[int]:
    """Prime factors in ascending order: 12 -> [2, 2, 3]."""
    factors, divisor = [], 2
    while n > 1:
        while n % divisor == 0:
            factors.append(divisor)
            n //= divisor
        divisor += 1
    return factors


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE  # Hz the waveform is resampled to before analysis
    n_fft: int = WIN_LENGTH  # FFT size; equal to the window, as in Kaldi-style 25 ms frames
    win_length: int = WIN_LENGTH  # 25 ms Hann window
    hop_length: int = HOP_LENGTH  # 10 ms frame shift
    n_mels: int = 80  # mel bands
    f_min: float = 0.0  # lowest mel filter edge, Hz
    f_max: float | None = None  # highest edge, Hz; None = Nyquist
    log_floor: float = 1e-10  # power floor before the log, keeps silence finite
    # global: one mean/std from the training data. utterance: first subtract each utterance's
    # own per-band mean (cepstral mean normalisation), which removes the channel and much of
    # the speaker's spectral tilt; the global std then scales what is left. causal: subtract the
    # mean of the frames so far (frame t: frames 0..t), which a stream can compute as it goes;
    # "utterance" needs the whole utterance first, so streaming models use global or causal.
    normalization: Literal["global", "utterance", "causal"] = "global"

    def __post_init__(self) -> None:
        check_ranges("features", self, sample_rate=">= 1", n_fft=">= 1", hop_length=">= 1", n_mels=">= 1",
                     log_floor="> 0")
        check_ranges("features", self, win_length=f"[1, {self.n_fft}]")  # torch.stft: the window fits the FFT
        if self.n_fft % 2:  # centred frames pad n_fft / 2 on each side: num_frames counts on it
            raise ConfigError(f"features.n_fft must be even, got {self.n_fft}")
        nyquist = self.sample_rate / 2
        check_ranges("features", self, f_min=f"[0, {nyquist:g})", f_max=f"({self.f_min:g}, {nyquist:g}]")

    def num_frames(self, num_samples: Any) -> Any:
        """Feature frames of ``num_samples`` samples (an int or a tensor of lengths): the one
        frame-count formula. A centred STFT pads n_fft // 2 on both sides, so every hop starts a frame."""
        return num_samples // self.hop_length + 1

    def frames_for_duration(self, seconds: float) -> int:
        """Feature frames of ``seconds`` of audio at this sample rate (manifest durations)."""
        return self.num_frames(round(seconds * self.sample_rate))


@dataclass(frozen=True)
class SpecAugmentConfig:
    enabled: bool = True  # masks and warps are applied in training only, never in validation or inference
    freq_masks: int = 2  # number of frequency masks per utterance
    freq_width: int = 15  # maximum mel bands per frequency mask
    time_masks: int = 2  # number of time masks per utterance
    time_width: int = 40  # maximum frames per time mask ...
    time_width_ratio: float = 0.05  # ... and at most this fraction of the utterance
    # VTLP (Jaitly & Hinton, 2013): each training utterance's frequency axis is scaled by a factor
    # drawn uniformly from [1 - warp_factor, 1 + warp_factor] before the mel filter bank, as a
    # different vocal-tract length would; a fresh factor every epoch. 0 turns it off.
    warp_factor: float = 0.0
    warp_boundary: float = 0.6  # fraction of Nyquist above which the warp bends back to Nyquist

    def __post_init__(self) -> None:
        check_ranges("specaugment", self, freq_masks=">= 0", freq_width=">= 0", time_masks=">= 0",
                     time_width=">= 0", time_width_ratio="[0, 1]", warp_factor="[0, 1)", warp_boundary="(0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    subsampling: Literal["stack", "conv"] = "stack"  # frame stacking, or strided 2-D convolutions
    subsampling_factor: int = 3  # frames merged per output step (10 ms each)
    conv_channels: int = 32  # channels of the convolutional front end (subsampling=conv only)
    conv_layers: int = 2  # conv blocks; time strides are the factor's primes, in the last blocks
    cell: Literal["lstm", "gru", "rnn"] = "lstm"  # recurrent cell; gru/rnn exist to measure the LSTM
    num_layers: int = 4  # stacked bidirectional layers
    hidden_size: int = 320  # units per direction
    dropout: float = 0.1  # between recurrent layers and before the output layer
    # DropConnect on the recurrent (hidden-to-hidden) weights, one mask per batch (AWD-LSTM,
    # Merity et al., 2018): regularises what the cell carries across time, which activation
    # dropout between layers never touches. Training only; 0 = off.
    weight_dropout: float = 0.0
    # LayerNorm over each bidirectional layer's output (per frame, so padding never leaks in):
    # keeps every layer's input at a steady scale, as DeepSpeech2's sequence-wise BatchNorm did
    # to speed up deep recurrent nets' training. Here it ends CTC's blank plateau within the
    # first epoch instead of the third (recipes/librispeech/RESULTS.md, v6); 3-7 % per step.
    layer_norm: bool = False
    # padded: each direction over padded input, the backward one reversed within each length
    # (exact); packed: one cuDNN/oneDNN call over a PackedSequence. auto = padded, the faster
    # on a 2-core CPU (~4x) and on an H100 (1.1-1.5x; scripts/bench_gpu.py).
    rnn_input: Literal["auto", "packed", "padded"] = "auto"
    # Auxiliary CTC loss over espeak-ng phones (asr/data/phones.py) on layer phone_ctc_layer's output,
    # added to the character loss with this weight in training; 0 = off (no phone head).
    phone_ctc_weight: float = 0.0
    phone_ctc_layer: int = 2  # 1-based recurrent layer that feeds the phone head
    # bidirectional: each layer reads the whole utterance both ways (offline only).
    # latency_controlled: LC-BLSTM (Zhang et al. 2016): the input is cut into chunks of
    # chunk_steps; the forward direction carries its state from chunk to chunk (skipping the
    # look-ahead, as in Xue & Yan 2017) and the backward one reads only the chunk and
    # right_steps of look-ahead, in training as in streaming.
    # unidirectional: forward only (one direction of hidden_size units per layer).
    direction: Literal["bidirectional", "latency_controlled", "unidirectional"] = "bidirectional"
    chunk_steps: int = 20  # latency_controlled: output steps per chunk (each subsampling_factor x 10 ms)
    right_steps: int = 10  # latency_controlled: look-ahead steps the backward direction reads past the chunk

    def __post_init__(self) -> None:
        check_ranges("model", self, subsampling_factor=">= 1", conv_channels=">= 1", conv_layers=">= 1",
                     num_layers=">= 1", hidden_size=">= 1", dropout="[0, 1)", weight_dropout="[0, 1)",
                     phone_ctc_weight=">= 0", phone_ctc_layer=">= 1", chunk_steps=">= 1", right_steps=">= 0")
        if self.direction != "bidirectional" and self.rnn_input == "packed":
            raise ConfigError(f"model.rnn_input=packed is for bidirectional layers; model.direction={self.direction} "
                              "runs over padded input (rnn_input: auto)")
        strides = prime_factors(self.subsampling_factor)
        if self.subsampling == "conv" and not 1 <= len(strides) <= self.conv_layers:
            raise ConfigError(
                f"model.subsampling=conv by model.subsampling_factor={self.subsampling_factor} needs "
                f"{len(strides) or 1} to model.conv_layers={self.conv_layers} strided blocks; "
                "raise model.conv_layers or use a factor >= 2"
            )
        if self.phone_ctc_weight > 0 and not 1 <= self.phone_ctc_layer <= self.num_layers:
            raise ConfigError(
                f"model.phone_ctc_layer must be in 1..{self.num_layers} (model.num_layers), got {self.phone_ctc_layer}"
            )

    @property
    def layer_output_size(self) -> int:
        """Features each recurrent layer outputs: both directions' units, or the forward one's."""
        return self.hidden_size * (1 if self.direction == "unidirectional" else 2)

    def subsampling_reach_frames(self) -> int:
        """Feature frames past a step's first frame that the subsampling front end reads (the
        conv blocks read as far to the left, so this is also their left context)."""
        if self.subsampling == "stack":
            return self.subsampling_factor - 1  # the rest of the step's own stack
        strides = prime_factors(self.subsampling_factor)
        frames, step = 0, 1
        for stride in [1] * (self.conv_layers - len(strides)) + strides:
            frames += step  # one input step of this block to the right, in frames
            step *= stride
        return frames

    def lookahead_frames(self) -> int:
        """Feature frames (10 ms) past a step that its output depends on: the algorithmic latency.

        Counted from a step's first frame. Stacking reads the step's own ``subsampling_factor``
        frames; each conv block's 3x3 kernel reads one of its input steps to the right. A
        latency-controlled model adds the rest of its chunk and the look-ahead (the first step
        of a chunk waits ``chunk_steps - 1 + right_steps`` steps); a bidirectional one depends
        on the whole utterance.
        """
        if self.direction == "bidirectional":
            raise ValueError("a bidirectional model reads the whole utterance: it has no bounded look-ahead")
        frames = self.subsampling_reach_frames()
        if self.direction == "latency_controlled":
            frames += (self.chunk_steps - 1 + self.right_steps) * self.subsampling_factor
        return frames


@dataclass(frozen=True)
class CorpusWeight:
    manifest: str  # JSONL manifest of another training corpus
    # Times each of its utterances is trained on per epoch, as the main manifest's are once:
    # 2 = twice, 0.5 = a fixed half of them (drawn once from train.seed, so resume stays exact).
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_ranges("data.extra_train", self, weight="> 0")


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = ""  # JSONL manifest of training utterances
    extra_train: tuple[CorpusWeight, ...] = ()  # more training corpora mixed in, each with its weight
    valid_manifest: str = ""  # JSONL manifest for the per-epoch validation pass
    # The transcripts' language, an ISO 639 code or tag (en, es, de, cy, ru, zh-CN): it picks the
    # text normalisation (asr/data/text.py) and espeak-ng's voice and phones for the phone CTC loss.
    language: str = "en"
    # english: blank, space, apostrophe and a-z (LibriSpeech's). from_data: the characters of the
    # normalised training transcripts seen at least min_token_count times (the space always).
    # auto: english for English, from_data for every other language.
    vocabulary: Literal["auto", "english", "from_data"] = "auto"
    # from_data: a rarer character cannot be learnt (and is mostly a stray); the training
    # utterances that hold it are dropped and reported, and a validation one stops the run.
    min_token_count: int = 2
    max_frames_per_batch: int = 20_000  # padded feature frames per batch (10 ms each)
    max_duration: float = 30.0  # seconds; longer training utterances are skipped and counted
    # DataLoader worker processes decoding audio. On a GPU: 4 cut the 100h model's wait for data
    # from 67 % of the time to 9 % on an H100 (recipes/librispeech/RESULTS.md).
    num_workers: int = 0
    cache_audio: bool = True  # keep decoded training audio in RAM (small corpora, num_workers=0)
    stats_utterances: int = 2000  # utterances used to estimate the normalisation statistics
    # Share of training utterances trained inside joins of 2 to join_max_utterances of one
    # speaker, with silence before and between them. A model that only ever saw speech start
    # at its input's first frame drops the first word of each utterance in long recordings
    # (scripts/long_audio.py; recipes/espeak/RESULTS.md); joins teach it pauses and context.
    join_fraction: float = 0.0
    join_max_utterances: int = 3  # most utterances in one join (joins stay within max_duration)
    join_max_gap: float = 1.0  # seconds; each silence is drawn uniformly from [0, this]

    def __post_init__(self) -> None:
        check_ranges("data", self, max_frames_per_batch=">= 1", max_duration="> 0", num_workers=">= 0",
                     stats_utterances=">= 1", join_fraction="[0, 1]", join_max_utterances=">= 2",
                     join_max_gap=">= 0", min_token_count=">= 1")
        check_language(self.language, "data.language")
        if self.vocabulary == "english" and primary_language(self.language) != "en":
            raise ConfigError(f"data.vocabulary=english spells English only (a-z and the apostrophe); "
                              f"data.language={self.language} needs data.vocabulary=from_data (or auto)")

    @property
    def vocabulary_from_data(self) -> bool:
        """The vocabulary is built from the training transcripts (from_data, or auto for a language other than English)."""
        return self.vocabulary == "from_data" or (self.vocabulary == "auto" and primary_language(self.language) != "en")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1.5e-3  # peak learning rate of AdamW
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moment coefficients
    warmup_steps: int = 500  # linear warm-up from 0 to lr
    final_lr_ratio: float = 0.05  # cosine decay ends at lr * final_lr_ratio
    # epochs: the cosine decay spans train.epochs. budget: it ends when train.max_minutes runs
    # out instead, at the speed this machine measured over the second epoch of the session
    # (with its validation and checkpoints; a run validating every few epochs underestimates
    # the cost of validation), so a time-capped recipe anneals fully on a slow CPU and a fast one.
    schedule: Literal["epochs", "budget"] = "epochs"
    grad_clip: float = 5.0  # max global gradient norm

    def __post_init__(self) -> None:
        check_ranges("optim", self, lr="> 0", weight_decay=">= 0", betas="[0, 1)", warmup_steps=">= 0",
                     final_lr_ratio="[0, 1]", grad_clip="> 0")


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "exp/run"  # checkpoints, logs and TensorBoard events go here
    epochs: int = 30  # passes over the training data
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time; 0 = no limit
    max_steps: int = 0  # stop after this many optimiser steps; 0 = no limit (for tests)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype for the forward pass
    device: str = "auto"  # auto = cuda if available, else cpu
    seed: int = 1234  # seeds Python, NumPy and torch; the batch order depends only on it
    checkpoint_every_steps: int = 0  # also write last.pt every N steps; 0 = once per epoch
    keep_epoch_checkpoints: int = 0  # keep epoch-N.pt of the last N epochs (for `asr average`)
    log_every_steps: int = 20  # TensorBoard / progress-bar update interval
    valid_every_epochs: int = 1  # validation pass interval
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # Fine-tuning: a trained model (checkpoint or model folder) a new run starts from: its front end
    # and recurrent layers, and the output rows of the characters (and phones) both spell; the rest
    # starts fresh (asr/training/init.py). A run that resumes continues from last.pt instead.
    init_from: str = ""
    # recompute: the normalisation statistics of the new training data; keep: init_from's
    init_normalization: Literal["recompute", "keep"] = "recompute"
    freeze_layers: int = 0  # the front end and this many lowest recurrent layers take no updates ...
    freeze_steps: int = 0  # ... for the first this many optimiser steps, while the new output rows learn to read them

    def __post_init__(self) -> None:
        check_ranges("train", self, epochs=">= 1", max_minutes=">= 0", max_steps=">= 0",
                     seed="[0, 4294967295]",  # NumPy's seed range
                     checkpoint_every_steps=">= 0", keep_epoch_checkpoints=">= 0", log_every_steps=">= 1",
                     valid_every_epochs=">= 1", threads=">= 0", freeze_layers=">= 0", freeze_steps=">= 0")
        if (self.freeze_layers > 0) != (self.freeze_steps > 0):
            raise ConfigError(f"train.freeze_layers ({self.freeze_layers}) and train.freeze_steps "
                              f"({self.freeze_steps}) go together: how many layers stay fixed, and for how many steps")
        if self.freeze_layers and not self.init_from:
            raise ConfigError("train.freeze_layers keeps trained layers fixed: it needs train.init_from")


@dataclass(frozen=True)
class ExperimentConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.optim.schedule == "budget" and self.train.max_minutes <= 0:
            raise ConfigError("optim.schedule: budget needs a time budget: set train.max_minutes")
        if self.train.freeze_layers > self.model.num_layers:
            raise ConfigError(f"train.freeze_layers must be at most model.num_layers ({self.model.num_layers}), "
                              f"got {self.train.freeze_layers}")


def to_dict(config: Any) -> dict[str, Any]:
    """A nested plain-dict copy of a config dataclass (tuples become lists, YAML-friendly)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any number of X
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is float:
        # PyYAML reads "1e-3" (no dot) as a string, so numeric strings are accepted here.
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Patch a nested dict with ``section.key=value`` strings; values are parsed as YAML."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults if ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides))
    return from_dict(ExperimentConfig, data, where=str(path or "config"))
