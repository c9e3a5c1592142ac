"""The acoustic model, and only the network: subsampling -> stacked BiLSTM -> linear -> log-probs.

Loss, decoding and feature extraction live elsewhere (train.py, decoding.py, features.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig, prime_factors
from asr.model.features import valid_frames
from asr.data.phones import NUM_PHONE_LABELS

RNN_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# A recurrent layer's state: (h, c) for an LSTM, h for a GRU or plain RNN; each (1, B, H).
RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a (B, T, C) batch within its own length; padding stays put."""
    max_len = x.shape[1]
    steps = torch.arange(max_len, device=x.device)[None, :]  # (1, T)
    lengths = lengths.to(x.device)[:, None]  # (B, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    return x.gather(1, index[:, :, None].expand_as(x))


class StackingSubsampler(nn.Module):
    """Concatenate ``factor`` consecutive frames: (B, T, C) -> (B, ceil(T / factor), C * factor)."""

    def __init__(self, input_dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.output_dim = input_dim * factor

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, time, channels = x.shape
        # Zero the frames past each length: the last output step of a short utterance must
        # stack the same values whether it is padded in a batch or alone.
        x = x * valid_frames(lengths, time, x.device)[:, :, None]
        pad = -time % self.factor
        x = nn.functional.pad(x, (0, 0, 0, pad))  # (B, T + pad, C)
        x = x.reshape(batch, (time + pad) // self.factor, channels * self.factor)  # (B, T', C * factor)
        return x, torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from ``torch.rand``: the CPU ``bernoulli_`` behind
    ``nn.functional.dropout`` draws one number at a time (36 vs 20 ms for a 10 x 533 x 512
    batch on 2 cores, 9 % of the cpu-small training step). Elsewhere it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # (B, T, C) bool; fp32 draws, even under bf16
        return x * keep * (1.0 / (1.0 - self.p))


class ConvSubsampler(nn.Module):
    """Strided 3x3 Conv2d blocks over (time, frequency), each halving frequency.

    The time strides are the prime factors of ``factor`` (3 -> 3, 4 -> 2, 2, 6 -> 2, 3), given
    to the last blocks; earlier blocks keep the frame rate, so ``num_blocks`` can exceed the
    number of factors. With 'same' padding a block of stride s gives ``ceil(T / s)`` frames,
    like frame stacking. Frames beyond each utterance's length are zeroed before every block
    so that padding never leaks into valid frames.
    """

    def __init__(self, input_dim: int, factor: int, channels: int, num_blocks: int) -> None:
        super().__init__()
        strides = prime_factors(factor)
        assert 1 <= len(strides) <= num_blocks, "ModelConfig checks the factor against model.conv_layers"
        self.time_strides = [1] * (num_blocks - len(strides)) + strides
        blocks = []
        in_channels = 1
        freq = input_dim
        for stride in self.time_strides:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, channels, kernel_size=3, stride=(stride, 2), padding=1),
                    nn.BatchNorm2d(channels),
                    nn.GELU(),
                )
            )
            in_channels = channels
            freq = (freq + 1) // 2
        self.blocks = nn.ModuleList(blocks)
        self.output_dim = channels * freq

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.unsqueeze(1)  # (B, 1, T, F)
        for block, stride in zip(self.blocks, self.time_strides):
            mask = valid_frames(lengths, x.shape[2], x.device)  # (B, T)
            x = block(x * mask[:, None, :, None])  # (B, C, ceil(T / stride), ceil(F / 2))
            lengths = torch.div(lengths + stride - 1, stride, rounding_mode="floor")
        batch, channels, time, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, time, channels * freq)  # (B, T', C * F')
        return x, lengths


class RecurrentLayer(nn.Module):
    """What the recurrent layers share: recurrent weight dropout, and running one direction."""

    weight_dropout: float

    def _weights(self, rnn: nn.RNNBase) -> dict[str, torch.Tensor]:
        weights = dict(rnn.named_parameters())
        if self.training and self.weight_dropout > 0:
            # The cell runs with a dropped copy of its recurrent weights; gradients reach the originals.
            weights["weight_hh_l0"] = nn.functional.dropout(weights["weight_hh_l0"], self.weight_dropout)
        return weights

    def _run(self, rnn: nn.RNNBase, inputs: torch.Tensor | PackedSequence) -> torch.Tensor | PackedSequence:
        if self.training and self.weight_dropout > 0:
            return torch.func.functional_call(rnn, self._weights(rnn), (inputs,))[0]
        return rnn(inputs)[0]


class BidirectionalRNN(RecurrentLayer):
    """One bidirectional recurrent layer, exact for padded batches.

    Each direction is its own unidirectional RNN. Over padded input the backward one reads
    every sequence reversed within its own length, so neither direction ever sees padding
    before valid frames: exact without PackedSequence. That is the default on every device:
    a training step ran ~4x faster than over packed input on a 2-core CPU (oneDNN) and
    1.1-1.5x faster on an H100 (cuDNN; scripts/bench_gpu.py). Over packed input (rnn_input:
    packed) both directions' weights go to one bidirectional call, 1.1-1.3x faster on the
    H100 than a packed call per direction.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, weight_dropout: float = 0.0) -> None:
        super().__init__()
        rnn = RNN_CELLS[cell]
        self.forward_rnn = rnn(input_size, hidden_size, batch_first=True)
        self.backward_rnn = rnn(input_size, hidden_size, batch_first=True)
        self.weight_dropout = weight_dropout
        # Weightless template of the fused call (meta device, not a submodule: nothing in the
        # state dict); functional_call lends it the two directions' parameters.
        self.__dict__["_bidirectional"] = rnn(
            input_size, hidden_size, batch_first=True, bidirectional=True, device="meta"
        )

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        forward = self._run(self.forward_rnn, x)  # (B, T, H)
        backward = self._run(self.backward_rnn, reverse_within_lengths(x, lengths))  # (B, T, H), reversed
        return torch.cat([forward, reverse_within_lengths(backward, lengths)], dim=-1)  # (B, T, 2H)

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        def pack(inputs: torch.Tensor) -> PackedSequence:
            return pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)

        def unpack(outputs: PackedSequence) -> torch.Tensor:
            return pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])[0]

        weights = self._weights(self.forward_rnn)
        weights.update({f"{name}_reverse": w for name, w in self._weights(self.backward_rnn).items()})
        return unpack(torch.func.functional_call(self._bidirectional, weights, (pack(x),))[0])  # (B, T, 2H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, packed: bool) -> torch.Tensor:
        """(B, T, input_size) -> (B, T, 2 * hidden_size): forward then backward direction."""
        return self._packed(x, lengths) if packed else self._padded(x, lengths)


class UnidirectionalRNN(RecurrentLayer):
    """The forward direction alone: (B, T, input_size) -> (B, T, hidden_size); causal."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, weight_dropout: float = 0.0) -> None:
        super().__init__()
        self.forward_rnn = RNN_CELLS[cell](input_size, hidden_size, batch_first=True)
        self.weight_dropout = weight_dropout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, packed: bool = False) -> torch.Tensor:
        return self._run(self.forward_rnn, x)  # (B, T, H): padding comes after the valid frames

    def step(self, x: torch.Tensor, state: RecurrentState | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """Continue a stream: new steps (B, n, C) and the state after the previous ones (None at
        the start) -> outputs (B, n, H) and the state after these."""
        return self.forward_rnn(x, state)


def chunk_windows(x: torch.Tensor, lengths: torch.Tensor, chunk: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) -> windows (B, K, chunk + right, C), K = ceil(T / chunk): window k holds chunk k
    and the ``right`` steps after it (zeros past the end), and its valid length (B, K)."""
    batch, time, channels = x.shape
    count = max(1, -(-time // chunk))
    padded = nn.functional.pad(x, (0, 0, 0, count * chunk + right - time))  # (B, K * chunk + right, C)
    windows = padded.unfold(1, chunk + right, chunk).permute(0, 1, 3, 2)  # (B, K, chunk + right, C)
    starts = torch.arange(count, device=lengths.device) * chunk  # (K,)
    window_lengths = (lengths[:, None] - starts[None, :]).clamp(0, chunk + right)  # (B, K)
    return windows, window_lengths


def chunk_main_frames(windows: torch.Tensor, chunk: int, time: int) -> torch.Tensor:
    """(B, K, chunk + right, C) -> (B, T, C): each window's own chunk, in time order."""
    batch, count, _, channels = windows.shape
    return windows[:, :, :chunk].reshape(batch, count * chunk, channels)[:, :time]  # (B, K * chunk, C) cut to T


class LatencyControlledRNN(RecurrentLayer):
    """One latency-controlled bidirectional layer (LC-BLSTM) over chunk windows.

    The forward direction runs over the chunks in order, carrying its state from each to the
    next; the backward direction reads each window (chunk + look-ahead) reversed, from a zero
    state. So a chunk's outputs depend on nothing past its look-ahead: exactly what a stream
    can compute once the look-ahead has arrived. As in Xue & Yan's (2017) cheaper variant,
    the forward direction skips the look-ahead steps (their forward half is zero; the layer
    above reads them through the backward half): the carried state then never forks, so one
    call covers every chunk of an utterance, as for a plain LSTM, where Zhang et al.'s (2016)
    forward pass over each look-ahead needs a small call per chunk (RESULTS.md, "Streaming",
    has both). (B, K, W, C) -> (B, K, W, 2H), W = chunk + right.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, chunk: int, weight_dropout: float = 0.0) -> None:
        super().__init__()
        self.forward_rnn = RNN_CELLS[cell](input_size, hidden_size, batch_first=True)
        self.backward_rnn = RNN_CELLS[cell](input_size, hidden_size, batch_first=True)
        self.weight_dropout = weight_dropout
        self.chunk = chunk

    def _call(self, rnn: nn.RNNBase, inputs: torch.Tensor, state: RecurrentState | None = None):
        if self.training and self.weight_dropout > 0:
            return torch.func.functional_call(rnn, self._weights(rnn), (inputs, state))
        return rnn(inputs, state)  # a plain call: also what an int8-quantised cell (no parameters to lend) takes

    def forward(self, windows: torch.Tensor, window_lengths: torch.Tensor,  # type: ignore[override]
                state: RecurrentState | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """Windows (B, K, W, C) and lengths (B, K) -> outputs (B, K, W, 2H) and the forward
        direction's state after the last chunk (to continue a stream from)."""
        batch, count, width, channels = windows.shape
        chunk, right = self.chunk, width - self.chunk
        main = windows[:, :, :chunk].reshape(batch, count * chunk, channels)  # (B, K * chunk, C): the chunks in order
        forward, state = self._call(self.forward_rnn, main, state)  # (B, K * chunk, H)
        forward = forward.reshape(batch, count, chunk, -1)  # (B, K, chunk, H)
        forward = nn.functional.pad(forward, (0, 0, 0, right))  # (B, K, W, H): zero over the look-ahead
        flat = windows.reshape(batch * count, width, channels)  # (B * K, W, C)
        flat_lengths = window_lengths.reshape(batch * count)
        backward, _ = self._call(self.backward_rnn, reverse_within_lengths(flat, flat_lengths))
        backward = reverse_within_lengths(backward, flat_lengths).reshape(batch, count, width, -1)  # (B, K, W, H)
        return torch.cat([forward, backward], dim=-1), state


class AcousticModel(nn.Module):
    """Log-mel frames (B, T, n_mels) -> CTC log-probabilities (B, T', vocab_size) and lengths."""

    def __init__(self, config: ModelConfig, input_dim: int, vocab_size: int,
                 phone_labels: int = NUM_PHONE_LABELS) -> None:
        super().__init__()
        self.config = config
        if config.subsampling == "stack":
            self.subsampler: nn.Module = StackingSubsampler(input_dim, config.subsampling_factor)
        else:
            self.subsampler = ConvSubsampler(
                input_dim, config.subsampling_factor, config.conv_channels, config.conv_layers
            )
        width = config.layer_output_size
        layer_inputs = [self.subsampler.output_dim] + [width] * (config.num_layers - 1)

        def layer(size: int) -> RecurrentLayer:
            if config.direction == "latency_controlled":
                return LatencyControlledRNN(config.cell, size, config.hidden_size, config.chunk_steps, config.weight_dropout)
            if config.direction == "unidirectional":
                return UnidirectionalRNN(config.cell, size, config.hidden_size, config.weight_dropout)
            return BidirectionalRNN(config.cell, size, config.hidden_size, config.weight_dropout)

        self.layers = nn.ModuleList(layer(size) for size in layer_inputs)
        self.norms = nn.ModuleList(nn.LayerNorm(width) if config.layer_norm else nn.Identity() for _ in layer_inputs)
        self.dropout = Dropout(config.dropout)
        self.output = nn.Linear(width, vocab_size)
        # Head of the auxiliary phone CTC loss, on a lower layer's output (phone decoding reads it
        # too): ``phone_labels`` outputs, the blank and the phones of the language (asr.data.phones.phone_inventory).
        self.phone_output = nn.Linear(width, phone_labels) if config.phone_ctc_weight > 0 else None

    def use_packed(self) -> bool:
        return self.config.rnn_input == "packed"  # "auto" is padded: faster on CPU and on an H100

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, with_phones: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Character log-probs (B, T', V) and lengths; with_phones adds the phone head's
        log-probs (B, T', phone_labels) from layer ``phone_ctc_layer``."""
        if with_phones and self.phone_output is None:
            raise ValueError("with_phones needs model.phone_ctc_weight > 0")
        x, lengths = self.subsampler(features, lengths)  # (B, T', D)
        time = x.shape[1]
        chunked = self.config.direction == "latency_controlled"
        if chunked:  # every layer works on the same windows: chunk + look-ahead
            x, window_lengths = chunk_windows(x, lengths, self.config.chunk_steps, self.config.right_steps)  # (B, K, W, D)
        packed = self.use_packed()
        phone_log_probs = None
        for number, (layer, norm) in enumerate(zip(self.layers, self.norms), start=1):
            if chunked:
                x = self.dropout(norm(layer(x, window_lengths)[0]))  # (B, K, W, 2H)
            else:
                x = self.dropout(norm(layer(x, lengths, packed)))  # (B, T', 2H), or (B, T', H) unidirectional
            if with_phones and number == self.config.phone_ctc_layer:
                own = chunk_main_frames(x, self.config.chunk_steps, time) if chunked else x
                phone_log_probs = self.phone_output(own).float().log_softmax(dim=-1)  # (B, T', P)
        if chunked:
            x = chunk_main_frames(x, self.config.chunk_steps, time)  # (B, T', 2H)
        logits = self.output(x)  # (B, T', V)
        if with_phones:
            return logits.float().log_softmax(dim=-1), lengths, phone_log_probs
        return logits.float().log_softmax(dim=-1), lengths

    def can_stream(self) -> bool:
        """Whether this model can run on a stream (every step reads a bounded look-ahead)."""
        return self.config.direction != "bidirectional"

    def forward_window(self, window: torch.Tensor, length: torch.Tensor,
                       states: list | None = None) -> tuple[torch.Tensor, list]:
        """The next piece of a stream through a streaming model, given each layer's forward
        state after the previous piece (None at the start). Returns the piece's own log-probs
        and the states to pass with the next piece; piece after piece this computes exactly
        what :meth:`forward` computes over the whole utterance.

        latency_controlled: one window, subsampled steps (B, chunk + right, D) with valid
        lengths (B,) -> log-probs of the chunk's steps (B, chunk, V).
        unidirectional: any number of new steps (B, n, D) -> (B, n, V); ``length`` is unused.
        """
        if not self.can_stream():
            raise ValueError("a bidirectional model reads the whole utterance: it cannot stream")
        states = states or [None] * len(self.layers)
        chunked = self.config.direction == "latency_controlled"
        x = window[:, None] if chunked else window  # (B, 1, W, D): one window; or (B, n, D)
        next_states = []
        for layer, norm, state in zip(self.layers, self.norms, states):
            output, state = layer(x, length[:, None], state) if chunked else layer.step(x, state)
            x = self.dropout(norm(output))  # (B, 1, W, 2H) or (B, n, H)
            next_states.append(state)
        own = x[:, 0, : self.config.chunk_steps] if chunked else x  # (B, chunk, C) or (B, n, C)
        return self.output(own).float().log_softmax(dim=-1), next_states
