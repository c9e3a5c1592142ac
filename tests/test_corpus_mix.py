"""Training on several corpora at once (data.extra_train), each with its weight."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from asr.config import ConfigError, CorpusWeight, ExperimentConfig, from_dict, load_config, to_dict
from asr.data.manifest import read_manifest
from asr.training.loaders import load_utterances, weighted


def test_weights_repeat_and_subsample_deterministically(tone_corpus):
    utterances = read_manifest(tone_corpus["train"])
    assert weighted(utterances, 1.0, 0) == utterances
    assert weighted(utterances, 2.0, 0) == utterances * 2
    half = weighted(utterances, 0.5, 7)
    assert len(half) == round(len(utterances) / 2) and set(half) <= set(utterances)
    assert half == weighted(utterances, 0.5, 7)  # the same share on every run and resume
    assert len(weighted(utterances, 1.5, 7)) == len(utterances) + len(half)


def test_extra_corpora_join_the_training_set_and_are_reported(tone_corpus, tmp_path):
    config = tiny_config(tmp_path, tone_corpus, data={"extra_train": [
        {"manifest": str(tone_corpus["valid"]), "weight": 2.0}, {"manifest": str(tone_corpus["train"]), "weight": 0.5}]})
    said = []
    train, valid, _ = load_utterances(config, say=said.append)
    main, extra = read_manifest(tone_corpus["train"]), read_manifest(tone_corpus["valid"])
    assert len(train) == len(main) + 2 * len(extra) + round(len(main) / 2)
    assert any(f"{tone_corpus['valid']} (weight 2)" in line and f"{2 * len(extra)} utterances" in line
               for line in said)
    assert len(valid) == len(extra)
    assert any(line.startswith(f"warning: {len(extra)} validation utterance(s) are also training data") for line in said)


def test_the_mix_is_configured_in_yaml_overrides_and_checkpoints(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  extra_train:\n    - {manifest: a.jsonl, weight: 0.5}\n    - {manifest: b.jsonl}\n")
    config = load_config(path)
    assert config.data.extra_train == (CorpusWeight("a.jsonl", 0.5), CorpusWeight("b.jsonl", 1.0))
    assert from_dict(ExperimentConfig, to_dict(config)) == config  # as a checkpoint stores and reads it
    assert load_config(None, ["data.extra_train=[{manifest: c.jsonl, weight: 3}]"]).data.extra_train == \
        (CorpusWeight("c.jsonl", 3.0),)
    with pytest.raises(ConfigError, match="weight"):
        load_config(None, ["data.extra_train=[{manifest: c.jsonl, weight: 0}]"])
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(None, ["data.extra_train=c.jsonl"])


def test_a_mixed_run_trains_and_resumes_exactly(tone_corpus, tmp_path):
    from asr.storage.checkpoint import load_checkpoint
    from asr.training.loop import train

    sections = dict(data={"extra_train": [{"manifest": str(tone_corpus["valid"]), "weight": 1.5}],
                          "max_frames_per_batch": 350}, train={"epochs": 2})
    straight = train(tiny_config(tmp_path / "straight", tone_corpus, **sections))
    interrupted = dict(sections, train={"epochs": 2, "max_steps": straight.step // 2 + 1})
    train(tiny_config(tmp_path / "resumed", tone_corpus, **interrupted))
    assert train(tiny_config(tmp_path / "resumed", tone_corpus, **sections)).step == straight.step
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
