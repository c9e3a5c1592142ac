"""``asr evaluate --html`` (asr/scoring/html_report.py): one self-contained page with WER/CER
overall, by speaker and by length (a plot), the worst utterances aligned with their errors
marked, the most frequent confusions; every text escaped, nothing loaded from elsewhere."""

import base64
import re
import sys
from html.parser import HTMLParser

import pytest

from asr.cli import main
from asr.scoring.evaluate import EvaluationReport
from asr.scoring.html_report import AlignedWord, align_words, by_length, confusions, html_report
from asr.scoring.metrics import score_utterances

ODD_SPEAKER = '<b>&"x'  # must come out as text, never as markup


class Tables(HTMLParser):
    """Every table's rows as lists of cell texts, and every image's src."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def sample_report() -> EvaluationReport:
    """Errors with one best alignment each: a substitution, a deletion, an insertion."""
    pairs = [("one two three four five", "one too three five"),  # two -> too, four deleted
             ("six two seven", "six too seven eight"),  # two -> too, eight inserted
             ("hello world", "hello world"),
             ("two", "")]  # two deleted
    scores = score_utterances(["u1", "u2", "u3", "u4"], [r for r, _ in pairs], [h for _, h in pairs])
    return EvaluationReport(scores, audio_seconds=6.5, speakers=["A", "A", "B", ODD_SPEAKER],
                            durations=[3.0, 2.0, 1.0, 0.5])


def test_words_are_aligned_along_jiwers_alignment():
    assert align_words("one two three four five", "one too three five") == [
        AlignedWord("equal", "one", "one"), AlignedWord("substitute", "two", "too"),
        AlignedWord("equal", "three", "three"), AlignedWord("delete", "four", ""), AlignedWord("equal", "five", "five")]
    assert align_words("", "a b") == [AlignedWord("insert", "", "a"), AlignedWord("insert", "", "b")]
    found = confusions(sample_report())
    assert found.substitutions == [(("two", "too"), 2)]
    assert sorted(found.deletions) == [("four", 1), ("two", 1)] and found.insertions == [("eight", 1)]


def test_page_has_speakers_lengths_aligned_worst_utterances_and_confusions():
    pytest.importorskip("matplotlib")
    page = html_report(sample_report(), title="tiny.pt on <test>.jsonl")
    parsed = Tables(page)
    rows = {row[0]: row for table in parsed.tables for row in table}
    # Per speaker: corpus-level rates over the speaker's words (A: 4 errors in 8 words).
    assert rows["A"][:5] == ["A", "2", "0.1", "8", "50.00 %"] and rows["B"][4] == "0.00 %"
    assert rows[ODD_SPEAKER][4] == "100.00 %"
    assert ODD_SPEAKER not in page and "&lt;b&gt;&amp;&quot;x" in page and "&lt;test&gt;.jsonl" in page
    assert [g.utterances for g in by_length(sample_report())] == [1, 1, 1, 1]  # ranges of equal counts
    assert {"0.5–0.5 s", "3.0–3.0 s"} <= set(rows)

    # The worst first (most word errors, then highest WER), each aligned with its errors marked.
    assert re.findall(r"<h3>(u\d)", page) == ["u2", "u1", "u4", "u3"]
    u1 = page[page.index("<h3>u1"):page.index("<h3>u4")]
    assert ('class="pair substitute" title="substitute"><span class="ref">two</span><span class="hyp">too</span>'
            in u1)
    assert 'class="pair delete" title="delete"><span class="ref">four</span><span class="hyp"><span class="gap">' in u1
    assert 'class="pair insert" title="insert"><span class="ref"><span class="gap">—</span></span><span class="hyp">' \
           'eight</span>' in page

    # The most frequent confusions.
    assert ["two", "too", "2"] in [row for table in parsed.tables for row in table]
    assert ["eight", "1"] in [row for table in parsed.tables for row in table]

    # The plot is inside the page; nothing is loaded from anywhere else.
    assert len(parsed.images) == 1 and parsed.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(parsed.images[0].split(",", 1)[1]).startswith(b"\x89PNG")
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may hold "//"
    assert not re.search(r"https?:|//[a-z]|<script|<link|@import|url\(", outside, re.IGNORECASE)


def test_without_matplotlib_the_page_says_so_and_keeps_the_rest(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    page = html_report(sample_report())
    assert "pip install &#x27;lstm-asr[inspect]&#x27;" in page and "<img" not in page
    assert "u1" in page and "By speaker" in page


def test_evaluate_writes_the_html_report(trained_checkpoint, tone_corpus, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "reports" / "valid.html"
    assert main(["evaluate", str(trained_checkpoint), str(tone_corpus["valid"]), "--html", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WER" in captured.out and f"HTML report written to {out}" in captured.err
    page = out.read_text()
    parsed = Tables(page)
    speakers = next(t for t in parsed.tables if t[0][0] == "speaker")
    assert [row[0] for row in speakers[1:]] == ["2"] and speakers[1][1] == "4"  # tone_corpus: valid is speaker 2
    assert str(tone_corpus["valid"]) in page and parsed.images[0].startswith("data:image/png;base64,")
    assert page.count('class="utterance"') == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["valid.html"]  # written atomically: no temporary


def test_html_report_into_a_folder_fails_before_loading_the_model(tone_corpus, tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "absent.pt"), str(tone_corpus["valid"]), "--html", str(tmp_path)])
    assert code == 2 and f"--html {tmp_path} is a folder" in capsys.readouterr().err
