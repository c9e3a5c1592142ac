"""Beam search, lexicons, LM files and word spans, on hand-made posteriors and tiny ARPA files."""

import math
import os
import stat
import textwrap

import numpy as np
import pytest
import torch

from asr.decoding.beam import BeamSearchDecoder, BeamSearchOptions
from asr.decoding.parallel import decode_in_parallel
from asr.decoding.greedy import GreedyDecoder
from asr.decoding.hypothesis import hypothesis_from_path
from asr.decoding.settings import DecodingSettings
from asr.lm.lexicon import (
    LanguageModelError,
    arpa_vocabulary,
    char_lm_sentence,
    is_char_lm,
    lexicon_from_words,
    read_lexicon,
)
from asr.lm.build import build_lm
from asr.data.text import CharVocabulary

from conftest import write_arpa

pytest.importorskip("flashlight.lib.text.decoder")

VOCAB = CharVocabulary([" ", "a", "b", "c", "t"])  # 0 blank, 1 space, 2 a, 3 b, 4 c, 5 t
BLANK, SPACE, A, B, C, T = range(6)


def posteriors(frames: list[dict[int, float]]) -> torch.Tensor:
    """(T, V) log-probabilities: each frame gives some labels' probabilities, the rest share what is left."""
    rows = []
    for given in frames:
        rest = (1 - sum(given.values())) / (len(VOCAB) - len(given))
        rows.append([given.get(label, rest) for label in range(len(VOCAB))])
    return torch.tensor(rows).log()


def peaky(labels: list[int], p: float = 0.9) -> torch.Tensor:
    return posteriors([{label: p} for label in labels])


@pytest.fixture
def cat_lm(tmp_path):
    # "cat" is far likelier than "cab", and "a cat" follows "<s>" well.
    return write_arpa(tmp_path / "lm.arpa", {"cat": -0.5, "cab": -3.0, "a": -0.7},
                      {"<s> a": -0.2, "a cat": -0.1, "a cab": -2.5})


def test_lexicon_free_beam_equals_greedy_on_peaky_posteriors():
    frames = peaky([C, C, A, BLANK, T, SPACE, A, BLANK, B, B])
    lengths = torch.tensor([len(frames)])
    greedy = GreedyDecoder(VOCAB)(frames[None], lengths)[0]
    beam = BeamSearchDecoder(VOCAB, BeamSearchOptions(beam_size=8))(frames[None], lengths)[0]
    assert beam.text == greedy.text == "cat ab"
    assert beam.token_ids == greedy.token_ids and beam.frames == greedy.frames


def test_lm_overrides_an_acoustically_likelier_misspelling(cat_lm):
    # Acoustically "a cab" wins narrowly (b 0.5 vs t 0.4); the LM knows "a cat".
    frames = posteriors([{A: 0.9}, {SPACE: 0.9}, {C: 0.9}, {A: 0.9}, {B: 0.5, T: 0.4}])
    lengths = torch.tensor([5])
    assert GreedyDecoder(VOCAB)(frames[None], lengths)[0].text == "a cab"
    with_lm = BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=1.0), lm=cat_lm)
    assert with_lm(frames[None], lengths)[0].text == "a cat"
    no_lm = BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=0.0), lm=cat_lm)
    assert no_lm(frames[None], lengths)[0].text == "a cab"


def test_lexicon_only_decoding_snaps_to_known_words():
    # "cbt" is not a word; the closest lexicon word on these frames is "cat".
    frames = posteriors([{C: 0.9}, {B: 0.5, A: 0.45}, {T: 0.9}])
    lexicon = lexicon_from_words(["cat", "tab"], VOCAB)
    hyp = BeamSearchDecoder(VOCAB, lexicon=lexicon)(frames[None], torch.tensor([3]))[0]
    assert hyp.text == "cat"


def test_nbest_is_sorted_and_distinct(cat_lm):
    frames = posteriors([{A: 0.9}, {SPACE: 0.9}, {C: 0.9}, {A: 0.9}, {B: 0.5, T: 0.4}])
    decoder = BeamSearchDecoder(VOCAB, BeamSearchOptions(nbest=3, lm_weight=1.0), lm=cat_lm)
    (nbest,) = decoder.decode_nbest(frames[None], torch.tensor([5]))
    assert len(nbest) >= 2
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    assert nbest[0].text == "a cat" and "a cab" in [h.text for h in nbest[1:]]


def test_batch_respects_lengths_and_empty_input(cat_lm):
    long = peaky([A, SPACE, C, A, T])
    short = peaky([A, BLANK, BLANK, BLANK, BLANK])
    decoder = BeamSearchDecoder(VOCAB, lm=cat_lm)
    hyps = decoder(torch.stack([long, short]), torch.tensor([5, 1]))
    assert [h.text for h in hyps] == ["a cat", "a"]
    assert decoder(long[None], torch.tensor([0]))[0].text == ""


def test_word_spans_and_confidence_from_a_hand_made_matrix():
    # steps: 0 c(.9) 1 c(.8) 2 a(.6) 3 _ 4 t(.9) 5 space 6 _ 7 a(.7) 8 b(.5) 9 _
    frames = posteriors([{C: 0.9}, {C: 0.8}, {A: 0.6}, {BLANK: 0.9}, {T: 0.9},
                         {SPACE: 0.9}, {BLANK: 0.9}, {A: 0.7}, {B: 0.5}, {BLANK: 0.9}])
    for decoder in (GreedyDecoder(VOCAB), BeamSearchDecoder(VOCAB)):
        hyp = decoder(frames[None], torch.tensor([10]))[0]
        assert hyp.text == "cat ab"
        first, second = hyp.words
        assert (first.word, first.start, first.end) == ("cat", 0, 5)
        assert first.confidence == pytest.approx((0.9 + 0.8 + 0.6 + 0.9) / 4, abs=1e-6)  # blank step 3 not counted
        assert (second.word, second.start, second.end) == ("ab", 7, 9)
        assert second.confidence == pytest.approx((0.7 + 0.5) / 2, abs=1e-6)


def test_lexicon_words_are_separated_by_a_space_step(cat_lm):
    # "a" then "cat" with no space between them: the decoder must spend the blank step on a
    # space (as the acoustic model was trained to emit one), not glue lexicon words together.
    frames = peaky([A, BLANK, C, A, T])
    hyp = BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=1.0, word_score=2.0), lm=cat_lm)(
        frames[None], torch.tensor([5]))[0]
    assert hyp.text == "a cat"
    assert [(w.word, w.start, w.end) for w in hyp.words] == [("a", 0, 1), ("cat", 2, 5)]
    assert hyp.token_ids == [A, SPACE, C, A, T] and hyp.frames == [0, 1, 2, 3, 4]


def test_hypothesis_from_path_merges_repeats():
    matrix = peaky([A, A, BLANK, A, SPACE, SPACE, B]).numpy()
    hyp = hypothesis_from_path([A, A, BLANK, A, SPACE, SPACE, B], matrix, VOCAB, 0.0)
    assert hyp.text == "aa b" and hyp.frames == [0, 3, 4, 6]
    assert [(w.start, w.end) for w in hyp.words] == [(0, 4), (6, 7)]


def test_parallel_decoding_matches_serial(cat_lm):
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(n, len(VOCAB), generator=generator).log_softmax(-1).numpy() for n in (7, 12, 3, 9)]
    decoder = BeamSearchDecoder(VOCAB, BeamSearchOptions(beam_size=10), lm=cat_lm)
    serial = decode_in_parallel(decoder, matrices, workers=1)
    parallel = decode_in_parallel(decoder, matrices, workers=2)
    assert [[h.text for h in n] for n in parallel] == [[h.text for h in n] for n in serial]
    assert [n[0].score for n in parallel] == pytest.approx([n[0].score for n in serial])


def test_other_options_share_the_loaded_lm(cat_lm, char_lm, monkeypatch):
    """tune-lm tries many options: each copy must reuse the LM read once, not read it again
    (copy.copy goes through __getstate__, which leaves the flashlight objects out)."""
    import asr.decoding.beam as beam

    reads = []
    real = beam.KenLM
    monkeypatch.setattr(beam, "KenLM", lambda *args: reads.append(args[0]) or real(*args))
    matrix = peaky([C, A, T]).numpy()
    for lm in (cat_lm, char_lm):
        decoder = BeamSearchDecoder(VOCAB, BeamSearchOptions(beam_size=10), lm=lm)
        for weight in (0.5, 1.0, 2.0):
            other = decoder.with_options(BeamSearchOptions(beam_size=10, lm_weight=weight))
            assert other._shared is decoder._shared
            other.decode_matrix(matrix)
    assert reads == [cat_lm, char_lm]


def test_missing_and_unreadable_lm_files_name_the_file(tmp_path):
    with pytest.raises(LanguageModelError, match="missing.arpa: language model file not found"):
        BeamSearchDecoder(VOCAB, lm=tmp_path / "missing.arpa")
    junk = tmp_path / "junk.arpa"
    junk.write_text("this is not a language model\n")
    with pytest.raises(LanguageModelError, match="junk.arpa"):
        BeamSearchDecoder(VOCAB, lm=junk)
    truncated = tmp_path / "truncated.arpa"
    truncated.write_text("\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1\tcat\t0\n")
    with pytest.raises(LanguageModelError, match="truncated.arpa"):
        BeamSearchDecoder(VOCAB, lm=truncated)


def test_lexicon_formats(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text(textwrap.dedent("""\
        CAT c a t
        cab
        TAB T AE1 B
        cat k a t
        café
        """))
    lexicon = read_lexicon(path, VOCAB)
    enc = VOCAB.encode
    assert lexicon.spellings["cat"] == (tuple(enc("cat")),)  # "k" is not a label: spelled from the word
    assert lexicon.spellings["cab"] == (tuple(enc("cab")),)
    assert lexicon.spellings["tab"] == (tuple(enc("tab")),)  # phonetic entry: spelled from the word
    assert "café" in lexicon.skipped


@pytest.fixture
def char_lm(tmp_path):
    # Characters, with "|" for the space: after "a", "t" is far likelier than "b".
    unigrams = {"|": -0.7, "a": -0.7, "b": -1.0, "c": -0.8, "t": -0.8}
    return write_arpa(tmp_path / "chars.arpa", unigrams, {"<s> c": -0.2, "c a": -0.1, "a t": -0.1, "a b": -2.5})


def test_char_lm_repairs_spelling_without_a_lexicon(char_lm):
    # Acoustically "cab" wins narrowly (b 0.5 vs t 0.4); the character LM knows "at" follows "c".
    frames = posteriors([{C: 0.9}, {A: 0.9}, {B: 0.5, T: 0.4}])
    lengths = torch.tensor([3])
    assert BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=1.0), lm=char_lm)(frames[None], lengths)[0].text == "cat"
    unweighted = BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=0.0), lm=char_lm)
    assert unweighted(frames[None], lengths)[0].text == "cab"
    # Spelled outside any lexicon: "tac" is not a word the LM knows, yet it can still be emitted.
    tac = BeamSearchDecoder(VOCAB, BeamSearchOptions(lm_weight=0.5), lm=char_lm)(peaky([T, A, C])[None], lengths)[0]
    assert tac.text == "tac"


def test_char_lm_is_recognised_by_its_vocabulary(char_lm, cat_lm):
    assert is_char_lm(arpa_vocabulary(char_lm)) and not is_char_lm(arpa_vocabulary(cat_lm))
    assert not is_char_lm(["a", "i"])  # a word LM of one-letter words has no "|"
    assert DecodingSettings("beam", char_lm).describe().endswith("lexicon-free")
    assert "lexicon-free" not in DecodingSettings("beam", cat_lm).describe()


def test_arpa_vocabulary_skips_markers(cat_lm):
    assert arpa_vocabulary(cat_lm) == ["cat", "cab", "a"]


@pytest.fixture
def fake_lmplz(tmp_path, monkeypatch, cat_lm):
    """A stand-in lmplz: records its arguments and input (args, corpus in tmp_path), prints cat_lm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lmplz"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/corpus\ncat {cat_lm}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ASR_KENLM_BIN", str(bin_dir))


def test_build_lm_normalises_text_and_calls_lmplz(tmp_path, fake_lmplz):
    text = tmp_path / "text.txt"
    text.write_text("A Cat, a CAB!\n\n  the café cat\n")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"id": "u1", "audio": "x.flac", "duration": 1.0, "text": "Tab cab"}\n')
    report = build_lm([text, manifest], 3, tmp_path / "out" / "lm.arpa", VOCAB)
    assert (tmp_path / "corpus").read_text() == "a cat a cab\ncat\ntab cab\n"  # "the" and "café" unspellable
    assert (tmp_path / "args").read_text().split()[:2] == ["-o", "3"]
    assert (report.sentences, report.words, report.vocabulary) == (3, 7, 4)
    assert arpa_vocabulary(report.path) == ["cat", "cab", "a"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "lm.arpa"]  # no temporary left


def test_build_char_lm_spells_text_and_samples_word_counts(tmp_path, fake_lmplz):
    text = tmp_path / "text.txt"
    text.write_text("A Cat\n")
    counts = {"cab": 3.0, "tab": 1.0, "café": 100.0}  # café: not spellable, never sampled
    report = build_lm([text], 6, tmp_path / "chars.arpa", VOCAB, unigram_counts=counts, unit="char",
                      sampled_words=40)
    lines = (tmp_path / "corpus").read_text().splitlines()
    assert lines[0] == "a | c a t" == char_lm_sentence("a cat")
    sampled = [word for line in lines[1:] for word in line.replace(" ", "").split("|")]
    assert len(lines) == 1 + 4 and len(sampled) == 40 and set(sampled) == {"cab", "tab"}
    assert report.sentences == 5 and report.words == 42
    with pytest.raises(LanguageModelError, match="orders 1 to 6"):
        build_lm([text], 7, tmp_path / "lm7.arpa", VOCAB)


def test_build_lm_without_kenlm_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_KENLM_BIN", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("asr.lm.build.KENLM_CACHE", tmp_path / "nowhere")
    with pytest.raises(LanguageModelError, match="build_kenlm.sh"):
        build_lm([os.devnull], 3, tmp_path / "lm.arpa", VOCAB)


def test_confidence_is_a_probability():
    frames = torch.randn(20, len(VOCAB), generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    hyp = GreedyDecoder(VOCAB)(frames[None], torch.tensor([20]))[0]
    assert all(0.0 <= w.confidence <= 1.0 for w in hyp.words)
    assert math.isfinite(hyp.score) and isinstance(np.float64(hyp.score), np.floating)


def test_tuning_ranks_pairs_by_the_chosen_metric(char_lm):
    from asr.decoding.settings import build_decoder
    from asr.scoring.metrics import ErrorCounts
    from asr.scoring.tune import TuningRow, best_row

    fewer_words = TuningRow(1.0, 0.0, ErrorCounts(3, 0, 0, 7), ErrorCounts(20, 0, 0, 80))  # WER 30 %, CER 20 %
    fewer_chars = TuningRow(0.5, 0.0, ErrorCounts(4, 0, 0, 6), ErrorCounts(10, 0, 0, 90))  # WER 40 %, CER 10 %
    assert best_row([fewer_words, fewer_chars]) is fewer_words
    assert best_row([fewer_words, fewer_chars], "cer") is fewer_chars
    # tune-lm's path: settings -> decoder, then other weights on the same loaded character LM.
    template = build_decoder(VOCAB, DecodingSettings("beam", char_lm))
    frames = posteriors([{C: 0.9}, {A: 0.9}, {B: 0.5, T: 0.4}])
    assert template.with_options(BeamSearchOptions(lm_weight=1.0)).decode_matrix(frames.numpy())[0].text == "cat"
    assert template.with_options(BeamSearchOptions(lm_weight=0.0)).decode_matrix(frames.numpy())[0].text == "cab"


def test_held_out_scoring_counts_each_speaker_at_the_others_best_pair():
    from asr.scoring.metrics import ErrorCounts
    from asr.scoring.tune import Emissions, TuningRow, best_row, held_out_score, score

    def words(errors: int) -> ErrorCounts:  # out of 10 reference words
        return ErrorCounts(errors, 0, 0, 10 - errors)

    chars = ErrorCounts(0, 0, 0, 50)
    row = lambda weight, a, b: TuningRow(weight, 0.0, words(a) + words(b), chars + chars,  # noqa: E731
                                         {"A": (words(a), chars), "B": (words(b), chars)})
    good_for_a, good_for_b = row(1.0, 2, 6), row(2.0, 4, 3)
    assert best_row([good_for_a, good_for_b]) is good_for_b  # 7/20 against 8/20 on the whole set
    held = held_out_score([good_for_a, good_for_b])
    assert held.choices == {"A": good_for_b, "B": good_for_a}  # each at the other's best
    assert held.summary() == "2/0 x 1, 1/0 x 1"
    assert (held.words.errors, held.words.reference_length) == (4 + 6, 20) and held.words.rate > 7 / 20
    # One speaker, or utterances without one, give no held-out figure.
    assert held_out_score([TuningRow(1.0, 0.0, words(1), chars, {"A": (words(1), chars)})]) is None
    assert held_out_score([TuningRow(1.0, 0.0, words(1), chars, {"A": (words(1), chars), "": (words(0), chars)})]) is None

    # score() splits the counts by speaker, and they add up to the whole set's.
    emissions = Emissions(["1", "2", "3"], ["a cat", "the dog", "a cow"], [], "", [], 0.04, 16000, "chars",
                          ["A", "B", "A"])
    scored = score(emissions, ["a cat", "a dog", "cow"])
    assert scored.by_speaker["A"][0] == ErrorCounts(0, 1, 0, 3) and scored.by_speaker["B"][0] == ErrorCounts(1, 0, 0, 1)
    assert scored.words == ErrorCounts(1, 1, 0, 4)
    with pytest.raises(ValueError, match="2 hypotheses"):
        score(emissions, ["a cat", "a dog"])


def test_the_output_stored_is_the_one_better_held_out_by_speaker():
    """chars vs phones: compared held out when both have a held-out score (the best rows favour
    whichever fits the dev set more), else at their best rows; ties keep the first named."""
    from asr.decoding.settings import DecodingSettings
    from asr.scoring.metrics import ErrorCounts
    from asr.scoring.tune import HeldOutScore, TuningResult, TuningRow, best_tuning

    def words(errors: int) -> ErrorCounts:  # out of 10 reference words
        return ErrorCounts(errors, 0, 0, 10 - errors)

    chars = ErrorCounts(1, 0, 0, 49)

    def result(best: int, held: int | None) -> TuningResult:
        row = TuningRow(1.0, 0.0, words(best), chars)
        held_out = HeldOutScore(words(held), chars, {}) if held is not None else None
        return TuningResult(None, [row], row, DecodingSettings("beam"), held_out)

    # phones fit the dev set better at their best pair, but chars are better held out
    assert best_tuning({"chars": result(4, 5), "phones": result(3, 6)}) == "chars"
    assert best_tuning({"chars": result(4, 6), "phones": result(5, 5)}) == "phones"
    # without a held-out score on one side, both are compared at their best rows
    assert best_tuning({"chars": result(4, 5), "phones": result(3, None)}) == "phones"
    assert best_tuning({"chars": result(4, 5), "phones": result(4, 5)}) == "chars"
    # --metric cer ranks by CER first
    worse_cer_row = TuningRow(1.0, 0.0, words(0), ErrorCounts(9, 0, 0, 41))
    worse_cer = TuningResult(None, [worse_cer_row], worse_cer_row, DecodingSettings("beam"))
    assert best_tuning({"chars": worse_cer, "phones": result(4, None)}, "cer") == "phones"
