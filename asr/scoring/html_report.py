"""``asr evaluate --html``: an evaluation as one self-contained HTML page a person can read.

WER/CER overall, by speaker and by utterance length (a plot), the worst utterances with
reference and hypothesis aligned word by word and the errors coloured, and the most frequent
confusions. Alignments are jiwer's; the plot is a PNG inside the page (matplotlib, the
``inspect`` extra: without it the page says so and keeps everything else). The page loads
nothing from anywhere: no script, no font, no stylesheet but its own.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import zip_longest
from pathlib import Path

import jiwer
import numpy as np

from asr.scoring.evaluate import EvaluationReport
from asr.scoring.metrics import ErrorCounts
from asr.utils.atomic import atomic_write

WORST = 20  # utterances shown aligned
CONFUSIONS = 20  # rows per confusion table
LENGTH_BINS = 5  # utterance-length groups, each about as many utterances (quantiles)
NO_SPEAKER = "(not given)"
MATPLOTLIB_MISSING = "the plot of WER by utterance length needs matplotlib: pip install 'lstm-asr[inspect]'"


def figures_problem() -> str | None:
    """Why the report would have no plot (matplotlib missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MATPLOTLIB_MISSING
    return None


@dataclass(frozen=True)
class Group:
    label: str  # the speaker, or the length range
    utterances: int
    seconds: float  # audio
    words: ErrorCounts
    chars: ErrorCounts


def _group(label: str, members: Sequence[int], report: EvaluationReport, durations: Sequence[float]) -> Group:
    return Group(label, len(members), sum(durations[i] for i in members),
                 sum((report.scores[i].words for i in members), ErrorCounts(0, 0, 0, 0)),
                 sum((report.scores[i].chars for i in members), ErrorCounts(0, 0, 0, 0)))


def _speakers(report: EvaluationReport) -> list[str]:
    return report.speakers if len(report.speakers) == len(report.scores) else [""] * len(report.scores)


def _durations(report: EvaluationReport) -> list[float]:
    return report.durations if len(report.durations) == len(report.scores) else [0.0] * len(report.scores)


def by_speaker(report: EvaluationReport) -> list[Group]:
    """Corpus-level WER/CER of each speaker's utterances, the worst speaker first."""
    members: dict[str, list[int]] = {}
    for index, speaker in enumerate(_speakers(report)):
        members.setdefault(speaker, []).append(index)
    durations = _durations(report)
    groups = [_group(speaker or NO_SPEAKER, indices, report, durations) for speaker, indices in members.items()]
    return sorted(groups, key=lambda g: (-g.words.rate, g.label))


def by_length(report: EvaluationReport, bins: int = LENGTH_BINS) -> list[Group]:
    """Corpus-level WER/CER in utterance-length ranges that hold about as many utterances each
    (quantiles of the durations), shortest first; none when the durations are unknown."""
    durations = np.asarray(_durations(report), dtype=float)
    if not len(durations) or not durations.any():
        return []
    edges = np.unique(np.quantile(durations, np.linspace(0, 1, min(bins, len(durations)) + 1)))
    ranks = np.searchsorted(edges[1:-1], durations, side="right")  # (N,) in [0, len(edges) - 2]
    groups = []
    for rank in range(max(len(edges) - 1, 1)):
        members = np.flatnonzero(ranks == rank).tolist()
        if members:
            low, high = durations[members].min(), durations[members].max()
            groups.append(_group(f"{low:.1f}–{high:.1f} s", members, report, durations))
    return groups


@dataclass(frozen=True)
class AlignedWord:
    op: str  # jiwer's chunk type: equal, substitute, delete or insert
    reference: str  # "" for an insertion
    hypothesis: str  # "" for a deletion


def align_words(reference: str, hypothesis: str) -> list[AlignedWord]:
    """Reference and hypothesis paired word by word along jiwer's alignment."""
    if not reference.split():  # jiwer refuses an empty reference: every word is an insertion
        return [AlignedWord("insert", "", word) for word in hypothesis.split()]
    output = jiwer.process_words(reference, hypothesis)
    ref, hyp = output.references[0], output.hypotheses[0]
    aligned = []
    for chunk in output.alignments[0]:
        pairs = zip_longest(ref[chunk.ref_start_idx:chunk.ref_end_idx], hyp[chunk.hyp_start_idx:chunk.hyp_end_idx],
                            fillvalue="")
        aligned += [AlignedWord(chunk.type, r, h) for r, h in pairs]
    return aligned


@dataclass(frozen=True)
class Confusions:
    substitutions: list[tuple[tuple[str, str], int]]  # (reference word, hypothesis word), count; most frequent first
    deletions: list[tuple[str, int]]  # reference words the hypothesis lacks
    insertions: list[tuple[str, int]]  # hypothesis words the reference lacks


def confusions(report: EvaluationReport, count: int = CONFUSIONS) -> Confusions:
    """The most frequent word errors over all scored utterances. Counted per word along the
    alignment rather than with ``jiwer.collect_error_counts``, which counts a run of errors as
    one phrase ("a b c" deleted once), so that common words add up across utterances."""
    substituted: Counter[tuple[str, str]] = Counter()
    deleted: Counter[str] = Counter()
    inserted: Counter[str] = Counter()
    for score in report.scores:
        for word in align_words(score.reference, score.hypothesis):
            if word.op == "substitute":
                substituted[(word.reference, word.hypothesis)] += 1
            elif word.op == "delete":
                deleted[word.reference] += 1
            elif word.op == "insert":
                inserted[word.hypothesis] += 1
    return Confusions(substituted.most_common(count), deleted.most_common(count), inserted.most_common(count))


def length_plot(groups: Sequence[Group], durations: Sequence[float], rates: Sequence[float]) -> str:
    """WER and CER by length range (bars) beside each utterance's WER by its length (dots),
    as a PNG data URL. Needs matplotlib (:func:`figures_problem`)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    bars, dots = figure.subplots(1, 2)
    x = np.arange(len(groups))
    for offset, name, values in ((-0.2, "WER", [g.words.rate for g in groups]),
                                 (0.2, "CER", [g.chars.rate for g in groups])):
        drawn = bars.bar(x + offset, 100 * np.asarray(values), 0.4, label=name)
        if name == "WER":
            bars.bar_label(drawn, labels=[f"n={g.utterances}" for g in groups], fontsize=8)
    bars.set_xticks(x, [g.label for g in groups], fontsize=8)
    bars.set(ylabel="%", title="by utterance length")
    bars.legend()
    dots.scatter(durations, 100 * np.asarray(rates), s=10, alpha=0.5)
    dots.set(xlabel="utterance length (s)", ylabel="WER (%)", title="each utterance")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no matplotlib URL inside
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _percent(counts: ErrorCounts) -> str:
    return f"{100 * counts.rate:.2f} %"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], css: str = "") -> str:
    """A table of plain values, every one escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _group_table(groups: Sequence[Group], first: str) -> str:
    rows = [(g.label, g.utterances, f"{g.seconds / 60:.1f}", g.words.reference_length, _percent(g.words),
             _percent(g.chars), g.words.substitutions, g.words.deletions, g.words.insertions) for g in groups]
    return _table([first, "utterances", "minutes", "words", "WER", "CER", "substitutions", "deletions", "insertions"],
                  rows, "numbers")


def _summary(report: EvaluationReport) -> str:
    if not report.scores:
        return "<p>No utterance could be scored: WER and CER are not known.</p>"
    rows = [(unit, _percent(counts), counts.errors, counts.reference_length, counts.substitutions, counts.deletions,
             counts.insertions) for unit, counts in (("words (WER)", report.words), ("characters (CER)", report.chars))]
    return _table(["", "error rate", "errors", "reference length", "substitutions", "deletions", "insertions"],
                  rows, "numbers")


def _alignment(words: Sequence[AlignedWord]) -> str:
    """The aligned pair of lines: each word over its counterpart, errors coloured by kind."""
    gap = '<span class="gap">—</span>'
    cells = []
    for word in words:
        ref = escape(word.reference) if word.reference else gap
        hyp = escape(word.hypothesis) if word.hypothesis else gap
        cells.append(f'<span class="pair {word.op}" title="{word.op}"><span class="ref">{ref}</span>'
                     f'<span class="hyp">{hyp}</span></span>')
    return f'<div class="alignment"><span class="pair labels"><span>REF</span><span>HYP</span></span>{"".join(cells)}</div>'


def _worst(report: EvaluationReport, count: int) -> str:
    position = {id(score): index for index, score in enumerate(report.scores)}
    speakers, durations = _speakers(report), _durations(report)
    parts = []
    for score in report.worst(count):
        index = position[id(score)]
        about = f"{score.words.errors} word errors, WER {100 * score.words.rate:.0f} %, CER {100 * score.chars.rate:.0f} %"
        if durations[index]:
            about += f", {durations[index]:.1f} s"
        if speakers[index]:
            about += f", speaker {speakers[index]}"
        parts.append(f'<section class="utterance"><h3>{escape(score.id)} <small>{escape(about)}</small></h3>'
                     f"{_alignment(align_words(score.reference, score.hypothesis))}</section>")
    return "".join(parts)


def _confusion_tables(found: Confusions) -> str:
    tables = [("substitutions", ["reference", "hypothesis", "count"], [(r, h, n) for (r, h), n in found.substitutions]),
              ("deletions", ["reference word", "count"], found.deletions),
              ("insertions", ["hypothesis word", "count"], found.insertions)]
    return '<div class="confusions">' + "".join(
        f"<div><h3>{title}</h3>{_table(headers, rows) if rows else '<p>none</p>'}</div>"
        for title, headers, rows in tables) + "</div>"


def _lists(report: EvaluationReport) -> str:
    items = (("failed audio", [f"{t.path}: {t.error}" for t in report.failed]),
             ("skipped manifest lines", report.skipped), ("warnings", report.warnings))
    return "".join(f"<h2>{escape(title)} ({len(lines)})</h2><ul>"
                   + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"
                   for title, lines in items if lines)


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .subtitle { color: #555; margin-top: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
table.numbers td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; } .note { background: #fff4d6; padding: 0.5em 0.8em; }
.utterance h3 { font-size: 1em; margin: 1.2em 0 0.3em; } .utterance small { color: #555; font-weight: normal; }
.alignment { display: flex; flex-wrap: wrap; gap: 0.25em 0.35em; font-family: ui-monospace, monospace; }
.pair { display: inline-flex; flex-direction: column; padding: 0 0.2em; border-radius: 3px; }
.pair.labels { color: #888; } .gap { color: #999; }
.pair.substitute { background: #ffd98a; } .pair.delete { background: #f5a3a3; } .pair.insert { background: #a8c8f8; }
.pair.delete .ref { text-decoration: line-through; }
.legend span { padding: 0 0.4em; border-radius: 3px; margin-right: 0.5em; }
.confusions { display: flex; flex-wrap: wrap; gap: 2em; }
"""

LEGEND = ('<p class="legend">Errors: <span class="pair substitute">substitution</span>'
          '<span class="pair delete">deletion</span><span class="pair insert">insertion</span></p>')


def html_report(report: EvaluationReport, title: str = "", worst: int = WORST, confusion_rows: int = CONFUSIONS) -> str:
    """The whole page. ``title`` says what was evaluated (model, manifest, decoding)."""
    w = report.words
    counts = (f"{len(report.scores)} utterances scored, {len(report.failed)} failed, {len(report.skipped)} skipped; "
              f"{report.audio_seconds / 60:.1f} min of audio")
    parts = [f"<h1>Evaluation report{': WER ' + _percent(w) if report.scores else ''}</h1>",
             f'<p class="subtitle">{escape(title)}</p>' if title else "", f"<p>{escape(counts)}</p>",
             "<h2>Overall</h2>", _summary(report)]
    if report.scores:
        speakers = by_speaker(report)
        note = "" if any(report.speakers) else "<p>The manifest gives no speakers.</p>"
        parts += ["<h2>By speaker</h2>", note, _group_table(speakers, "speaker"), "<h2>By utterance length</h2>"]
        lengths = by_length(report)
        if not lengths:
            parts.append("<p>The utterances' durations are not known.</p>")
        elif figures_problem():
            parts.append(f'<p class="note">{escape(MATPLOTLIB_MISSING)}</p>')
        else:
            plot = length_plot(lengths, _durations(report), [s.words.rate for s in report.scores])
            parts.append(f'<img class="plot" alt="WER and CER by utterance length" src="{plot}">')
        parts.append(_group_table(lengths, "length") if lengths else "")
        shown = min(worst, len(report.scores))
        if shown:
            parts += [f"<h2>The {shown} worst utterances, by word errors</h2>", LEGEND, _worst(report, shown)]
        parts += ["<h2>Most frequent confusions</h2>", _confusion_tables(confusions(report, confusion_rows))]
    parts.append(_lists(report))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title or 'Evaluation report')}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def write_html_report(path: str | Path, report: EvaluationReport, title: str = "", worst: int = WORST) -> None:
    """:func:`html_report` written atomically (a reader never sees half a page)."""
    page = html_report(report, title, worst)
    with atomic_write(path) as out:
        out.write(page)
