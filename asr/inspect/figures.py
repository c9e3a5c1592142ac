"""PNG figures of a :class:`asr.inspect.gates.NetworkTrace` (matplotlib, the ``inspect`` extra).

log_mel.png, posteriorgram.png (greedy path and word boundaries marked), and per layer and
direction layerN_forward.png / layerN_backward.png: input, forget and output gates and the
cell state of every unit over time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asr.utils.atomic import atomic_path
from asr.errors import AsrError
from asr.inspect.gates import NetworkTrace


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise AsrError("asr inspect draws its figures with matplotlib: pip install 'lstm-asr[inspect]'") from err
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _label(token: str) -> str:
    return "space" if token == " " else token


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _mark_words(axes, trace: NetworkTrace) -> None:
    """Word boundaries as vertical lines, each word written above its span."""
    for word in trace.words:
        start, end = word.start * trace.step_seconds, word.end * trace.step_seconds
        for edge in (start, end):
            axes.axvline(edge, color="white", linewidth=0.8, linestyle="--")
        axes.text((start + end) / 2, 1.01, word.word, transform=axes.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=9)


def plot_log_mel(trace: NetworkTrace, path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 3.5), constrained_layout=True)
    frames, mels = trace.log_mel.shape
    image = axes.imshow(trace.log_mel.T, origin="lower", aspect="auto", cmap="magma",
                        extent=(0, frames * trace.frame_seconds, 0, mels))
    axes.set(title=f"Log-mel features (normalised, the network's input): {Path(trace.path).name}",
             xlabel="time (s)", ylabel="mel band")
    figure.colorbar(image, ax=axes, label="normalised log energy")
    _save(figure, path)
    plt.close(figure)
    return path


def plot_posteriorgram(trace: NetworkTrace, path: Path) -> Path:
    plt = _pyplot()
    steps, labels = trace.log_probs.shape
    figure, axes = plt.subplots(figsize=(10, max(3.5, 0.18 * labels + 1.5)), constrained_layout=True)
    end = steps * trace.step_seconds
    image = axes.imshow(np.exp(trace.log_probs).T, origin="lower", aspect="auto", cmap="viridis",
                        vmin=0, vmax=1, extent=(0, end, -0.5, labels - 0.5), interpolation="nearest")
    times = (np.arange(steps) + 0.5) * trace.step_seconds
    axes.plot(times, trace.greedy_path, linestyle="none", marker=".", markersize=4, color="red",
              label="greedy path (argmax per step)")
    _mark_words(axes, trace)
    axes.set_yticks(range(labels))
    axes.set_yticklabels(["blank" if i == 0 else _label(t) for i, t in enumerate(trace.vocabulary)], fontsize=7)
    axes.set(xlabel="time (s)", ylabel="label", xlim=(0, end))
    axes.set_title(f"CTC posteriors; greedy transcript: {trace.transcript!r}", pad=16)
    axes.legend(loc="upper right", fontsize=8)
    figure.colorbar(image, ax=axes, label="posterior probability")
    _save(figure, path)
    plt.close(figure)
    return path


def plot_layer(trace: NetworkTrace, index: int, path: Path) -> Path:
    """Input, forget and output gates and cell state of every unit of ``trace.layers[index]``."""
    plt = _pyplot()
    entry = trace.layers[index]
    steps = entry.steps
    time, units = steps.cell_state.shape
    end = time * trace.step_seconds
    panels = [("input gate i", steps.input_gate, "viridis", 0.0, 1.0),
              ("forget gate f", steps.forget_gate, "viridis", 0.0, 1.0),
              ("output gate o", steps.output_gate, "viridis", 0.0, 1.0)]
    # The 99th percentile, not the maximum: a few saturated units would wash out all the others.
    bound = float(np.percentile(np.abs(steps.cell_state), 99)) if steps.cell_state.size else 1.0
    panels.append(("cell state c (colours clipped at the 99th percentile of |c|)", steps.cell_state, "RdBu_r",
                   -max(bound, 1e-6), max(bound, 1e-6)))
    figure, rows = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), sharex=True,
                                constrained_layout=True)
    reading = "reads right to left" if entry.direction == "backward" else "reads left to right"
    figure.suptitle(f"Layer {entry.layer}, {entry.direction} LSTM ({reading}): "
                    f"gates and cell state of its {units} units")
    for axes, (name, values, cmap, low, high) in zip(rows, panels):
        image = axes.imshow(values.T, origin="lower", aspect="auto", cmap=cmap, vmin=low, vmax=high,
                            extent=(0, end, -0.5, units - 0.5), interpolation="nearest")
        axes.set(ylabel="unit", title=f"{name} (mean over units {values.mean():.2f})" if values.size else name)
        figure.colorbar(image, ax=axes)
        for word in trace.words:
            for edge in (word.start * trace.step_seconds, word.end * trace.step_seconds):
                axes.axvline(edge, color="black", linewidth=0.6, linestyle=":")
    rows[-1].set_xlabel("time (s); dotted lines: word boundaries of the greedy transcript")
    _save(figure, path)
    plt.close(figure)
    return path


def write_figures(trace: NetworkTrace, folder: str | Path) -> list[Path]:
    """All figures of a trace into ``folder``; the paths written."""
    folder = Path(folder)
    written = [plot_log_mel(trace, folder / "log_mel.png"), plot_posteriorgram(trace, folder / "posteriorgram.png")]
    for index, entry in enumerate(trace.layers):
        written.append(plot_layer(trace, index, folder / f"layer{entry.layer}_{entry.direction}.png"))
    return written
